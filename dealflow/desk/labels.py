"""What the desk calls the codes the engine speaks: stages, roles, notice
kinds, document kinds, parties, products, repayment methods, lender decisions,
staff actions, and the states and kinds of the lender's conditions.
The codes stay in URLs, forms and the API; people read these names, translated
through the catalogue like every other desk string."""

from __future__ import annotations

from enum import Enum

from dealflow import i18n
from dealflow.i18n import N_
from dealflow.models import (
    Action,
    Decision,
    DocumentKind,
    Party,
    Product,
    RepaymentMethod,
    Role,
    Stage,
)

STAGE_NAMES: dict[str, str] = {
    Stage.CONTRACT: N_("Sales contract"),
    Stage.DOCUMENTS: N_("Documents"),
    Stage.APPLICATION: N_("Loan application"),
    Stage.UNDERWRITING: N_("Underwriting"),
    Stage.DOWN_PAYMENT: N_("Down payment"),
    Stage.INVOICING: N_("Invoicing"),
    Stage.INSURANCE: N_("Insurance"),
    Stage.LOAN_CONTRACT: N_("Loan contract"),
    Stage.DISBURSEMENT: N_("Disbursement"),
    Stage.REGISTRATION: N_("Registration and lien"),
    Stage.DELIVERY: N_("Delivery"),
    Stage.FOLLOW_UP: N_("Follow-up"),
    Stage.UNWINDING: N_("Unwinding after funding"),
    Stage.COMPLETED: N_("Completed"),
    Stage.CANCELLED: N_("Cancelled"),
    Stage.DECLINED: N_("Declined"),
    Stage.EXPIRED: N_("Expired"),
}

ROLE_NAMES: dict[str, str] = {
    Role.SALES: N_("Sales consultant"),
    Role.CREDIT: N_("Credit officer"),
    Role.FINANCE: N_("Finance officer"),
    Role.INSURANCE: N_("Insurance clerk"),
    Role.REGISTRATION: N_("Registration clerk"),
    Role.DELIVERY: N_("Delivery clerk"),
    Role.AUDITOR: N_("Auditor"),
    Role.ADMIN: N_("Administrator"),
}

NOTICE_NAMES: dict[str, str] = {
    "reminder": N_("Reminder"),
    "escalation": N_("Escalation"),
    "adverse_action": N_("Adverse action notice"),
    "follow_up_due": N_("Follow-up due"),
    "info": N_("Information"),
}

DOCUMENT_NAMES: dict[str, str] = {
    DocumentKind.ID_CARD: N_("Resident ID card"),
    DocumentKind.DRIVERS_LICENCE: N_("Driver's licence"),
    DocumentKind.BANK_STATEMENT: N_("Bank statements"),
    DocumentKind.PROOF_OF_RESIDENCE: N_("Proof of residence"),
    DocumentKind.PROOF_OF_INCOME: N_("Proof of income"),
    DocumentKind.HOUSEHOLD_REGISTER: N_("Household register"),
    DocumentKind.MARRIAGE_CERTIFICATE: N_("Marriage certificate"),
    DocumentKind.STIPULATION: N_("Lender stipulation"),
    DocumentKind.SIGNED_LOAN_CONTRACT: N_("Signed loan contract"),
    DocumentKind.INSURANCE_POLICY_PAGE: N_("Insurance policy page (lender first beneficiary)"),
    DocumentKind.VEHICLE_INVOICE: N_("Vehicle invoice"),
}

PARTY_NAMES: dict[str, str] = {Party.APPLICANT: N_("Applicant"), Party.SPOUSE: N_("Spouse")}

PRODUCT_NAMES: dict[str, str] = {
    Product.NEW_CAR: N_("New car for own use"),
    Product.NEW_ENERGY_CAR: N_("New-energy car"),
    Product.USED_CAR: N_("Used car"),
}

REPAYMENT_METHOD_NAMES: dict[str, str] = {
    RepaymentMethod.EQUAL_INSTALMENTS: N_("Equal instalments"),
    RepaymentMethod.EQUAL_PRINCIPAL: N_("Equal principal"),
}

DECISION_NAMES: dict[str, str] = {
    Decision.APPROVED: N_("Approved"),
    Decision.CONDITIONAL: N_("Conditional"),
    Decision.COUNTER_OFFER: N_("Counter-offer"),
    Decision.DECLINED: N_("Declined"),
}

ACTION_NAMES: dict[str, str] = {
    Action.SIGN_SALES_CONTRACT: N_("Sign the sales contract"),
    Action.RECORD_DOCUMENT: N_("Record a document"),
    Action.SUBMIT_APPLICATION: N_("Submit the loan application"),
    Action.ACCEPT_COUNTER_OFFER: N_("Accept the counter-offer"),
    Action.DECLINE_COUNTER_OFFER: N_("Decline the counter-offer"),
    Action.CONFIRM_DOWN_PAYMENT: N_("Confirm the down payment"),
    Action.RECORD_INVOICE: N_("Record the invoice"),
    Action.RECORD_INSURANCE: N_("Record the insurance policy"),
    Action.RECORD_REPAYMENT_ACCOUNT: N_("Record the repayment account"),
    Action.CONFIRM_LOAN_TERMS: N_("Confirm the loan terms with the customer"),
    Action.SIGN_LOAN_CONTRACT: N_("Sign the loan contract"),
    Action.RECORD_CERTIFICATE: N_("Record the vehicle certificate"),
    Action.RECORD_PURCHASE_TAX: N_("Record the purchase tax"),
    Action.RECORD_PLATE: N_("Record the plate"),
    Action.RECORD_MORTGAGE: N_("Record the mortgage registration"),
    Action.RECORD_STOCK_OUT: N_("Record the stock-out"),
    Action.RECORD_SETTLEMENT: N_("Record the settlement"),
    Action.DELIVER: N_("Deliver the car"),
    Action.RECORD_FOLLOW_UP: N_("Record the follow-up call"),
    Action.CANCEL: N_("Cancel the deal"),
    Action.RETRY_DISBURSEMENT: N_("Request the disbursement again"),
    Action.RECONCILE_DISBURSEMENT: N_("Reconcile the disbursement"),
    Action.UNWIND: N_("Unwind the deal"),
    Action.RECORD_UNWIND_STEP: N_("Record an unwind step"),
    Action.ANSWER_STIPULATION: N_("Answer a lender condition"),
    Action.CLEAR_STIPULATION: N_("Clear a lender condition"),
    Action.WAIVE_STIPULATION: N_("Waive a lender condition"),
    Action.REJECT_STIPULATION_DOCUMENT: N_("Reject a condition's document"),
}

# Where a lender's condition is in its lifecycle, and what answers it.
STIPULATION_STATUS_NAMES: dict[str, str] = {
    "open": N_("Not answered yet"),
    "received": N_("Answered, to clear"),
    "cleared": N_("Cleared"),
    "waived": N_("Waived"),
    "rejected": N_("Document rejected"),
}

STIPULATION_KIND_NAMES: dict[str, str] = {
    "document": N_("Document"),
    "condition": N_("Other condition"),
}

# The steps a deal undoes when it ends without delivery, and where each is.
UNWIND_STEP_NAMES: dict[str, str] = {
    "repay_lender": N_("Repay the lender"),
    "release_mortgage": N_("Release the mortgage registration"),
    "reverse_invoice": N_("Reverse the invoice (red-letter invoice)"),
    "cancel_insurance": N_("Cancel the insurance policy"),
    "refund_down_payment": N_("Refund the down payment"),
    "release_vehicle": N_("Release the vehicle"),
    "withdraw_application": N_("Withdraw the application"),
}

UNWIND_STATE_NAMES: dict[str, str] = {
    "pending": N_("To do"),
    "running": N_("In progress"),
    "done": N_("Done"),
    "void": N_("Not needed"),
    "refused": N_("Refused, escalated"),
}

_GROUPS = (
    STAGE_NAMES,
    ROLE_NAMES,
    NOTICE_NAMES,
    DOCUMENT_NAMES,
    PARTY_NAMES,
    PRODUCT_NAMES,
    REPAYMENT_METHOD_NAMES,
    DECISION_NAMES,
    ACTION_NAMES,
    STIPULATION_STATUS_NAMES,
    STIPULATION_KIND_NAMES,
    UNWIND_STEP_NAMES,
    UNWIND_STATE_NAMES,
)
# One flat table: the codes of different kinds never share a value (a test holds it).
_NAMES: dict[str, str] = {code: name for group in _GROUPS for code, name in group.items()}


def label(code: str | Enum) -> str:
    """The name of a stage, role or notice kind in the page's language; an
    unknown code shows as itself rather than breaking the page."""
    value = code.value if isinstance(code, Enum) else code
    return i18n.gettext(_NAMES.get(value, value))
