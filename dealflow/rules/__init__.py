"""The business rules, as pure functions.

Used unchanged by the workflow's update validators, the HTTP API and the CLI,
so a rule lives once and every entry point rejects the same input with the same
message. Deterministic: no clock (callers pass `now`), no I/O. One module per
kind of rule; callers import them from here.
"""

from dealflow.rules.actions import check_action
from dealflow.rules.dates import dealer_date
from dealflow.rules.documents import (
    bank_statement_gaps,
    checklist,
    checklist_complete,
    describe_missing,
    find_duplicate,
    statement_window,
    validate_document,
)
from dealflow.rules.errors import RuleError, RuleKind, conflict, invalid
from dealflow.rules.identity import age_on, id_check_character, validate_id_number, validate_vin
from dealflow.rules.money import (
    financing_limit,
    is_partial_approval,
    lender_amount_problem,
    loan_to_value,
    max_amount_financed,
    max_loan_ratio,
    required_down_payment,
)
from dealflow.rules.new_deal import (
    FieldProblem,
    deal_problems,
    financing_problems,
    id_number_problems,
    lender_problems,
    party_problems,
    product_problems,
    validate_deal,
    vin_problems,
)
from dealflow.rules.pending import owner_role, pending_actions
from dealflow.rules.permissions import (
    ACTION_ROLES,
    ACTION_STAGES,
    NAME_ROLES,
    READ_ROLES,
    REPORT_ROLES,
    START_DEAL_ROLES,
    check_role,
    check_stage,
)
from dealflow.rules.schedule import lender_terms_problem, loan_schedule, repayment_schedule
from dealflow.rules.stipulations import (
    STIPULATION_ACTIONS,
    answered_by,
    candidates,
    collecting,
    current_round,
    find_condition,
    latest_round,
    stipulation_problem,
    stipulations_answered,
    unsent,
)
from dealflow.rules.unwind import (
    UNWIND_STEP_ROLES,
    describe_step,
    funded_disbursement,
    is_staff_step,
    next_unwind_step,
    register_step,
    repayment_step,
    unwind_step_problem,
)
from dealflow.rules.uploads import sniff_content_type
from dealflow.rules.view import DealView, approved_submission
from dealflow.rules.webhooks import (
    check_event_lender,
    disbursement_request_id,
    lender_webhook_key,
)

__all__ = [
    "UNWIND_STEP_ROLES",
    "describe_step",
    "funded_disbursement",
    "is_staff_step",
    "next_unwind_step",
    "register_step",
    "repayment_step",
    "unwind_step_problem",
    "STIPULATION_ACTIONS",
    "answered_by",
    "candidates",
    "collecting",
    "current_round",
    "find_condition",
    "latest_round",
    "unsent",
    "stipulation_problem",
    "stipulations_answered",
    "disbursement_request_id",
    "check_event_lender",
    "lender_webhook_key",
    "is_partial_approval",
    "lender_amount_problem",
    "lender_terms_problem",
    "loan_schedule",
    "age_on",
    "dealer_date",
    "id_check_character",
    "ACTION_ROLES",
    "ACTION_STAGES",
    "NAME_ROLES",
    "READ_ROLES",
    "REPORT_ROLES",
    "START_DEAL_ROLES",
    "DealView",
    "FieldProblem",
    "RuleError",
    "RuleKind",
    "approved_submission",
    "bank_statement_gaps",
    "check_action",
    "check_role",
    "check_stage",
    "checklist",
    "checklist_complete",
    "conflict",
    "deal_problems",
    "describe_missing",
    "financing_limit",
    "financing_problems",
    "find_duplicate",
    "id_number_problems",
    "invalid",
    "lender_problems",
    "loan_to_value",
    "max_amount_financed",
    "max_loan_ratio",
    "owner_role",
    "party_problems",
    "pending_actions",
    "product_problems",
    "repayment_schedule",
    "required_down_payment",
    "sniff_content_type",
    "statement_window",
    "validate_deal",
    "validate_document",
    "validate_id_number",
    "validate_vin",
    "vin_problems",
]
