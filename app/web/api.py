"""The HTTP host: JSON API, health check, embedding headers, and the mounted chat.

``create_app()`` builds a FastAPI app with

- ``POST /api/ask``: ``{"question": ..., "history": [...]}`` -> the ``ask --json`` object;
- ``POST /api/feedback``: one thumbs up/down for an answer (201; 503 when it cannot be stored);
- ``POST /api/classify``: a case -> its 2017 EULAR/ACR score, band and category, every
  weight cited (``app.qa.criteria``);
- ``GET /healthz``: whether the index and model are loaded, the number of chunks, and
  whether votes are being stored;
- ``GET /gradio.js``: the ``<gradio-app>`` web-component loader, served by this host;
- the Gradio chat at ``/``.

Cross-origin calls are allowed only from ``server.allowed_origins`` (CORS), and only
those origins may frame the chat (``Content-Security-Policy: frame-ancestors``).
The API answers 429 when one client exceeds ``server.rate_limit_per_minute`` (asking
and voting count in separate buckets). Every state-changing request first passes
``app.web.guard.RequestGuard`` (cross-site refusal, body size, safe JSON, the chat's
per-client queue bound); both JSON routes want ``Content-Type: application/json``.
Errors are JSON: ``{"error": "<message for the user>"}`` (plus ``detail`` for
validation errors), and no message shows an absolute server path (the log keeps it).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.feedback import MAX_COMMENT_CHARS, FeedbackStore, FeedbackWriteError
from app.qa.criteria import Case
from app.qa.criteria_index import Calculator
from app.qa.schema import Answer, QAService
from app.qa.schema import Message as ChatMessage
from app.web.guard import GradioAnswerQueue, RequestGuard
from app.web.limits import (
    MAX_HISTORY_CHARS,
    MAX_HISTORY_MESSAGES,
    RequestError,
    check_text,
    parse_json,
)
from indexer.errors import MyoQAError
from indexer.settings import Settings

log = logging.getLogger(__name__)

_M = TypeVar("_M", bound=BaseModel)

__all__ = [
    "MAX_HISTORY_CHARS",
    "MAX_HISTORY_MESSAGES",
    "ManagedService",
    "RateLimiter",
    "ServiceUnavailable",
    "create_app",
    "frame_ancestors",
    "redact_paths",
]

_ABS_PATH_RE = re.compile(r"(?<![\w.:/~-])/[^\s'\"`,;()<>\[\]{}]+")


def redact_paths(text: str) -> str:
    """``text`` with absolute server paths shortened, for bodies any client can read.

    A path under the working directory becomes relative (``index``); any other becomes
    ``…/<name>``. Only paths whose top folder exists here are touched, so a route such
    as ``/api/ask`` in a message stays as it is. The log keeps the full message.
    """
    cwd = Path.cwd()

    def shorten(match: re.Match[str]) -> str:
        raw = match.group(0)
        stripped = raw.rstrip(".:!?")
        trail = raw[len(stripped) :]
        path = Path(stripped)
        if len(path.parts) < 2 or not Path(path.parts[0], path.parts[1]).exists():
            return raw
        try:
            shown = str(path.relative_to(cwd))
        except ValueError:
            shown = f"…/{path.name}"
        return shown + trail

    return _ABS_PATH_RE.sub(shorten, text)


class ServiceUnavailable(MyoQAError):
    """The chain is still loading, failed to load, or every answer slot stayed busy."""


# --- the service as the host runs it -----------------------------------------------------


class ManagedService:
    """A ``QAService`` that loads its chain once (in the background or on first use)
    and lets at most ``max_concurrent`` answers run at the same time.

    Args:
        loader: Builds the real service, e.g. ``lambda: load_chain(settings)``.
        max_concurrent: Answers computed at once (UI and API share the slots).
        wait_timeout_s: How long a request waits for the chain to load or for a slot.
    """

    def __init__(
        self,
        loader: Callable[[], QAService],
        *,
        max_concurrent: int = 2,
        wait_timeout_s: float = 30.0,
    ) -> None:
        self._loader = loader
        self._service: QAService | None = None
        self._error: str | None = None
        self._load_lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._loaded = threading.Event()
        self._loading = False
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self.wait_timeout_s = wait_timeout_s

    @classmethod
    def ready(cls, service: QAService, **kwargs: Any) -> ManagedService:
        """Wrap an already-built service."""
        managed = cls(lambda: service, **kwargs)
        managed.load()
        return managed

    def start_loading(self) -> threading.Thread | None:
        """Load in a background thread, so the server answers /healthz meanwhile.

        Returns:
            The loading thread, or None when loading already started or finished.
        """
        with self._start_lock:
            if self._loading or self._loaded.is_set():
                return None
            self._loading = True
        thread = threading.Thread(target=self.load, name="myoqa-load-chain", daemon=True)
        thread.start()
        return thread

    def load(self) -> None:
        """Build the service once; a failure is kept and reported, not raised."""
        with self._load_lock:
            if self._loaded.is_set():
                return
            self._loading = True
            try:
                self._service = self._loader()
            except MyoQAError as exc:
                self._error = str(exc)
                log.error("The answer service could not load: %s", exc)
            except Exception as exc:
                self._error = f"{type(exc).__name__}: {exc}"
                log.exception("The answer service could not load")
            finally:
                self._loading = False
                self._loaded.set()

    def get(self) -> QAService:
        """The loaded service (loading it now if nobody has started).

        Raises:
            ServiceUnavailable: While loading takes longer than the wait timeout, or
                after loading failed.
        """
        if not self._loaded.is_set() and not self._loading:
            self.load()
        if not self._loaded.wait(self.wait_timeout_s):
            raise ServiceUnavailable("The index is still loading; please try again in a moment.")
        if self._service is None:
            raise ServiceUnavailable(
                f"The answer service is not available: {redact_paths(self._error or '')}"
            )
        return self._service

    def current(self) -> QAService | None:
        """The service answering now (None while loading or after a failed load)."""
        return self._service if self._loaded.is_set() else None

    def replace(self, service: QAService) -> None:
        """Answer from ``service`` from now on (a reloaded index); a failed load is forgotten.

        Requests already running finish on the service they started with.
        """
        with self._load_lock:
            self._service = service
            self._error = None
            self._loaded.set()

    def status(self) -> dict[str, Any]:
        """For /healthz: never blocks."""
        service = self._service if self._loaded.is_set() else None
        info: dict[str, Any] = {}
        if service is not None:
            try:
                info = dict(service.info)
            except Exception:
                log.exception("service.info failed")
        n_chunks = info.get("n_chunks")
        return {
            "index_loaded": isinstance(n_chunks, int) and n_chunks > 0,
            "model_loaded": service is not None,
            "n_chunks": n_chunks if isinstance(n_chunks, int) else 0,
            "index_built_at": info.get("index_built_at"),
            "mode": info.get("mode"),
            "loading": not self._loaded.is_set(),
            "error": redact_paths(self._error) if self._error else None,
        }

    @property
    def info(self) -> dict[str, Any]:
        return self.get().info

    def _acquire(self) -> None:
        if not self._slots.acquire(timeout=self.wait_timeout_s):
            raise ServiceUnavailable("The server is busy; please try again in a moment.")

    def ask(self, question: str, history: Sequence[ChatMessage] | None = None) -> Answer:
        service = self.get()
        self._acquire()
        try:
            return service.ask(question, history)
        finally:
            self._slots.release()

    def stream(
        self, question: str, history: Sequence[ChatMessage] | None = None
    ) -> Generator[str | Answer, None, None]:
        service = self.get()
        self._acquire()
        try:
            yield from service.stream(question, history)
        finally:
            self._slots.release()


# --- rate limit ---------------------------------------------------------------------------


class RateLimiter:
    """A token bucket per client: ``per_minute`` requests, refilled continuously.

    Args:
        per_minute: Requests a client may make per minute (also the burst size).
        clock: Monotonic seconds; tests pass a fake.
        max_clients: Buckets kept; the least recently seen client is forgotten first.
    """

    def __init__(
        self,
        per_minute: int,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = 10_000,
    ) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.clock = clock
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, client: str) -> float | None:
        """Take one token for ``client``: None if allowed, else seconds until the next one."""
        now = self.clock()
        with self._lock:
            tokens, last = self._buckets.pop(client, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                tokens -= 1.0
                wait = None
            else:
                wait = (1.0 - tokens) / self.rate
            self._buckets[client] = (tokens, now)
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
        return wait


# --- headers ------------------------------------------------------------------------------


def frame_ancestors(settings: Settings) -> str:
    """The CSP value: the chat's own origin plus the configured course sites."""
    origins = settings.server.frame_ancestors
    if origins is None:
        origins = settings.server.allowed_origins
    if "*" in origins:
        return "frame-ancestors *"
    return " ".join(["frame-ancestors", "'self'", *origins])


#: Scripts only from the chat's own host. Gradio's page needs its inline start-up
#: scripts and evaluates the ``js=`` hook, so 'unsafe-inline' and 'unsafe-eval' stay;
#: what the policy removes is any script, plugin or <base> from elsewhere.
SCRIPT_POLICY = (
    "script-src 'self' 'unsafe-inline' 'unsafe-eval'; object-src 'none'; base-uri 'self'"
)
#: Where FastAPI's Swagger page loads its script and style (only when server.api_docs).
SWAGGER_CDN = "https://cdn.jsdelivr.net"


def content_security_policy(settings: Settings, *, swagger: bool = False) -> str:
    """The full CSP: frame-ancestors, then the script policy (plus the CDN for /api/docs)."""
    script = SCRIPT_POLICY
    if swagger:
        script = script.replace("script-src 'self'", f"script-src 'self' {SWAGGER_CDN}", 1)
    return f"{frame_ancestors(settings)}; {script}"


class SecurityHeaders:
    """Adds the CSP (frame-ancestors, script-src), ``nosniff`` and ``Referrer-Policy:
    no-referrer`` to every response.

    Pure ASGI (not ``BaseHTTPMiddleware``) so Gradio's streamed responses pass untouched.

    Args:
        app: The wrapped app.
        csp: The policy for every path.
        csp_by_path: Exact paths that get another policy (the opt-in Swagger page).
    """

    def __init__(self, app: ASGIApp, csp: str, csp_by_path: dict[str, str] | None = None) -> None:
        self.app = app
        self.csp = csp.encode("latin-1")
        self.csp_by_path = {k: v.encode("latin-1") for k, v in (csp_by_path or {}).items()}
        self.headers = [
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        csp = self.csp_by_path.get(path, self.csp)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                wanted = [(b"content-security-policy", csp), *self.headers]
                extra = [(k, v) for k, v in wanted if k not in present]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)


# --- request bodies -------------------------------------------------------------------------


class HistoryMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["user", "assistant"]
    content: str = Field(max_length=MAX_HISTORY_CHARS)


class AskRequest(BaseModel):
    """Body of ``POST /api/ask``."""

    model_config = ConfigDict(extra="forbid")

    question: str
    history: list[HistoryMessage] = Field(default_factory=list, max_length=MAX_HISTORY_MESSAGES)


class FeedbackRequest(BaseModel):
    """Body of ``POST /api/feedback``: a vote on an answer the API returned."""

    model_config = ConfigDict(extra="forbid")

    question: str = Field(min_length=1, max_length=20_000)
    answer: str = Field(max_length=100_000)
    citations: list[dict[str, Any]] = Field(default_factory=list, max_length=50)
    rating: Literal["up", "down"]
    comment: str = Field(default="", max_length=MAX_COMMENT_CHARS)


def error(
    status: int, message: str, *, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    """A JSON error: ``{"error": message, ...extra}``."""
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


async def read_json(request: Request, limit: int) -> Any:
    """The request body as JSON, refusing more than ``limit`` bytes, another Content-Type
    (a cross-site form or no-cors ``fetch`` cannot send ``application/json``), and JSON
    that is too deep, holds huge numbers or lone surrogates."""
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type != "application/json":
        shown = content_type or "none"
        raise _BodyError(
            415, f"Send the body as JSON with Content-Type: application/json (got {shown})."
        )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _BodyError(413, f"The request body is over {limit} bytes.")
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise _BodyError(413, f"The request body is over {limit} bytes.")
    if not body:
        raise _BodyError(400, 'The request body is empty; send JSON such as {"question": "..."}.')
    try:
        return parse_json(bytes(body))
    except RequestError as exc:
        raise _BodyError(exc.status, exc.message) from exc


class _BodyError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _validation_detail(exc: ValidationError) -> list[dict[str, Any]]:
    return [
        {"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}
        for e in exc.errors(include_url=False, include_input=False)
    ]


def client_id(request: Request) -> str:
    """The client's address (uvicorn already applied trusted X-Forwarded-For headers)."""
    return request.client.host if request.client else "unknown"


# --- the app ----------------------------------------------------------------------------------


def create_app(
    service: QAService | ManagedService,
    settings: Settings,
    feedback_store: FeedbackStore,
    *,
    ui: bool = True,
    rate_limiter: RateLimiter | None = None,
    feedback_limiter: RateLimiter | None = None,
) -> FastAPI:
    """The FastAPI host with the JSON API and (unless ``ui=False``) the chat mounted at ``/``.

    Args:
        service: The chain; wrapped in ``ManagedService`` when it is a plain ``QAService``.
        settings: Server, course and answer settings.
        feedback_store: Where votes from the chat and the API go.
        ui: Mount the Gradio chat.
        rate_limiter: Per-client limiter for asking, shared by ``/api/ask`` and the
            gradio_client ``/ask`` endpoint (default: one from the settings).
        feedback_limiter: Per-client limiter for ``/api/feedback``, a bucket of its own
            so that a student who asked many questions can still vote.
    """
    server = settings.server
    managed = (
        service
        if isinstance(service, ManagedService)
        else ManagedService.ready(
            service, max_concurrent=server.max_concurrent, wait_timeout_s=server.wait_timeout_s
        )
    )
    limiter = rate_limiter or RateLimiter(server.rate_limit_per_minute)
    vote_limiter = feedback_limiter or RateLimiter(server.rate_limit_per_minute)
    max_chars = settings.answer.max_question_chars

    app = FastAPI(
        title=settings.course.title,
        description="Literature-grounded answers about idiopathic inflammatory myopathies.",
        docs_url="/api/docs" if server.api_docs else None,  # Swagger UI comes from a CDN
        openapi_url="/api/openapi.json",
        redoc_url=None,
    )
    app.state.service = managed
    app.state.feedback_store = feedback_store
    app.state.rate_limiter = limiter
    app.state.feedback_limiter = vote_limiter
    calculator = Calculator(settings.paths.index_dir)
    app.state.calculator = calculator

    def limited(request: Request, bucket: RateLimiter = limiter) -> JSONResponse | None:
        wait = bucket.check(client_id(request))
        if wait is None:
            return None
        seconds = int(wait) + 1
        return error(
            429,
            f"Too many requests: the limit is {server.rate_limit_per_minute} per minute per client. "
            f"Try again in {seconds} s.",
            headers={"Retry-After": str(seconds)},
        )

    async def parse_body(request: Request, model: type[_M], malformed: str) -> _M | JSONResponse:
        """The request body as ``model``, or the 4xx JSON error that says what is wrong."""
        try:
            return model.model_validate(await read_json(request, server.max_request_bytes))
        except _BodyError as exc:
            return error(exc.status, exc.message)
        except ValidationError as exc:
            return error(422, malformed, detail=_validation_detail(exc))

    @app.post("/api/ask", tags=["api"], summary="Answer a question with citations")
    async def api_ask(request: Request) -> Any:
        """Body ``{"question": str, "history": [{"role", "content"}]?}``; returns
        ``{answer, citations, abstained, reason}`` exactly as ``myositis-qa ask --json``."""
        if (refused := limited(request)) is not None:
            return refused
        payload = await parse_body(
            request,
            AskRequest,
            'Malformed request: expected {"question": text, "history"?: '
            '[{"role": "user"|"assistant", "content": text}]}.',
        )
        if isinstance(payload, JSONResponse):
            return payload
        question = payload.question
        try:
            check_text(question)
            for n, message in enumerate(payload.history, start=1):
                check_text(message.content, f"History message {n}")
        except RequestError as exc:
            return error(exc.status, exc.message)
        if not question.strip():
            return error(400, "Please type a question.")
        if len(question) > max_chars:
            return error(
                400,
                f"The question is {len(question)} characters long; the limit is {max_chars}. "
                "Please shorten it.",
            )
        history: list[ChatMessage] = [m.model_dump() for m in payload.history]
        try:
            answer = await run_in_threadpool(managed.ask, question, history)
        except ServiceUnavailable as exc:
            return error(503, redact_paths(str(exc)), headers={"Retry-After": "5"})
        except MyoQAError as exc:
            return error(400, redact_paths(str(exc)))
        except Exception:
            log.exception("Answering failed for %r", question)
            return error(500, "Answering failed; the error was logged.")
        return JSONResponse(answer.contract())

    @app.post("/api/feedback", tags=["api"], status_code=201, summary="Rate an answer")
    async def api_feedback(request: Request) -> Any:
        """Body ``{question, answer, citations?, rating: "up"|"down", comment?}``; returns
        ``{"id"}``, or 503 when the vote could not be stored (disk full, read-only file)."""
        if (refused := limited(request, vote_limiter)) is not None:
            return refused
        payload = await parse_body(request, FeedbackRequest, "Malformed feedback.")
        if isinstance(payload, JSONResponse):
            return payload
        mode = managed.status().get("mode") or ""
        try:
            row_id = await run_in_threadpool(
                lambda: feedback_store.add(
                    question=payload.question,
                    answer=payload.answer,
                    citations=payload.citations,
                    rating=payload.rating,
                    comment=payload.comment,
                    mode=str(mode),
                    channel="api",
                )
            )
        except FeedbackWriteError as exc:  # not the voter's fault; logged by the store
            return error(503, str(exc), headers={"Retry-After": "30"})
        except MyoQAError as exc:
            return error(400, str(exc))
        return JSONResponse({"id": row_id}, status_code=201)

    @app.post("/api/classify", tags=["api"], summary="Score a case (2017 EULAR/ACR criteria)")
    async def api_classify(request: Request) -> Any:
        """Body: the case (``age_at_onset`` and item flags, see ``Case``); returns the score,
        band, category and notes, each weight and cut-off cited to its passage."""
        if (refused := limited(request)) is not None:
            return refused
        case = await parse_body(
            request,
            Case,
            'Malformed case: expected {"age_at_onset": years, "muscle_biopsy"?: true|false, '
            "<item>?: true|false, ...}; see /api/docs.",
        )
        if isinstance(case, JSONResponse):
            return case
        try:
            result = await run_in_threadpool(calculator.classify, case)
        except MyoQAError as exc:
            return error(400, str(exc))
        return JSONResponse(result.model_dump(mode="json"))

    @app.get("/healthz", tags=["api"], summary="Readiness")
    async def healthz() -> JSONResponse:
        """``{index_loaded, model_loaded, n_chunks, ..., feedback: {writable, error}}``; 503
        until the chain is loaded. A failing feedback store shows in ``feedback`` but
        keeps the status 200: answering still works."""
        managed.start_loading()  # a lazily built service starts loading when first checked
        status = managed.status()
        write_error = feedback_store.write_error
        status["feedback"] = {"writable": write_error is None, "error": write_error}
        ready = status["index_loaded"] and status["model_loaded"]
        return JSONResponse(status, status_code=200 if ready else 503)

    answer_queue: GradioAnswerQueue | None = None
    if ui:
        import gradio as gr

        from app.web.ui import ANSWER_GROUP, build_app, gradio_js_path, mount_kwargs

        loader = gradio_js_path()

        @app.get("/gradio.js", include_in_schema=False)
        async def web_component() -> FileResponse:
            """The ``<gradio-app>`` loader; it imports ./assets/* from this same host."""
            return FileResponse(loader, media_type="text/javascript")

        blocks = build_app(managed, settings, feedback_store, rate_limiter=limiter)
        answer_queue = GradioAnswerQueue(blocks, ANSWER_GROUP)
        app = gr.mount_gradio_app(
            app,
            blocks,
            path="/",
            root_path=server.root_path or None,
            footer_links=["api"],
            **mount_kwargs(settings),
        )

    # Added last so they wrap everything, the mounted chat included (CORS outermost,
    # so preflights are answered before the guard).
    app.add_middleware(
        RequestGuard,
        max_body_bytes=server.max_request_bytes,
        allowed_origins=server.allowed_origins,
        answer_queue=answer_queue,
        queue_per_client=server.queue_per_client,
    )
    docs_csp = {"/api/docs": content_security_policy(settings, swagger=True)}
    app.add_middleware(
        SecurityHeaders,
        csp=content_security_policy(settings),
        csp_by_path=docs_csp if server.api_docs else None,
    )
    app.add_middleware(
        CORSMiddleware,
        allow_origins=server.allowed_origins,
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["*"],
        expose_headers=["Retry-After"],
        max_age=600,
    )
    return app
