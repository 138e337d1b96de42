"""The names Temporal knows DealFlow's activities and signals by.

They are written into every deal's history, so they never change: a renamed
activity would make running deals fail to replay. One module, used by the
workflow that schedules them, the worker that registers them and the audit
tools that read them back.
"""

from __future__ import annotations

# Lender calls: regular activities that wait on a remote party.
SIGN_AND_SEND_APPLICATION = "sign_and_send_application"
# Deals started before the links were signed at each send prepared the package
# (links included) in one call and sent that recorded package in another.
PREPARE_APPLICATION = "prepare_application"
SEND_APPLICATION = "send_application"
# Deals started before the package was prepared apart submitted in one call.
SUBMIT_APPLICATION = "submit_application"
REQUEST_DISBURSEMENT = "request_disbursement"
WITHDRAW_APPLICATION = "withdraw_application"
REPAY_LENDER = "repay_lender"

# Bookkeeping in DealFlow's own database.
PROJECT_DEAL = "project_deal"
NOTIFY = "notify"
RECORD_COMPENSATION = "record_compensation"
RECORD_DOCUMENT_METADATA = "record_document_metadata"

# The signal that carries a verified lender webhook to a deal.
LENDER_EVENT = "lender-event"

# Staff actions are Updates named by `dealflow.models.Action` values.

# The metrics the worker exports beside the SDK's (dealflow/worker_metrics.py):
# a dashboard and alerts query them by name.
# Recorded by the workflow (silent during replay).
STAGE_TRANSITIONS_METRIC = "dealflow_stage_transitions"
TIME_IN_STAGE_METRIC = "dealflow_time_in_stage_seconds"
COMPENSATIONS_METRIC = "dealflow_compensations"
# Recorded by the lender-calling activities.
LENDER_CALLS_METRIC = "dealflow_lender_call_seconds"
# Recorded by the worker process.
OPEN_DEALS_METRIC = "dealflow_open_deals"
OVERDUE_DEALS_METRIC = "dealflow_overdue_deals"
WORKER_POLLING_METRIC = "dealflow_worker_polling"
