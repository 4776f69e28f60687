"""Question files: JSONL, one question per line, validated with line numbers.

The format is the contract in ARCHITECTURE.md: ``id``, ``question``, ``in_scope``,
``must_contain`` (each item a string or a list of alternatives, matched
case-insensitively) and optional ``gold_sources`` (manifest ids). Unknown fields
(``topic``, ``fact``, ...) are kept aside in ``extra`` and otherwise ignored.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from indexer.errors import MyoQAError

log = logging.getLogger(__name__)

#: How many problems a QuestionFileError lists before "... and N more".
MAX_LISTED_PROBLEMS = 10

KeyFact = str | list[str]


class QuestionFileError(MyoQAError):
    """A question file that cannot be used; the message names every bad line."""


class Question(BaseModel):
    """One eval question."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, description="Unique id within the file.")
    question: str = Field(min_length=1, description="The question as a trainee asks it.")
    in_scope: bool = Field(description="False: the chatbot should abstain.")
    must_contain: list[KeyFact] = Field(
        default_factory=list,
        description="Key facts; each a string or a list of alternatives (case-insensitive).",
    )
    gold_sources: list[str] = Field(
        default_factory=list, description="Manifest ids of sources that state the answer."
    )
    line: int = Field(default=0, description="Line number in the file it came from.")
    extra: dict[str, Any] = Field(default_factory=dict, description="Unknown fields, ignored.")

    @field_validator("question")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value

    @field_validator("must_contain")
    @classmethod
    def _key_facts(cls, value: list[KeyFact]) -> list[KeyFact]:
        for i, item in enumerate(value):
            alternatives = [item] if isinstance(item, str) else item
            if not alternatives:
                raise ValueError(f"item {i} is an empty list of alternatives")
            if any(not alt.strip() for alt in alternatives):
                raise ValueError(f"item {i} contains an empty string")
        return value


_KNOWN = frozenset(name for name in Question.model_fields if name not in {"line", "extra"})


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "line"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def parse_questions(lines: Iterable[str], name: str = "<questions>") -> list[Question]:
    """Parse JSONL lines into Questions; raise QuestionFileError naming every bad line.

    Blank lines and lines starting with ``#`` are skipped.
    """
    questions: list[Question] = []
    problems: list[str] = []
    first_seen: dict[str, int] = {}
    for line_no, raw in enumerate(lines, start=1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as exc:
            problems.append(f"{name} line {line_no}: not valid JSON ({exc.msg})")
            continue
        if not isinstance(row, dict):
            problems.append(
                f"{name} line {line_no}: expected a JSON object, got {type(row).__name__}"
            )
            continue
        known = {k: v for k, v in row.items() if k in _KNOWN}
        extra = {k: v for k, v in row.items() if k not in _KNOWN}
        try:
            question = Question(**known, line=line_no, extra=extra)
        except ValidationError as exc:
            problems.append(f"{name} line {line_no}: {_describe(exc)}")
            continue
        if question.id in first_seen:
            problems.append(
                f"{name} line {line_no}: duplicate id {question.id!r} "
                f"(first on line {first_seen[question.id]})"
            )
            continue
        first_seen[question.id] = line_no
        if not question.in_scope and question.must_contain:
            log.warning(
                "%s line %s: out-of-scope question %s has must_contain items; they are ignored",
                name,
                line_no,
                question.id,
            )
        questions.append(question)
    if problems:
        listed = problems[:MAX_LISTED_PROBLEMS]
        more = len(problems) - len(listed)
        suffix = f"\n... and {more} more" if more else ""
        raise QuestionFileError("Invalid question file:\n" + "\n".join(listed) + suffix)
    if not questions:
        raise QuestionFileError(f"{name} holds no questions.")
    return questions


def load_questions(path: Path) -> list[Question]:
    """Read and validate a JSONL question file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise QuestionFileError(f"Question file {path} does not exist.") from exc
    except UnicodeDecodeError as exc:
        raise QuestionFileError(f"Question file {path} is not UTF-8 text ({exc.reason}).") from exc
    return parse_questions(text.splitlines(), name=str(path))
