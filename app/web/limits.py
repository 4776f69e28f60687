"""What a request into the chain may contain, checked the same way on every route.

The JSON API (``POST /api/ask``), the chat's Gradio handlers and the ``/ask``
endpoint that ``gradio_client`` calls all use these checks, so none of them is a
way around the others' limits. Pure functions; no web framework imported.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Any

from app.qa.schema import Message
from indexer.errors import MyoQAError

#: Most chat turns accepted in ``history`` (user + assistant messages).
MAX_HISTORY_MESSAGES = 40
#: Longest single history message, in characters.
MAX_HISTORY_CHARS = 20_000
#: Deepest nesting of arrays/objects accepted in a JSON body (real bodies need 4).
MAX_JSON_DEPTH = 32
#: Longest integer literal accepted in a JSON body, in characters (a 64-bit int has 20).
MAX_INT_CHARS = 20

_SURROGATE_RE = re.compile("[\ud800-\udfff]")


class RequestError(MyoQAError):
    """A request the client must fix; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _parse_int(text: str) -> int:
    if len(text) > MAX_INT_CHARS:
        raise RequestError(
            400,
            f"The request body holds a {len(text)}-character number, which is too large "
            f"(at most {MAX_INT_CHARS} characters).",
        )
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise RequestError(400, f"The request body holds the number {text}, which is too large.")
    return value


def _parse_constant(name: str) -> Any:
    raise RequestError(400, f"The request body is not valid JSON ({name} is not a JSON value).")


def parse_json(body: bytes) -> Any:
    """Decode a JSON request body, refusing what would crash or mislead the code behind it.

    Raises:
        RequestError: 400 for invalid JSON, nesting deeper than ``MAX_JSON_DEPTH``,
            integers over ``MAX_INT_CHARS`` characters, NaN/Infinity, or a lone UTF-16
            surrogate (``\\ud800``) in any string.
    """
    try:
        value = json.loads(
            body,
            parse_int=_parse_int,
            parse_float=_parse_float,
            parse_constant=_parse_constant,
        )
    except RecursionError:
        raise RequestError(400, _too_deep()) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"The request body is not valid JSON ({exc}).") from None
    except ValueError as exc:  # e.g. an integer past Python's digit limit
        raise RequestError(400, f"The request body is not valid JSON ({exc}).") from None
    check_structure(value)
    return value


def _too_deep() -> str:
    return (
        f"The request body is nested too deeply (more than {MAX_JSON_DEPTH} levels of "
        "arrays or objects)."
    )


def check_structure(value: Any) -> None:
    """Refuse nesting deeper than ``MAX_JSON_DEPTH`` and lone surrogates in any string.

    Iterative, so a hostile value cannot exhaust the stack.
    """
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            check_text(item, "The request")
        elif isinstance(item, dict | list):
            if depth >= MAX_JSON_DEPTH:
                raise RequestError(400, _too_deep())
            if isinstance(item, dict):
                for key, child in item.items():
                    check_text(str(key), "The request")
                    stack.append((child, depth + 1))
            else:
                stack.extend((child, depth + 1) for child in item)


def check_text(text: str, what: str = "The question") -> str:
    """``text`` unchanged, unless it holds a lone surrogate (not a character; cannot be encoded).

    Raises:
        RequestError: 400, naming the code point.
    """
    match = _SURROGATE_RE.search(text)
    if match is not None:
        code = f"\\u{ord(match.group(0)):04x}"
        raise RequestError(
            400,
            f"{what} contains an invalid character: a lone surrogate ({code}) is not a "
            "Unicode character. Please remove it or retype the text.",
        )
    return text


def check_history(history: Sequence[Any] | None) -> list[Message]:
    """The conversation as the chain wants it, within the limits every route shares.

    Raises:
        RequestError: 400 for a wrong shape, more than ``MAX_HISTORY_MESSAGES`` messages,
            a message over ``MAX_HISTORY_CHARS`` characters or an invalid character.
    """
    if history is None:
        return []
    if not isinstance(history, list | tuple):
        raise RequestError(400, "history must be a list of {role: user|assistant, content: text}.")
    if len(history) > MAX_HISTORY_MESSAGES:
        raise RequestError(
            400,
            f"The history has {len(history)} messages; the limit is {MAX_HISTORY_MESSAGES}. "
            "Send only the latest turns.",
        )
    messages: list[Message] = []
    for n, message in enumerate(history, start=1):
        if (
            not isinstance(message, dict)
            or message.get("role") not in ("user", "assistant")
            or not isinstance(message.get("content"), str)
        ):
            raise RequestError(
                400, "history must be a list of {role: user|assistant, content: text}."
            )
        content = message["content"]
        if len(content) > MAX_HISTORY_CHARS:
            raise RequestError(
                400,
                f"History message {n} is {len(content)} characters long; the limit is "
                f"{MAX_HISTORY_CHARS} characters.",
            )
        check_text(content, f"History message {n}")
        messages.append({"role": message["role"], "content": content})
    return messages
