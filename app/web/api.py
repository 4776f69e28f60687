"""The HTTP host: JSON API, health check, embedding headers, and the mounted chat.

``create_app()`` builds a FastAPI app with

- ``POST /api/ask``: ``{"question": ..., "history": [...]}`` -> the ``ask --json`` object;
- ``POST /api/feedback``: one thumbs up/down for an answer (201);
- ``POST /api/classify``: a case -> its 2017 EULAR/ACR score, band and category, every
  weight cited (``app.qa.criteria``);
- ``GET /healthz``: whether the index and model are loaded, and the number of chunks;
- ``GET /gradio.js``: the ``<gradio-app>`` web-component loader, served by this host;
- the Gradio chat at ``/``.

Cross-origin calls are allowed only from ``server.allowed_origins`` (CORS), and only
those origins may frame the chat (``Content-Security-Policy: frame-ancestors``).
The API answers 429 when one client exceeds ``server.rate_limit_per_minute``.
Errors are JSON: ``{"error": "<message for the user>"}`` (plus ``detail`` for
validation errors).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Generator, Sequence
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.feedback import MAX_COMMENT_CHARS, FeedbackStore
from app.qa.criteria import Case
from app.qa.criteria_index import Calculator
from app.qa.schema import Answer, QAService
from app.qa.schema import Message as ChatMessage
from indexer.errors import MyoQAError
from indexer.settings import Settings

log = logging.getLogger(__name__)

#: Most chat turns accepted in ``history`` (user + assistant messages).
MAX_HISTORY_MESSAGES = 40
#: Longest single history message, in characters.
MAX_HISTORY_CHARS = 20_000


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
            raise ServiceUnavailable(f"The answer service is not available: {self._error}")
        return self._service

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
            "mode": info.get("mode"),
            "loading": not self._loaded.is_set(),
            "error": self._error,
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


class SecurityHeaders:
    """Adds ``Content-Security-Policy: frame-ancestors ...`` and ``nosniff`` to every response.

    Pure ASGI (not ``BaseHTTPMiddleware``) so Gradio's streamed responses pass untouched.
    """

    def __init__(self, app: ASGIApp, csp: str) -> None:
        self.app = app
        self.headers = [
            (b"content-security-policy", csp.encode("latin-1")),
            (b"x-content-type-options", b"nosniff"),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in self.headers if k not in present]
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
    """The request body as JSON, refusing more than ``limit`` bytes."""
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
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _BodyError(400, f"The request body is not valid JSON ({exc}).") from exc


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
) -> FastAPI:
    """The FastAPI host with the JSON API and (unless ``ui=False``) the chat mounted at ``/``.

    Args:
        service: The chain; wrapped in ``ManagedService`` when it is a plain ``QAService``.
        settings: Server, course and answer settings.
        feedback_store: Where votes from the chat and the API go.
        ui: Mount the Gradio chat.
        rate_limiter: Shared per-client limiter (default: one from the settings).
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
    max_chars = settings.answer.max_question_chars

    app = FastAPI(
        title=settings.course.title,
        description="Literature-grounded answers about idiopathic inflammatory myopathies.",
        docs_url="/api/docs",
        openapi_url="/api/openapi.json",
        redoc_url=None,
    )
    app.state.service = managed
    app.state.feedback_store = feedback_store
    app.state.rate_limiter = limiter
    calculator = Calculator(settings.paths.index_dir)
    app.state.calculator = calculator

    def limited(request: Request) -> JSONResponse | None:
        wait = limiter.check(client_id(request))
        if wait is None:
            return None
        seconds = int(wait) + 1
        return error(
            429,
            f"Too many requests: the limit is {server.rate_limit_per_minute} per minute per client. "
            f"Try again in {seconds} s.",
            headers={"Retry-After": str(seconds)},
        )

    @app.post("/api/ask", tags=["api"], summary="Answer a question with citations")
    async def api_ask(request: Request) -> Any:
        """Body ``{"question": str, "history": [{"role", "content"}]?}``; returns
        ``{answer, citations, abstained, reason}`` exactly as ``myositis-qa ask --json``."""
        if (refused := limited(request)) is not None:
            return refused
        try:
            payload = AskRequest.model_validate(await read_json(request, server.max_request_bytes))
        except _BodyError as exc:
            return error(exc.status, exc.message)
        except ValidationError as exc:
            return error(
                422,
                'Malformed request: expected {"question": text, "history"?: '
                '[{"role": "user"|"assistant", "content": text}]}.',
                detail=_validation_detail(exc),
            )
        question = payload.question
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
            return error(503, str(exc), headers={"Retry-After": "5"})
        except MyoQAError as exc:
            return error(400, str(exc))
        except Exception:
            log.exception("Answering failed for %r", question)
            return error(500, "Answering failed; the error was logged.")
        return JSONResponse(answer.contract())

    @app.post("/api/feedback", tags=["api"], status_code=201, summary="Rate an answer")
    async def api_feedback(request: Request) -> Any:
        """Body ``{question, answer, citations?, rating: "up"|"down", comment?}``; returns ``{"id"}``."""
        if (refused := limited(request)) is not None:
            return refused
        try:
            payload = FeedbackRequest.model_validate(
                await read_json(request, server.max_request_bytes)
            )
        except _BodyError as exc:
            return error(exc.status, exc.message)
        except ValidationError as exc:
            return error(422, "Malformed feedback.", detail=_validation_detail(exc))
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
        except MyoQAError as exc:
            return error(400, str(exc))
        return JSONResponse({"id": row_id}, status_code=201)

    @app.post("/api/classify", tags=["api"], summary="Score a case (2017 EULAR/ACR criteria)")
    async def api_classify(request: Request) -> Any:
        """Body: the case (``age_at_onset`` and item flags, see ``Case``); returns the score,
        band, category and notes, each weight and cut-off cited to its passage."""
        if (refused := limited(request)) is not None:
            return refused
        try:
            case = Case.model_validate(await read_json(request, server.max_request_bytes))
        except _BodyError as exc:
            return error(exc.status, exc.message)
        except ValidationError as exc:
            return error(
                422,
                'Malformed case: expected {"age_at_onset": years, "muscle_biopsy"?: true|false, '
                "<item>?: true|false, ...}; see /api/docs.",
                detail=_validation_detail(exc),
            )
        try:
            result = await run_in_threadpool(calculator.classify, case)
        except MyoQAError as exc:
            return error(400, str(exc))
        return JSONResponse(result.model_dump(mode="json"))

    @app.get("/healthz", tags=["api"], summary="Readiness")
    async def healthz() -> JSONResponse:
        """``{index_loaded, model_loaded, n_chunks, ...}``; 503 until the chain is loaded."""
        managed.start_loading()  # a lazily built service starts loading when first checked
        status = managed.status()
        ready = status["index_loaded"] and status["model_loaded"]
        return JSONResponse(status, status_code=200 if ready else 503)

    if ui:
        import gradio as gr

        from app.web.ui import build_app, gradio_js_path, mount_kwargs

        loader = gradio_js_path()

        @app.get("/gradio.js", include_in_schema=False)
        async def web_component() -> FileResponse:
            """The ``<gradio-app>`` loader; it imports ./assets/* from this same host."""
            return FileResponse(loader, media_type="text/javascript")

        blocks = build_app(managed, settings, feedback_store, rate_limiter=limiter)
        app = gr.mount_gradio_app(
            app,
            blocks,
            path="/",
            root_path=server.root_path or None,
            footer_links=["api"],
            **mount_kwargs(settings),
        )

    # Added last so they wrap everything, the mounted chat included.
    app.add_middleware(SecurityHeaders, csp=frame_ancestors(settings))
    app.add_middleware(
        CORSMiddleware,
        allow_origins=server.allowed_origins,
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["*"],
        expose_headers=["Retry-After"],
        max_age=600,
    )
    return app
