"""`python -m dealflow.api`: the API service on DEALFLOW_API_PORT."""

from __future__ import annotations

import asyncio
import logging
import socket

import uvicorn

from dealflow import client as deals
from dealflow import logs, startup, tracing
from dealflow.api.app import create_app
from dealflow.api.deps import Services
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
    config = uvicorn.Config(
        create_app(services),
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,
        access_log=False,
    )
    log.info("API listening", extra={"port": settings.api_port})
    await FlushingServer(config).serve()


class FlushingServer(uvicorn.Server):
    """uvicorn's server, sending the spans still batched once the last request
    is done: after a SIGTERM, uvicorn raises the signal again and the process
    ends there, before anything after `serve()` could run."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().shutdown(sockets)
        finally:
            await asyncio.to_thread(tracing.shutdown)


if __name__ == "__main__":
    startup.run("api", main)
