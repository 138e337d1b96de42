"""Every side effect of a deal. Each activity is idempotent under retry: its key
comes from the deal id and the step (and submission number), never from the run
id, which changes on continue-as-new.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx
from sqlalchemy.engine import Engine
from temporalio import activity
from temporalio.common import MetricHistogramFloat
from temporalio.exceptions import ApplicationError

from activities.lender_errors import lender_reason
from dealflow import names, rules
from dealflow.config import LenderConfig
from dealflow.models import (
    ApplicationPackage,
    CompensationInput,
    CompensationWritten,
    DisbursementRequestInput,
    DocumentMetadataInput,
    NotificationInput,
    NotificationWritten,
    ProjectionInput,
    RepaymentInput,
    RepaymentResult,
    SendApplicationInput,
    SignAndSendApplicationInput,
    SubmitToLenderInput,
    SubmitToLenderResult,
    UnsignedApplicationPackage,
    WithdrawInput,
)
from dealflow.models.base import is_ref
from dealflow.storage import db
from dealflow.storage.documents import DocumentStore

log = logging.getLogger("dealflow.activities")

# How long a lender may look at a document link in a package signed by the
# old activities (deals started before `fresh-document-links`); new deals' links
# last until the workflow's `links_expire_at`, capped by the store.
PACKAGE_LINK_SECONDS = 7 * 24 * 3600
_RETRYABLE_4XX = {408, 425, 429}


async def _heartbeat_every(seconds: float) -> None:
    while True:
        activity.heartbeat()
        await asyncio.sleep(seconds)


def _application_url(lender: LenderConfig, application_ref: str, action: str) -> str:
    """The lender's URL for `action` on an application: the reference is one
    quoted path segment, so no reference can point DealFlow's call elsewhere."""
    return f"{lender.api_base_url}/applications/{quote(application_ref, safe='')}/{action}"


class DealActivities:
    """Activities receive their clients in the constructor, so tests and the
    worker wire the same code to different databases, stores and lenders."""

    def __init__(
        self,
        engine: Engine,
        lenders: dict[str, LenderConfig],
        http: httpx.AsyncClient,
        store: DocumentStore,
    ) -> None:
        self.engine = engine
        self.lenders = lenders
        self.http = http
        self.store = store

    # ------------------------------------------------------------------ lender API

    def _lender(self, lender_id: str) -> LenderConfig:
        try:
            return self.lenders[lender_id]
        except KeyError:
            raise ApplicationError(
                f"lender {lender_id!r} is not in the lenders file",
                type="LenderRejected",
                non_retryable=True,
            ) from None

    async def _post(self, url: str, key: str, body: dict[str, Any]) -> dict[str, Any]:
        started = time.monotonic()
        outcome = "error"
        try:
            answer = await self._post_once(url, key, body)
            outcome = "ok"
            return answer
        except ApplicationError:
            outcome = "rejected"
            raise
        finally:
            self._lender_call_seconds().record(
                time.monotonic() - started,
                {
                    "lender_id": self._lender_of(url),
                    "call": activity.info().activity_type,
                    "outcome": outcome,
                },
            )

    def _lender_call_seconds(self) -> MetricHistogramFloat:
        return activity.metric_meter().create_histogram_float(
            names.LENDER_CALLS_METRIC, "Lender API calls by lender, call and outcome", "s"
        )

    def _lender_of(self, url: str) -> str:
        return next(
            (lid for lid, cfg in self.lenders.items() if url.startswith(cfg.api_base_url)),
            "unknown",
        )

    async def _post_once(self, url: str, key: str, body: dict[str, Any]) -> dict[str, Any]:
        # Heartbeat while the lender thinks: the workflow's 2 s heartbeat
        # timeout then tells a dead worker from a slow lender.
        beat = asyncio.create_task(_heartbeat_every(0.5))
        try:
            resp = await self.http.post(url, json=body, headers={"Idempotency-Key": key})
        except httpx.HTTPError as e:
            # Connection refused, timeouts: the lender may be restarting; retry.
            raise RuntimeError(f"lender unreachable at {url}: {type(e).__name__}: {e}") from e
        finally:
            beat.cancel()
        if resp.status_code >= 500 or resp.status_code in _RETRYABLE_4XX:
            reason = lender_reason(resp.text, body)
            raise RuntimeError(f"lender answered {resp.status_code} at {url}: {reason}")
        if resp.status_code >= 400:
            raise ApplicationError(
                f"lender answered {resp.status_code}: {lender_reason(resp.text, body)}",
                type="LenderRejected",
                non_retryable=True,
            )
        return resp.json() if resp.content else {}

    def _package(self, inp: SubmitToLenderInput) -> ApplicationPackage:
        cap = self.store.max_link_seconds
        seconds = PACKAGE_LINK_SECONDS if cap is None else min(PACKAGE_LINK_SECONDS, cap)
        return UnsignedApplicationPackage.for_submission(inp).signed(
            lambda key: self.store.presign_get(key, expires_in=seconds, audience=inp.lender_id)
        )

    def _link_seconds(self, expire_at: datetime) -> int:
        """Seconds from now to `expire_at`, within what the store's links can last.

        Past `expire_at` the links go out already expired rather than outliving
        it: a send still retrying then (the lender unreachable past its deadline)
        is for an application the deal has given up on, and goes on only to learn
        the reference to withdraw.
        """
        seconds = int((expire_at - datetime.now(UTC)).total_seconds())
        cap = self.store.max_link_seconds
        return max(0, seconds if cap is None else min(seconds, cap))

    async def _send(
        self, lender_id: str, deal_id: str, submission_no: int, package: ApplicationPackage
    ) -> SubmitToLenderResult:
        lender = self._lender(lender_id)
        body = await self._post(
            f"{lender.api_base_url}/applications",
            f"{deal_id}:{submission_no}",
            package.model_dump(mode="json"),
        )
        ref = body.get("application_ref")
        if not isinstance(ref, str) or not ref:
            raise ApplicationError(
                f"lender reply has no application_ref: {body!r}",
                type="LenderRejected",
                non_retryable=True,
            )
        # Checked here, in the activity, not in the workflow: a deal only ever
        # records a reference that passed, and replay is untouched (no patch).
        if not is_ref(ref):
            raise ApplicationError(
                f"lender reply's application_ref {ref[:80]!r} is not a reference (1 to 64 of "
                "A-Z a-z 0-9 . _ / : -, starting with a letter or digit)",
                type="LenderRejected",
                non_retryable=True,
            )
        log.info(
            "application submitted",
            extra={
                "deal_id": deal_id,
                "lender_id": lender_id,
                "application_ref": ref,
                "submission_no": submission_no,
            },
        )
        return SubmitToLenderResult(application_ref=ref)

    @activity.defn(name=names.SIGN_AND_SEND_APPLICATION)
    async def sign_and_send_application(
        self, inp: SignAndSendApplicationInput
    ) -> SubmitToLenderResult:
        """POST the recorded package with its document links signed now, at every
        attempt: a retry days later carries links that still work. Only the
        links differ between attempts, and the lender's fingerprint of an
        application leaves them out (docs/architecture.md §3.5)."""
        self._lender(inp.lender_id)
        seconds = self._link_seconds(inp.links_expire_at)
        # Off the event loop: S3 signing may first fetch credentials.
        package = await asyncio.to_thread(
            inp.package.signed,
            lambda key: self.store.presign_get(key, expires_in=seconds, audience=inp.lender_id),
        )
        return await self._send(inp.lender_id, inp.deal_id, inp.submission_no, package)

    @activity.defn(name=names.PREPARE_APPLICATION)
    def prepare_application(self, inp: SubmitToLenderInput) -> ApplicationPackage:
        """Deals started before `fresh-document-links`: the package with its links,
        recorded in history by the workflow and sent as is by every retry."""
        self._lender(inp.lender_id)
        return self._package(inp)

    @activity.defn(name=names.SEND_APPLICATION)
    async def send_application(self, inp: SendApplicationInput) -> SubmitToLenderResult:
        """Deals started before `fresh-document-links`: POST a recorded package,
        links and all; retries send the same bytes under the same key."""
        return await self._send(inp.lender_id, inp.deal_id, inp.submission_no, inp.package)

    @activity.defn(name=names.SUBMIT_APPLICATION)
    async def submit_application(self, inp: SubmitToLenderInput) -> SubmitToLenderResult:
        """Deals started before `prepare_application` existed still call this.

        It signs the links afresh on each attempt, 7 days from then.
        """
        self._lender(inp.lender_id)
        return await self._send(inp.lender_id, inp.deal_id, inp.submission_no, self._package(inp))

    @activity.defn(name=names.REQUEST_DISBURSEMENT)
    async def request_disbursement(self, inp: DisbursementRequestInput) -> None:
        """POST the disbursement request; its funding documents (deals with the
        funding package) go with links signed now, at every attempt, to the
        workflow's `links_expire_at` capped by the store. The lender's
        fingerprint of a request leaves the links out (docs/architecture.md §3.5)."""
        lender = self._lender(inp.lender_id)
        seconds = self._link_seconds(inp.links_expire_at) if inp.links_expire_at else 0
        body = await asyncio.to_thread(
            inp.for_lender,
            lambda key: self.store.presign_get(key, expires_in=seconds, audience=inp.lender_id),
        )
        await self._post(
            _application_url(lender, inp.application_ref, "disbursement-requests"),
            inp.request_id or rules.disbursement_request_id(inp.deal_id, inp.attempt),
            # An old-form request (no package) goes out exactly as before it existed.
            body.model_dump(
                mode="json", exclude={"funding_package"} if body.funding_package is None else None
            ),
        )
        log.info(
            "disbursement requested",
            extra={"deal_id": inp.deal_id, "lender_id": inp.lender_id, "attempt": inp.attempt},
        )

    @activity.defn(name=names.WITHDRAW_APPLICATION)
    async def withdraw_application(self, inp: WithdrawInput) -> None:
        lender = self._lender(inp.lender_id)
        await self._post(
            _application_url(lender, inp.application_ref, "withdrawal"),
            f"{inp.deal_id}:withdrawal:{inp.submission_no}",
            {"reason": inp.reason},
        )
        log.info(
            "application withdrawn",
            extra={
                "deal_id": inp.deal_id,
                "lender_id": inp.lender_id,
                "application_ref": inp.application_ref,
            },
        )

    @activity.defn(name=names.REPAY_LENDER)
    async def repay_lender(self, inp: RepaymentInput) -> RepaymentResult:
        """Pay back what the lender disbursed (an unwind after funding). One
        repayment per application, so the key names the application."""
        lender = self._lender(inp.lender_id)
        reply = await self._post(
            _application_url(lender, inp.application_ref, "repayment"),
            f"{inp.deal_id}:repayment:{inp.application_ref}",
            {
                "deal_id": inp.deal_id,
                "amount": str(inp.amount),
                "transaction_ref": inp.transaction_ref,
                "reason": inp.reason,
            },
        )
        log.info(
            "lender repaid",
            extra={"deal_id": inp.deal_id, "lender_id": inp.lender_id},
        )
        return RepaymentResult.model_validate(reply)

    # ------------------------------------------------------------------ bookkeeping

    @activity.defn(name=names.PROJECT_DEAL)
    def project_deal(self, inp: ProjectionInput) -> bool:
        return db.upsert_deal(self.engine, inp)

    @activity.defn(name=names.NOTIFY)
    def notify(self, inp: NotificationInput) -> NotificationWritten:
        new = db.add_notification(self.engine, inp, datetime.now(UTC))
        if new:
            # The outbox row is the notification, read by the people it is
            # for; this line only says one was written. Its message may quote
            # a lender's reasons, so the log carries ids and the kind only.
            log.info(
                "notification %s for %s",
                inp.kind,
                ",".join(inp.roles),
                extra={"deal_id": inp.deal_id, "kind": inp.kind},
            )
        return NotificationWritten(new=new, notification=inp)

    @activity.defn(name=names.RECORD_COMPENSATION)
    def record_compensation(self, inp: CompensationInput) -> CompensationWritten:
        new = db.record_compensation(self.engine, inp, datetime.now(UTC))
        log.info(
            "compensation %s %s",
            inp.kind,
            "recorded" if new else "already recorded",
            extra={"deal_id": inp.deal_id, "kind": inp.kind},
        )
        return CompensationWritten(new=new, compensation=inp)

    @activity.defn(name=names.RECORD_DOCUMENT_METADATA)
    def record_document_metadata(self, inp: DocumentMetadataInput) -> bool:
        return db.add_document(self.engine, inp.deal_id, inp.document)

    def all(self) -> list[Any]:
        return [
            self.sign_and_send_application,
            self.prepare_application,
            self.send_application,
            self.submit_application,
            self.request_disbursement,
            self.withdraw_application,
            self.repay_lender,
            self.project_deal,
            self.notify,
            self.record_compensation,
            self.record_document_metadata,
        ]
