"""The business rules, as pure functions.

Used unchanged by the workflow's update validators, the HTTP API and the CLI,
so a rule lives once and every entry point rejects the same input with the same
message. Deterministic: no clock (callers pass `now`), no I/O. One module per
kind of rule; callers import them from here.
"""

from dealflow.rules.actions import check_action
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
from dealflow.rules.identity import validate_id_number, validate_vin
from dealflow.rules.money import (
    Instalment,
    loan_to_value,
    max_amount_financed,
    max_loan_ratio,
    repayment_schedule,
    required_down_payment,
)
from dealflow.rules.new_deal import validate_deal
from dealflow.rules.pending import owner_role, pending_actions
from dealflow.rules.permissions import (
    ACTION_ROLES,
    ACTION_STAGES,
    NAME_ROLES,
    READ_ROLES,
    START_DEAL_ROLES,
    check_role,
    check_stage,
)
from dealflow.rules.uploads import sniff_content_type
from dealflow.rules.view import DealView, approved_submission

__all__ = [
    "ACTION_ROLES",
    "ACTION_STAGES",
    "NAME_ROLES",
    "READ_ROLES",
    "START_DEAL_ROLES",
    "DealView",
    "Instalment",
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
    "describe_missing",
    "find_duplicate",
    "invalid",
    "loan_to_value",
    "max_amount_financed",
    "max_loan_ratio",
    "owner_role",
    "pending_actions",
    "repayment_schedule",
    "required_down_payment",
    "sniff_content_type",
    "statement_window",
    "validate_deal",
    "validate_document",
    "validate_id_number",
    "validate_vin",
]
