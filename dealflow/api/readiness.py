"""Readiness: whether this API process can serve, asked of what it depends on.

`/healthz` says the process answers (liveness: restart it if not); `/readyz`
says Temporal, the database and the document store answer too (readiness:
send it traffic only then). The answer names which dependency is down, never
why: the endpoint is unauthenticated, the reason goes to the log.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from sqlalchemy import text

from dealflow.api.deps import Services

log = logging.getLogger("dealflow.api.readiness")

# Each check's bound: a load balancer asks every few seconds.
CHECK_TIMEOUT = 2.0


async def _temporal(svc: Services) -> None:
    if not await svc.client.service_client.check_health():
        raise RuntimeError("gRPC health: not serving")


async def _database(svc: Services) -> None:
    def select_one() -> None:
        with svc.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    await asyncio.to_thread(select_one)


async def _document_store(svc: Services) -> None:
    # A HEAD of a key that is never written: an answer, found or not, is
    # the store answering.
    await asyncio.to_thread(svc.store.exists, "readiness/probe")


CHECKS: dict[str, Callable[[Services], Awaitable[None]]] = {
    "temporal": _temporal,
    "database": _database,
    "document_store": _document_store,
}


async def readiness(svc: Services) -> dict[str, str]:
    """Each dependency: "ok" or "unavailable", asked at once, each bounded."""

    async def ask(name: str, check: Callable[[Services], Awaitable[None]]) -> str:
        try:
            await asyncio.wait_for(check(svc), CHECK_TIMEOUT)
        except Exception as e:  # any failure means not ready; the log says which
            log.warning(
                "not ready: %s: %s: %s",
                name,
                type(e).__name__,
                str(e).splitlines()[0][:200] if str(e) else "",
                extra={"dependency": name},
            )
            return "unavailable"
        return "ok"

    answers = await asyncio.gather(*(ask(name, check) for name, check in CHECKS.items()))
    return dict(zip(CHECKS, answers, strict=True))
