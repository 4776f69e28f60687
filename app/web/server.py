"""Run the chat: load the chain in the background, build the API + UI, serve with uvicorn.

While serving, an ``IndexWatcher`` polls the index folder (``server.reload_interval_s``);
when ``myositis-qa index`` has made a new version current, it loads that version beside
the one being served (same embedding model) and swaps the service in one assignment:
requests already running finish on the old index, new ones use the new. A new index
that fails to load (damaged, built with other settings) is refused and logged, and the
old one keeps serving. A server whose index failed to load at start-up keeps watching,
and starts answering once the index is repaired.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI

from app.feedback import FeedbackStore
from app.qa.schema import QAService
from app.web.api import ManagedService, create_app
from indexer.embeddings import EmbeddingModel
from indexer.errors import MyoQAError
from indexer.settings import Settings
from indexer.store import index_signature, recover

log = logging.getLogger(__name__)


class IndexWatcher:
    """Swaps a rebuilt index into a running server (see the module docstring).

    Args:
        settings: Where the index lives and how often to look.
        managed: The service the server answers from.
        reload: Builds a service on the current index, given the one serving now
            (None after a failed start-up); default ``reload_chain(settings, ...)``.
    """

    def __init__(
        self,
        settings: Settings,
        managed: ManagedService,
        reload: Callable[[QAService | None], QAService] | None = None,
    ) -> None:
        self.settings = settings
        self.managed = managed
        self.interval_s = settings.server.reload_interval_s
        self._reload = reload or (lambda current: reload_chain(settings, current))
        self._seen = index_signature(settings.paths.index_dir)  # what the first load reads
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reloads = 0
        self.refused = 0

    def check_once(self) -> bool:
        """Reload if the index changed since the last look; True when a new one is serving."""
        if self.managed.status()["loading"]:
            return False  # the first load is still running; look again later
        signature = index_signature(self.settings.paths.index_dir)
        if signature is None or signature == self._seen:
            return False
        self._seen = signature  # a refused version is not retried until it changes again
        try:
            fresh = self._reload(self.managed.current())
        except MyoQAError as exc:
            self.refused += 1
            log.error(
                "Not switching to the rebuilt index (still serving the previous one): %s", exc
            )
            return False
        except Exception:
            self.refused += 1
            log.exception("Not switching to the rebuilt index (still serving the previous one)")
            return False
        self.managed.replace(fresh)
        self.reloads += 1
        info = _info(fresh)
        log.info(
            "Now serving the index built %s (%s passages)",
            info.get("index_built_at", "?"),
            info.get("n_chunks", "?"),
        )
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check_once()
            except Exception:  # never let the watcher die
                log.exception("Checking the index for a rebuild failed")

    def start(self) -> threading.Thread | None:
        """Poll in a daemon thread (not when ``server.reload_interval_s`` is 0)."""
        if self.interval_s <= 0 or self._thread is not None:
            return None
        self._thread = threading.Thread(target=self._run, name="myoqa-index-watch", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None


def _info(service: QAService) -> dict[str, Any]:
    try:
        return dict(service.info)
    except Exception:
        return {}


def reload_chain(
    settings: Settings, current: QAService | None, model: EmbeddingModel | None = None
) -> QAService:
    """A chain on the current index, reusing the serving chain's model and LLM."""
    from app.qa.chain import QAChain, load_chain

    if isinstance(current, QAChain):
        return load_chain(settings, model=current.model, llm=current.llm)
    return load_chain(settings, model=model)


def build_server(
    settings: Settings, service: QAService | None = None, model: EmbeddingModel | None = None
) -> tuple[FastAPI, ManagedService]:
    """The FastAPI host for ``settings``, with the chain loading lazily.

    Args:
        settings: Application settings.
        service: A ready service (tests, the load test); default is
            ``app.qa.chain.load_chain(settings)``, built on first use.
        model: The embedding model to use instead of loading the one the settings name.

    Returns:
        The app and its managed service (call ``start_loading()`` to warm it up). Unless
        ``service`` was given, ``app.state.index_watcher`` holds an ``IndexWatcher``
        (not started: ``serve`` starts it).
    """
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    server = settings.server
    watcher = None
    if service is None:

        def loader() -> QAService:
            from app.qa.chain import load_chain

            recover(settings.paths.index_dir)  # tidy what an interrupted build left
            return load_chain(settings, model=model)

        managed = ManagedService(
            loader, max_concurrent=server.max_concurrent, wait_timeout_s=server.wait_timeout_s
        )
        watcher = IndexWatcher(
            settings, managed, reload=lambda current: reload_chain(settings, current, model)
        )
    else:
        managed = ManagedService.ready(
            service, max_concurrent=server.max_concurrent, wait_timeout_s=server.wait_timeout_s
        )
    store = FeedbackStore(settings.paths.feedback_db)
    app = create_app(managed, settings, store)
    app.state.index_watcher = watcher
    return app, managed


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
    watcher: IndexWatcher | None = app.state.index_watcher
    if watcher is not None:
        watcher.start()
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
    finally:
        if watcher is not None:
            watcher.stop()


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
