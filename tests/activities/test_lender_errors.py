"""A lender's error answer reaches history, notices and logs only as its gist,
without the personal data DealFlow sent it (activities/lender_errors.py)."""

from __future__ import annotations

import json

from activities.lender_errors import MAX_REASON_CHARS, lender_reason

SENT = {
    "deal_id": "20261202-1a2b3c4d",
    "amount_requested": "105000.00",
    "applicant": {
        "full_name": "张伟",
        "id_number": "110105198803120014",
        "phone": "+86 138 0013 8000",
        "employer": "Beijing Rail Works",
    },
    "repayment_account": {"account_number": "6222020200112233445", "bank": "ICBC"},
}


def test_the_detail_of_a_json_answer_is_kept_and_the_personal_values_sent_are_not() -> None:
    body = json.dumps(
        {
            "type": "about:blank",
            "detail": "applicant 张伟 (110105198803120014, phone +86 138 0013 8000, "
            "Beijing Rail Works) failed the bureau check; account 6222020200112233445",
        }
    )
    reason = lender_reason(body, SENT)
    assert reason == (
        "applicant [personal data] ([personal data], phone [personal data], "
        "[personal data]) failed the bureau check; account [personal data]"
    )


def test_numbers_dealflow_did_not_send_are_masked_and_figures_kept() -> None:
    reason = lender_reason("call 13900139000 about 105000.00 for 20261202-1a2b3c4d", SENT)
    assert reason == "call [number] about 105000.00 for 20261202-1a2b3c4d"


def test_a_long_body_is_truncated_and_an_empty_one_named() -> None:
    reason = lender_reason("<html>" + "x" * 5000 + "</html>", SENT)
    assert len(reason) == MAX_REASON_CHARS and reason.endswith("…")
    assert lender_reason("  ", SENT) == "(no reason given)"
