"""The lender's conditions as a lifecycle, per submission (docs/architecture.md
§1, "Stipulations"): each condition of a conditional decision is open, then
received (a document, or a staff note for a condition that is no document),
then cleared or waived by credit; a received document may be rejected, which
reopens the condition until a new document answers it. The deal resubmits
once no condition is open or rejected.

Deals whose conditions came before the lifecycle (patch "stipulation-lifecycle")
have no items: their conditions are the legacy `DealState.stipulations`,
answered by documents alone (rules/documents.py).
"""

from __future__ import annotations

from dealflow.models import (
    Action,
    DealState,
    DocumentRecord,
    StipulationItem,
    StipulationStatus,
)
from dealflow.rules.errors import RuleError, conflict, invalid

# A condition counts as answered for the resubmission once received, cleared
# or waived; open and rejected ones hold the deal in DOCUMENTS.
ANSWERED: frozenset[StipulationStatus] = frozenset({"received", "cleared", "waived"})
OUTSTANDING: frozenset[StipulationStatus] = frozenset({"open", "rejected"})

STIPULATION_ACTIONS = (
    Action.ANSWER_STIPULATION,
    Action.CLEAR_STIPULATION,
    Action.WAIVE_STIPULATION,
    Action.REJECT_STIPULATION_DOCUMENT,
)


def latest_round(items: list[StipulationItem]) -> list[StipulationItem]:
    """The conditions of the latest conditional decision among `items`."""
    if not items:
        return []
    last = max(item.submission_no for item in items)
    return [item for item in items if item.submission_no == last]


def current_round(state: DealState) -> list[StipulationItem]:
    """The conditions of the deal's latest conditional decision (empty for a
    deal without one, or whose conditions came before the lifecycle)."""
    return latest_round(state.stipulation_items)


def unsent(items: list[StipulationItem]) -> list[StipulationItem]:
    """The latest decision's conditions, until a resubmission carries them to
    the lender (what a deal's status shows the deal answering in DOCUMENTS)."""
    return [item for item in latest_round(items) if item.answered_in is None]


def collecting(state: DealState) -> list[StipulationItem]:
    """The conditions the deal is answering now."""
    return unsent(state.stipulation_items) if state.resubmit_pending else []


def find_condition(state: DealState, code: str) -> StipulationItem | None:
    return next((item for item in collecting(state) if item.code == code), None)


def stipulations_answered(state: DealState) -> bool:
    """Whether the deal may resubmit as far as the conditions go: none is open
    or rejected (received, cleared and waived all count)."""
    return not any(item.status in OUTSTANDING for item in collecting(state))


def answered_by(item: StipulationItem, documents: list[DocumentRecord]) -> str:
    """What answers a condition, as a clerk reads it."""
    if item.doc_id is not None:
        doc = next((d for d in documents if d.doc_id == item.doc_id), None)
        return f"document {item.doc_id}" + (f" ({doc.file_name})" if doc else "")
    if item.note:
        return f"note: {item.note}"
    return "nothing yet"


def _how_to_answer(item: StipulationItem) -> str:
    if item.kind == "document":
        return f"upload its document (kind stipulation, stipulation_code {item.code})"
    return "answer it (answer-stipulation)"


def _already(item: StipulationItem) -> RuleError | None:
    if item.status == "cleared":
        return conflict(f"{item.code} is already cleared")
    if item.status == "waived":
        return conflict(f"{item.code} is already waived: {item.reason}")
    return None


def stipulation_problem(action: Action, item: StipulationItem) -> RuleError | None:
    """Why `action` may not be taken on the condition `item` now (None: it may)."""
    done = _already(item)
    if done is not None:
        return done
    match action:
        case Action.ANSWER_STIPULATION:
            if item.kind == "document":
                return conflict(
                    f"{item.code} asks for a document: upload it as a stipulation document "
                    f"with stipulation_code {item.code}"
                )
            if item.status == "received":
                return conflict(f"{item.code} is already answered ({item.note})")
        case Action.CLEAR_STIPULATION:
            if item.status == "open":
                return conflict(
                    f"{item.code} is open: nothing answers it yet; {_how_to_answer(item)} "
                    "first, or waive it"
                )
            if item.status == "rejected":
                return conflict(
                    f"{item.code}'s document was rejected ({item.reason}): a new document "
                    "must answer it before it is cleared"
                )
        case Action.WAIVE_STIPULATION:
            pass
        case Action.REJECT_STIPULATION_DOCUMENT:
            if item.kind != "document":
                return conflict(
                    f"{item.code} is not a document condition: a staff note answers it; "
                    "clear it or waive it"
                )
            if item.status == "open":
                return conflict(f"{item.code} has no document to reject: it is open")
            if item.status == "rejected":
                return conflict(
                    f"{item.code}'s document is already rejected; it waits for a replacement"
                )
        case _:
            raise ValueError(f"{action.value} is not a step on a condition")
    return None


def candidates(action: Action, items: list[StipulationItem]) -> list[StipulationItem]:
    """The conditions among `items` (those being answered) `action` may be taken on."""
    return [item for item in items if stipulation_problem(action, item) is None]


def document_condition_problem(
    state: DealState, code: str | None, duplicate: DocumentRecord | None
) -> RuleError | None:
    """Why a stipulation document for `code` may not be recorded on a deal with
    the lifecycle (None: it may). `duplicate` is the document already on file
    with the same bytes, if any (recording it again changes nothing)."""
    items = current_round(state)
    item = next((i for i in items if i.code == code), None)
    if item is None or item.kind != "document":
        codes = ", ".join(i.code for i in items if i.kind == "document") or "none"
        if item is not None:
            return conflict(
                f"{code} is not a document condition: answer it with answer-stipulation"
            )
        return invalid(f"stipulation_code {code!r} is not an open stipulation (open: {codes})")
    if item.answered_in is not None or not state.resubmit_pending:
        return None  # the round went to the lender: recorded, answers nothing
    if duplicate is not None:
        if duplicate.doc_id in item.rejected_doc_ids:
            return conflict(
                f"this file (sha256 {duplicate.sha256[:12]}…) is the document rejected for "
                f"{item.code} ({item.reason}); upload a replacement"
            )
        return None
    return _already(item)
