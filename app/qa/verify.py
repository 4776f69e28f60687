"""Citation parsing, verification and numbering — pure functions.

An answer is a list of sentences, each citing one or more passages with ``[n]``.
The verifier keeps a sentence only when every citation is in range and every
number the sentence states occurs in the passages it cites.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from indexer.text import numbers_in, split_sentences

CITATION = re.compile(r"\s*\[(\d+(?:\s*[,;]\s*\d+)*)\]")


@dataclass(frozen=True)
class DraftSentence:
    """A sentence and the passage keys it cites (keys into the evidence mapping)."""

    text: str
    cites: tuple[int, ...]


@dataclass
class Verification:
    kept: list[DraftSentence] = field(default_factory=list)
    removed: list[dict[str, object]] = field(default_factory=list)


def strip_citations(text: str) -> str:
    return CITATION.sub("", text).strip()


def parse_cited_sentences(text: str) -> list[DraftSentence]:
    """Split model output into sentences with the ``[n]`` markers each carries.

    A marker that follows the sentence's final period (``... 44%. [2]``) belongs
    to that sentence.
    """
    moved = re.sub(r"([.!?])((?:\s*\[\d+(?:\s*[,;]\s*\d+)*\])+)", r"\2\1", text.strip())
    out = []
    for sentence in split_sentences(moved):
        cites = tuple(
            int(n) for group in CITATION.findall(sentence) for n in re.split(r"\s*[,;]\s*", group)
        )
        body = strip_citations(sentence)
        if body and body not in {".", "!", "?"}:
            out.append(DraftSentence(body, cites))
    return out


def unsupported_numbers(sentence: str, passages: Sequence[str]) -> set[str]:
    """Numbers stated in ``sentence`` that none of ``passages`` contains."""
    available: set[str] = set()
    for passage in passages:
        available |= numbers_in(passage)
    return numbers_in(sentence) - available


def verify(sentences: Sequence[DraftSentence], evidence: Mapping[int, str]) -> Verification:
    """Keep sentences whose citations resolve and whose numbers their passages contain."""
    result = Verification()
    for sentence in sentences:
        if not sentence.cites:
            result.removed.append({"sentence": sentence.text, "why": "no citation"})
            continue
        missing = [n for n in sentence.cites if n not in evidence]
        if missing:
            result.removed.append(
                {"sentence": sentence.text, "why": f"citation out of range: {missing}"}
            )
            continue
        extra = unsupported_numbers(sentence.text, [evidence[n] for n in sentence.cites])
        if extra:
            result.removed.append(
                {
                    "sentence": sentence.text,
                    "why": f"numbers not in cited passages: {sorted(extra)}",
                }
            )
            continue
        result.kept.append(sentence)
    return result


def renumber(sentences: Sequence[DraftSentence]) -> tuple[list[DraftSentence], list[int]]:
    """Number cited passages 1..n in order of first use.

    Returns the sentences with new numbers and, for each new number, the
    original evidence key it stands for.
    """
    order: list[int] = []
    for sentence in sentences:
        for key in sentence.cites:
            if key not in order:
                order.append(key)
    new_number = {key: i for i, key in enumerate(order, start=1)}
    renumbered = [
        DraftSentence(s.text, tuple(dict.fromkeys(new_number[k] for k in s.cites)))
        for s in sentences
    ]
    return renumbered, order


def render(sentences: Sequence[DraftSentence]) -> str:
    """Sentences joined, every sentence ending with its markers before the final punctuation.

    A draft may hold several sentences (a quoted pair); each of them gets the markers.
    """
    parts = []
    for draft in sentences:
        marks = "".join(f"[{n}]" for n in draft.cites)
        for sentence in split_sentences(draft.text.strip()) or [draft.text.strip()]:
            text = sentence.rstrip()
            if text and text[-1] in ".!?":
                parts.append(f"{text[:-1].rstrip()} {marks}{text[-1]}")
            else:
                parts.append(f"{text} {marks}.")
    return " ".join(parts)


def cited_numbers(answer_text: str) -> list[int]:
    """Every ``[n]`` number in an answer, in order."""
    return [
        int(n) for group in CITATION.findall(answer_text) for n in re.split(r"\s*[,;]\s*", group)
    ]
