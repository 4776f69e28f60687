"""Scope rules that need no model: patient-specific requests and follow-up condensing."""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence

from app.qa.lexical import content_terms, stem
from app.qa.schema import Message

_PERSONAL = re.compile(
    r"""
    \bmy\s+(?:[\w'-]+\s+){0,4}?(?:patient|patients|patient's|mother|mum|mom|father|dad|wife|husband|son|daughter|
        child|kid|baby|sister|brother|friend|partner|grandmother|grandfather|aunt|uncle|
        cousin|colleague|boss)\b
    | \b(?:should|can|could|shall)\s+i\s+(?:give|prescribe|start|stop|take|increase|reduce|
        lower|raise|double|halve|switch|continue|book|order|write|skip|use|treat|get|have)\b
    | \bwhat\s+dose\s+should\b
    | \bdose\s+should\s+i\b
    | \b(?:i|he|she)\s+weighs?\b
    | \bweighs?\s+\d+\s*(?:kg|lbs?|pounds)\b
    | \bwill\s+(?:my|he|she|i)\b
    | \b(?:i|i'm|i\s+am)\s+(?:have|has|had|taking|on|diagnosed|pregnant)\b
    | \bfor\s+me\b
    | \bmy\s+(?:ck|dose|biopsy|scan|results?|symptoms?|rash|weakness|methotrexate|prednisolone|
        treatment|medication|meds)\b
    """,
    re.IGNORECASE | re.VERBOSE,
)

_FOLLOW_UP_START = re.compile(
    r"^\s*(?:and|but|also|what\s+about|how\s+about|what\s+of|and\s+in|in|for|same|then|"
    r"is\s+that|are\s+they|does\s+it|do\s+they|why|how\s+so|which\s+one)\b",
    re.IGNORECASE,
)
_PRONOUN = re.compile(r"\b(?:it|its|they|them|their|this|that|these|those|there)\b", re.IGNORECASE)


def is_patient_specific(question: str) -> bool:
    """True for requests about an individual's care (dosing, prognosis, stopping a drug)."""
    return bool(_PERSONAL.search(question))


def is_follow_up(question: str) -> bool:
    """A short or pronoun-led question that leans on the previous turn."""
    terms = content_terms(question)
    if _FOLLOW_UP_START.match(question) or len(terms) <= 1:
        return True
    return bool(_PRONOUN.search(question)) and len(terms) <= 4


def condense(question: str, history: Sequence[Message] | None, vocabulary: Collection[str]) -> str:
    """Carry the previous question's key entities into a follow-up (extractive mode).

    ``vocabulary`` is the set of index tokens: only terms the literature uses are
    carried over, so chit-chat in the history does not pollute the search.
    """
    previous = [
        m["content"] for m in (history or []) if m.get("role") == "user" and m.get("content")
    ]
    if not previous:
        return question
    context = previous[0]
    for earlier in previous[1:]:
        context = _carry(earlier, context, vocabulary) if is_follow_up(earlier) else earlier
    return _carry(question, context, vocabulary) if is_follow_up(question) else question


def _carry(question: str, previous: str, vocabulary: Collection[str]) -> str:
    own = set(content_terms(question))
    carried = [t for t in content_terms(previous) if stem(t) in vocabulary and t not in own]
    return f"{question} {' '.join(carried)}".strip() if carried else question
