"""`python -m dealflow.api`: the API service on DEALFLOW_API_PORT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Iterator

import uvicorn

from dealflow import client as deals
from dealflow import logs, startup, tracing
from dealflow.api.app import create_app
from dealflow.api.deps import Services
from dealflow.api.ops import create_ops_app, ops_on_public_listener
from dealflow.config import load_lenders
from dealflow.storage import db
from dealflow.storage.documents import store_from_settings

log = logging.getLogger("dealflow.api")


async def main() -> None:
    logs.setup()
    settings = startup.settings_from_env()
    lenders = load_lenders(settings.lenders_file)
    startup.start_tracing(settings, tracing.SERVICE_API)
    services = Services(
        settings=settings,
        client=await startup.connect_patiently(settings, deals.connect),
        engine=db.make_engine(settings.database_url),
        lenders=lenders,
        store=store_from_settings(settings),
    )
    app = create_app(services)
    config = uvicorn.Config(
        app, host=settings.api_host, port=settings.api_port, log_config=None, access_log=False
    )
    log.info("API listening", extra={"port": settings.api_port})
    if not settings.api_ops_port:
        if not ops_on_public_listener(settings):
            log.warning(
                "no /metrics and no /docs: in production they are served only on "
                "DEALFLOW_API_OPS_PORT, which is not set"
            )
        await FlushingServer(config, services.status_waits.close).serve()
        return
    ops_config = uvicorn.Config(
        create_ops_app(services, app),
        host=settings.api_ops_host,
        port=settings.api_ops_port,
        log_config=None,
        access_log=False,
    )
    ops = OpsServer(ops_config)
    log.info("API operations listening", extra={"port": settings.api_ops_port})
    ops_serving = asyncio.create_task(ops.serve())
    try:
        await FlushingServer(config, services.status_waits.close).serve()
    finally:
        ops.should_exit = True
        await ops_serving


class OpsServer(uvicorn.Server):
    """The operator's listener beside the public one: the public server owns the
    process's signals (one handler per signal), and stops this one as it ends."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class FlushingServer(uvicorn.Server):
    """uvicorn's server, sending the spans still batched once the last request
    is done: after a SIGTERM, uvicorn raises the signal again and the process
    ends there, before anything after `serve()` could run.

    `stopping` runs as the shutdown begins: uvicorn waits for every open
    request to finish, so the long-poll status waits are ended there first."""

    def __init__(self, config: uvicorn.Config, stopping: Callable[[], None]) -> None:
        super().__init__(config)
        self.stopping = stopping

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.stopping()
        try:
            await super().shutdown(sockets)
        finally:
            await asyncio.to_thread(tracing.shutdown)


if __name__ == "__main__":
    startup.run("api", main)
