"""Run the chat: load the chain in the background, build the API + UI, serve with uvicorn."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI

from app.feedback import FeedbackStore
from app.qa.schema import QAService
from app.web.api import ManagedService, create_app
from indexer.errors import MyoQAError
from indexer.settings import Settings

log = logging.getLogger(__name__)


def build_server(
    settings: Settings, service: QAService | None = None
) -> tuple[FastAPI, ManagedService]:
    """The FastAPI host for ``settings``, with the chain loading lazily.

    Args:
        settings: Application settings.
        service: A ready service (tests, the load test); default is
            ``app.qa.chain.load_chain(settings)``, built on first use.

    Returns:
        The app and its managed service (call ``start_loading()`` to warm it up).
    """
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    server = settings.server
    if service is None:

        def loader() -> QAService:
            from app.qa.chain import load_chain

            return load_chain(settings)

        managed = ManagedService(
            loader, max_concurrent=server.max_concurrent, wait_timeout_s=server.wait_timeout_s
        )
    else:
        managed = ManagedService.ready(
            service, max_concurrent=server.max_concurrent, wait_timeout_s=server.wait_timeout_s
        )
    store = FeedbackStore(settings.paths.feedback_db)
    return create_app(managed, settings, store), managed


def uvicorn_config(
    app: FastAPI, settings: Settings | None = None, port: int | None = None
) -> uvicorn.Config:
    """uvicorn settings for ``app``: address, root path and trusted proxy addresses."""
    server = (settings or Settings()).server
    return uvicorn.Config(
        app,
        host=server.host,
        port=server.port if port is None else port,
        root_path=server.root_path,
        proxy_headers=True,
        forwarded_allow_ips=server.forwarded_allow_ips,
        log_config=None,  # keep the CLI's logging set-up
        timeout_graceful_shutdown=5,
    )


def serve(settings: Settings, service: QAService | None = None) -> None:
    """Serve the chat and the API until interrupted (what ``myositis-qa serve`` runs)."""
    app, managed = build_server(settings, service)
    managed.start_loading()
    server = settings.server
    shown_host = "127.0.0.1" if server.host in ("0.0.0.0", "::") else server.host
    log.info(
        "Serving the chat on http://%s:%d%s/ (JSON API at /api/ask, health at /healthz)",
        shown_host,
        server.port,
        server.root_path,
    )
    try:
        uvicorn.Server(uvicorn_config(app, settings)).run()
    except OSError as exc:  # e.g. the port is taken
        raise MyoQAError(f"Cannot serve on {server.host}:{server.port}: {exc}") from exc


@contextmanager
def background_server(
    app: FastAPI, settings: Settings | None = None, port: int = 0, startup_timeout_s: float = 60.0
) -> Iterator[str]:
    """Run ``app`` with uvicorn in a thread (port 0 picks a free one); yields the base URL.

    Used by the browser tests and the load test, on loopback.
    """
    config = uvicorn_config(app, settings, port=port)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="myoqa-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise MyoQAError(f"The test server did not start on {config.host}:{port}.")
        time.sleep(0.05)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{config.host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
