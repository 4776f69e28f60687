"""Pure text helpers shared by the chunker and the answerer."""

from __future__ import annotations

import re
import unicodedata

# Tokens that end in a period without ending a sentence.
_ABBREVIATIONS = frozenset(
    {
        "e.g", "i.e", "al", "vs", "dr", "fig", "figs", "approx", "cf", "no", "nos", "st",
        "etc", "incl", "ca", "mr", "mrs", "ms", "prof", "ref", "refs", "vol", "pp", "p",
        "resp", "max", "min", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep",
        "sept", "oct", "nov", "dec", "eds", "ed", "suppl",
    }
)  # fmt: skip
_BOUNDARY = re.compile(r"[.!?][\"'”’)\]]*\s+")
_STARTS_SENTENCE = re.compile(r"[A-Z0-9\"'“‘(\[≥≤<>]")
_SPACE = re.compile(r"\s+")


def normalize_space(text: str) -> str:
    """Collapse runs of whitespace to one space and strip the ends."""
    return _SPACE.sub(" ", text).strip()


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Split ``text`` into sentences; return their ``(start, end)`` character spans.

    Periods in decimals (``78.7``), common abbreviations (``e.g.``, ``et al.``,
    ``vs.``) and single initials (``Lundberg IE.`` is kept whole only when followed
    by a lower-case word) do not end a sentence.
    """
    spans: list[tuple[int, int]] = []
    start = 0
    for match in _BOUNDARY.finditer(text):
        end = match.end()
        if end >= len(text) or not _STARTS_SENTENCE.match(text[end]):
            continue
        if text[match.start()] == ".":
            word = re.search(r"([\w.]+)$", text[start : match.start()])
            token = word.group(1).lower() if word else ""
            if token in _ABBREVIATIONS or token.rstrip(".") in _ABBREVIATIONS:
                continue
        spans.append(_trim(text, start, match.end()))
        start = end
    if text[start:].strip():
        spans.append(_trim(text, start, len(text)))
    return [s for s in spans if s[1] > s[0]]


def split_sentences(text: str) -> list[str]:
    """The sentences of ``text``, whitespace-trimmed."""
    return [text[a:b] for a, b in sentence_spans(text)]


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


_NUMBER = re.compile(r"(?<![\w.])\d+(?:[.,]\d+)*")


def numbers_in(text: str) -> set[str]:
    """The numbers a text states, normalised (``1,962`` -> ``1962``).

    Used to check that every number of an answer sentence occurs in the passage
    it cites. Digits glued to a preceding letter (``CD19``, ``TIF1γ``) are part of
    a name and are not counted.
    """
    text = unicodedata.normalize("NFKC", text)
    found: set[str] = set()
    for match in _NUMBER.finditer(text):
        found.add(match.group(0).replace(",", ""))
    return found
