"""The answer contract shared by the chain, the CLI, the API, the UI and the evals."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

#: A chat turn, as Gradio's "messages" format and the API's ``history`` use it.
Message = dict[str, str]


class Citation(BaseModel):
    """One cited passage; ``n`` is the number used as ``[n]`` in the answer text."""

    model_config = ConfigDict(extra="forbid")

    n: int = Field(ge=1)
    source_id: str
    title: str
    authors: str = ""
    journal: str = ""
    year: str = ""
    doi: str = ""
    pmid: str = ""
    pmcid: str = ""
    url: str = ""
    section: str = ""
    page: int | None = None
    page_end: int | None = None
    chunk_id: str
    passage: str
    #: Substrings of ``passage`` that support the answer (highlighted in the UI).
    highlights: list[str] = Field(default_factory=list)
    #: Bibliography key of the reference named (the quoted sentence's primary source);
    #: empty when the citation names the source document itself (an educator's PDF).
    reference_key: str = ""
    #: Every source key of the quoted sentences, the primary one first.
    reference_keys: list[str] = Field(default_factory=list)
    #: Where the passage sits when the reference is not the document itself: the
    #: title of the myositis-qa digest holding it (its section is ``section``).
    digest_title: str = ""


class Answer(BaseModel):
    """``{answer, citations, abstained, reason}``; ``meta`` is diagnostic and not part of the contract."""

    model_config = ConfigDict(extra="forbid")

    answer: str
    citations: list[Citation] = Field(default_factory=list)
    abstained: bool = False
    reason: str | None = None
    meta: dict[str, Any] = Field(default_factory=dict, exclude=True)

    def contract(self) -> dict[str, Any]:
        """Exactly the object ``myositis-qa ask --json`` prints and ``POST /api/ask`` returns."""
        return self.model_dump(mode="json")


class QAService(Protocol):
    """What the UI, the API and the evals need from a chain."""

    @property
    def info(self) -> dict[str, Any]:
        """Mode (``extractive``/``llm`` and model name), number of chunks, embedding model."""
        ...

    def ask(self, question: str, history: Sequence[Message] | None = None) -> Answer:
        """Answer a question; raises ``MyoQAError`` for an empty or over-long question."""
        ...

    def stream(
        self, question: str, history: Sequence[Message] | None = None
    ) -> Iterator[str | Answer]:
        """Yield pieces of answer text as they are ready, then the final ``Answer``."""
        ...
