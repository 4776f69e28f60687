"""The support judge: does a set of passages support a sentence?

:class:`SupportJudge` is the interface; :class:`SimilarityJudge` is the
deterministic default, a proxy for entailment:

1. every number the sentence states occurs in the passages, and
2. ``score = LEXICAL_WEIGHT * lexical + (1 - LEXICAL_WEIGHT) * semantic >= threshold``, where
   *lexical* is the share of the sentence's content words (stemmed, stopwords
   dropped) that occur in the passages and *semantic* is the cosine similarity
   between the sentence and the best-matching sentence of the passages, embedded
   with the chain's embedding model.

Without an embedding function the score is the lexical share alone. The
thresholds are calibrated in evals/README.md. An NLI model can replace the
judge: anything with a ``name``, a ``settings()`` dict and a ``judge`` method
fits.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol

import numpy as np

from indexer.text import numbers_in, split_sentences

#: Embeds texts as L2-normalised rows (``EmbeddingModel.embed_documents`` fits).
EmbedFn = Callable[[Sequence[str]], np.ndarray]

# Calibrated on evals/calibration/support.jsonl (`myositis-qa-eval calibrate`; table in
# evals/README.md): the middle of the widest plateau of best accuracy.
#: Weight of the lexical share in the combined score (the rest is the cosine).
LEXICAL_WEIGHT = 0.7
#: Combined score at or above which a sentence counts as supported.
SUPPORT_THRESHOLD = 0.67
#: The same, for the lexical-only judge (no embedding function).
LEXICAL_ONLY_THRESHOLD = 0.65

_STOPWORDS = frozenset(
    re.findall(
        r"\S+",
        """a an the and or but if of in on at to for from by with without about as is are was were be
    been being do does did have has had what which who whom whose when where why how this that
    these those it its they them their there here than then so such can could should would will
    may might must shall we our you your he she his her not no nor any all some more most less
    into over under between during after before also only same other each both either up out
    s""",
    )
)
_WORD = re.compile(r"\w+")


@lru_cache(maxsize=1)
def _stemmer() -> Any:
    import snowballstemmer

    return snowballstemmer.stemmer("english")


def content_words(text: str) -> set[str]:
    """Stemmed, case-folded words of ``text`` without stopwords (numbers kept)."""
    text = unicodedata.normalize("NFKC", text).casefold()
    stem = _stemmer().stemWord
    return {stem(w) if w.isalpha() else w for w in _WORD.findall(text) if w not in _STOPWORDS}


def lexical_support(sentence: str, passages: Sequence[str]) -> float:
    """Share of the sentence's content words that occur in the passages (1.0 for no words)."""
    words = content_words(sentence)
    if not words:
        return 1.0
    available: set[str] = set()
    for passage in passages:
        available |= content_words(passage)
    return len(words & available) / len(words)


@dataclass(frozen=True)
class Support:
    """A judge's verdict.

    Attributes:
        supported: the passages support the sentence.
        score: the judge's confidence-like score in [0, 1].
        reason: why not, when unsupported (empty otherwise).
        detail: judge-specific numbers (for the report).
    """

    supported: bool
    score: float
    reason: str = ""
    detail: dict[str, Any] = field(default_factory=dict)


class SupportJudge(Protocol):
    """Decides whether passages support a sentence; an NLI judge implements the same."""

    name: str

    def settings(self) -> dict[str, Any]:
        """Thresholds and weights, recorded in the report."""
        ...

    def judge(self, sentence: str, passages: Sequence[str]) -> Support:
        """Whether ``passages`` (together) support ``sentence``."""
        ...


class SimilarityJudge:
    """Numbers present, then lexical + embedding similarity at or above a threshold.

    Args:
        embed: embeds texts as L2-normalised rows; None for the lexical-only judge.
        threshold: minimum combined score (defaults to the calibrated value).
        lexical_weight: weight of the lexical share in the combined score.
    """

    name = "similarity"

    def __init__(
        self,
        embed: EmbedFn | None = None,
        threshold: float | None = None,
        lexical_weight: float = LEXICAL_WEIGHT,
    ) -> None:
        if not 0 <= lexical_weight <= 1:
            raise ValueError(f"lexical_weight must be within 0..1, got {lexical_weight}")
        self.embed = embed
        default = SUPPORT_THRESHOLD if embed is not None else LEXICAL_ONLY_THRESHOLD
        self.threshold = default if threshold is None else threshold
        self.lexical_weight = lexical_weight if embed is not None else 1.0
        self._vectors: dict[str, np.ndarray] = {}

    def settings(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "threshold": self.threshold,
            "lexical_weight": self.lexical_weight,
            "embedding": self.embed is not None,
        }

    def prime(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        """Cache vectors already computed with the same model (e.g. the index's sentence vectors)."""
        if len(texts) != len(vectors):
            raise ValueError(f"{len(texts)} texts but {len(vectors)} vectors")
        for text, vector in zip(texts, vectors, strict=True):
            self._vectors.setdefault(text, np.asarray(vector, dtype=np.float32))

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        assert self.embed is not None
        todo = list(dict.fromkeys(t for t in texts if t not in self._vectors))
        if todo:
            for text, vector in zip(todo, self.embed(todo), strict=True):
                self._vectors[text] = np.asarray(vector, dtype=np.float32)
        return np.vstack([self._vectors[t] for t in texts])

    def semantic_support(self, sentence: str, passages: Sequence[str]) -> float:
        """Cosine of the sentence with the best-matching passage sentence (0.0 for no passages)."""
        candidates = [s for p in passages for s in split_sentences(p)]
        if not candidates or self.embed is None:
            return 0.0
        vectors = self._embed([sentence, *candidates])
        return float(np.clip(np.max(vectors[1:] @ vectors[0]), 0.0, 1.0))

    def judge(self, sentence: str, passages: Sequence[str]) -> Support:
        passages = [p for p in passages if p.strip()]
        if not passages:
            return Support(False, 0.0, "no passage")
        available: set[str] = set()
        for passage in passages:
            available |= numbers_in(passage)
        missing = sorted(numbers_in(sentence) - available)
        lexical = lexical_support(sentence, passages)
        detail: dict[str, Any] = {"lexical": round(lexical, 4)}
        score = lexical
        if self.embed is not None:
            semantic = self.semantic_support(sentence, passages)
            detail["semantic"] = round(semantic, 4)
            score = self.lexical_weight * lexical + (1 - self.lexical_weight) * semantic
        score = round(score, 4)
        if missing:
            return Support(False, score, f"numbers not in the passages: {missing}", detail)
        if score < self.threshold:
            return Support(False, score, f"similarity {score:.2f} < {self.threshold:.2f}", detail)
        return Support(True, score, "", detail)
