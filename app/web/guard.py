"""The door every request passes before it reaches the API or the mounted chat.

``RequestGuard`` is a pure ASGI middleware (Gradio's streamed responses pass
untouched) that, for every state-changing request (POST, PUT, PATCH, DELETE):

1. refuses a cross-site request from a browser: one whose ``Origin`` is neither the
   chat's own nor in ``server.allowed_origins``, or, without ``Origin``, whose
   ``Sec-Fetch-Site`` says ``cross-site``/``same-site`` (403). Clients that are not
   browsers (curl, ``gradio_client``, a server) send neither header and pass;
2. closes Gradio's file upload route (the chat has no upload component) (403);
3. reads at most ``server.max_request_bytes`` of the body, counted while reading,
   whatever the route (413);
4. parses a JSON body with ``app.web.limits.parse_json``: deep nesting, huge
   integers, NaN and lone surrogates are a 400 JSON error, not a crash behind it;
5. bounds the chat's queue per client: a client with ``server.queue_per_client``
   questions already waiting or being answered gets 429 for the next one.

Every refusal is JSON: ``{"error": "<message for the user>"}``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.web.limits import RequestError, parse_json

log = logging.getLogger(__name__)

#: Methods that never change state; they pass the guard untouched.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
#: Gradio routes that take files; this app has no component that needs them.
CLOSED_PREFIXES = ("/gradio_api/upload", "/gradio_api/process_recording")
#: Gradio routes that put an event in the queue.
_JOIN = "/gradio_api/queue/join"
_CALL = "/gradio_api/call/"


def cross_site_refusal(
    headers: Headers, allowed_origins: Sequence[str], *, what: str = "request"
) -> str | None:
    """Why a state-changing browser request must be refused, or None when it may pass.

    Args:
        headers: The request headers (``Origin``, ``Sec-Fetch-Site``, ``Host``).
        allowed_origins: ``server.allowed_origins`` (``*`` allows any origin).
        what: Named in the message.
    """
    if "*" in allowed_origins:
        return None
    origin = headers.get("origin")
    fetch_site = (headers.get("sec-fetch-site") or "").lower()
    if origin is not None:
        origin = origin.strip().rstrip("/")
        if origin in allowed_origins or fetch_site == "same-origin":
            return None
        if origin != "null" and urlsplit(origin).netloc.lower() == headers.get("host", "").lower():
            return None  # the chat's own page, from a browser without Sec-Fetch-Site
        return (
            f"Cross-site {what} refused: the page at {origin} may not write to this chat. "
            "Add its origin to server.allowed_origins to allow it."
        )
    if fetch_site in ("cross-site", "same-site"):
        return (
            f"Cross-site {what} refused: a page on another site may not write to this chat "
            "(Sec-Fetch-Site: cross-site). Add its origin to server.allowed_origins to allow it."
        )
    return None


def client_of(scope_or_request: Any) -> str:
    """The client address of an ASGI scope or a request (after trusted proxy headers)."""
    client = (
        scope_or_request.get("client")
        if isinstance(scope_or_request, dict)
        else getattr(scope_or_request, "client", None)
    )
    if client is None:
        return "unknown"
    host = client[0] if isinstance(client, tuple | list) else getattr(client, "host", None)
    return str(host) if host else "unknown"


class GradioAnswerQueue:
    """How many questions one client has waiting or running in the chat's answer group.

    Reads the Gradio queue of ``blocks`` (its per-group event lists and active jobs);
    Gradio has no per-client bound of its own.

    Args:
        blocks: The chat's ``gr.Blocks``.
        concurrency_id: The concurrency group of the answering events.
    """

    def __init__(self, blocks: Any, concurrency_id: str) -> None:
        self.blocks = blocks
        self.concurrency_id = concurrency_id

    def is_answer(self, fn_index: Any = None, api_name: str | None = None) -> bool:
        """Whether the event named by ``fn_index`` or ``api_name`` computes an answer."""
        for fn_id, fn in self.blocks.fns.items():
            if getattr(fn, "concurrency_id", None) != self.concurrency_id:
                continue
            if fn_index is not None and fn_index == fn_id:
                return True
            if api_name is not None and api_name == getattr(fn, "api_name", None):
                return True
        return False

    def counts(self) -> Counter[str]:
        """Answer events per client, queued or running."""
        queue = getattr(self.blocks, "_queue", None)
        if queue is None:
            return Counter()
        events: list[Any] = []
        group = queue.event_queue_per_concurrency_id.get(self.concurrency_id)
        if group is not None:
            events.extend(group.queue)
        for job in queue.active_jobs:
            if job:
                events.extend(job)
        return Counter(
            client_of(event.request)
            for event in events
            if getattr(event, "concurrency_id", None) == self.concurrency_id
        )


class RequestGuard:
    """See the module docstring.

    Args:
        app: The wrapped ASGI app.
        max_body_bytes: Largest accepted request body.
        allowed_origins: Origins whose pages may write (besides the chat's own).
        answer_queue: The chat's answer queue, when the chat is mounted.
        queue_per_client: Questions one client may have waiting or running.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        allowed_origins: Sequence[str],
        answer_queue: GradioAnswerQueue | None = None,
        queue_per_client: int = 4,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.allowed_origins = list(allowed_origins)
        self.answer_queue = answer_queue
        self.queue_per_client = queue_per_client
        self._joining: Counter[str] = Counter()  # joins accepted but not yet in the queue

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"].upper() in SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        path = _route_path(scope)
        headers = Headers(scope=scope)
        if (reason := cross_site_refusal(headers, self.allowed_origins)) is not None:
            log.warning(
                "Refused %s %s from %s: %s", scope["method"], path, client_of(scope), reason
            )
            await _refuse(403, reason, scope, receive, send)
            return
        if path.startswith(CLOSED_PREFIXES):
            await _refuse(403, "This chat takes no file uploads.", scope, receive, send)
            return
        try:
            body = await self._read_body(headers, receive)
            parsed = self._parse(headers, body)
        except RequestError as exc:
            await _refuse(exc.status, exc.message, scope, receive, send)
            return
        replay = _replay(body, receive)
        client = client_of(scope)
        if not self._is_answer_join(path, parsed):
            await self.app(scope, replay, send)
            return
        assert self.answer_queue is not None
        waiting = self.answer_queue.counts()[client] + self._joining[client]
        if waiting >= self.queue_per_client:
            await _refuse(
                429,
                f"You already have {waiting} questions waiting or being answered; "
                "please wait for an answer before asking more.",
                scope,
                receive,
                send,
                headers={"Retry-After": "5"},
            )
            return
        self._joining[client] += 1
        try:
            await self.app(scope, replay, send)
        finally:
            self._joining[client] -= 1
            if self._joining[client] <= 0:
                del self._joining[client]

    async def _read_body(self, headers: Headers, receive: Receive) -> bytes:
        limit = self.max_body_bytes
        declared = headers.get("content-length")
        too_big = RequestError(
            413, f"The request body is over {limit} bytes (server.max_request_bytes)."
        )
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            raise too_big
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            body.extend(message.get("body", b""))
            if len(body) > limit:
                raise too_big
            if not message.get("more_body", False):
                break
        return bytes(body)

    def _parse(self, headers: Headers, body: bytes) -> Any:
        content_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if not body.strip() or not (
            content_type == "application/json" or content_type.endswith("+json")
        ):
            return None
        return parse_json(body)

    def _is_answer_join(self, path: str, parsed: Any) -> bool:
        if self.answer_queue is None:
            return False
        if path.rstrip("/") == _JOIN:
            fn_index = parsed.get("fn_index") if isinstance(parsed, dict) else None
            return fn_index is not None and self.answer_queue.is_answer(fn_index=fn_index)
        if path.startswith(_CALL):
            parts = path[len(_CALL) :].strip("/").split("/")
            name = parts[1] if parts[0] == "v2" and len(parts) > 1 else parts[0]
            return self.answer_queue.is_answer(api_name=name)
        return False


def _route_path(scope: Scope) -> str:
    path: str = scope.get("path", "")
    root = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :] or "/"
    return path


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands over the body read already, then the real channel."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _refuse(
    status: int,
    message: str,
    scope: Scope,
    receive: Receive,
    send: Send,
    headers: dict[str, str] | None = None,
) -> None:
    response = JSONResponse({"error": message}, status_code=status, headers=headers)
    await response(scope, receive, send)
