"""The default answerer: quotes the best-supported sentences of the evidence.

It scores every sentence of the retrieved passages against the question
(embedding similarity plus weighted coverage of the question's key terms),
picks the best with a diversity penalty (MMR) and cites each. It cannot state a
fact that is not in a cited passage because it only copies sentences.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from app.lexical import SynonymTable, tokenize
from app.retrieval import Hit, Query
from indexer.settings import AnswerSettings

_DANGLING = re.compile(
    r"^(?:this|these|that|those|it|its|they|their|such|both|he|she|the latter|the former)\b",
    re.IGNORECASE,
)
# weights of the sentence score; documented in the README's architecture section
SEMANTIC_WEIGHT = 0.55
LEXICAL_WEIGHT = 0.45
#: how far below the best sentence another may score and still be included
RELATIVE_CUTOFF = 0.8


@dataclass
class Candidate:
    """A quotable unit: one sentence, or a sentence with the predecessor it leans on."""

    hit_position: int
    text: str
    vector: np.ndarray
    semantic: float
    lexical: float
    score: float = 0.0


def term_alternatives(question: str, synonyms: SynonymTable) -> list[set[str]]:
    """For each key token of the question, the tokens that count as mentioning it."""
    groups: list[set[str]] = []
    seen: set[str] = set()
    for token in tokenize(question):
        if token in seen:
            continue
        seen.add(token)
        alternatives = {token}
        for group in synonyms.groups:
            if token in group or any(token in tokenize(term) for term in group if " " not in term):
                for term in group:
                    alternatives.update(tokenize(term) if " " not in term else [])
        groups.append(alternatives)
    return groups


def lexical_coverage(
    sentence_tokens: set[str], terms: Sequence[set[str]], idf: Mapping[str, float]
) -> float:
    """IDF-weighted share of the question's terms that the sentence mentions (0..1)."""
    if not terms:
        return 0.0
    total = hit = 0.0
    for alternatives in terms:
        weight = max((idf.get(t, 0.0) for t in alternatives), default=0.0)
        weight = max(weight, 0.5)
        total += weight
        if alternatives & sentence_tokens:
            hit += weight
    return hit / total if total else 0.0


def candidates_from(
    query: Query,
    hits: Sequence[Hit],
    sentence_vectors: Sequence[np.ndarray],
    terms: Sequence[set[str]],
    idf: Mapping[str, float],
) -> list[Candidate]:
    """Score every sentence of every hit; merge a dangling sentence with its predecessor."""
    assert query.vector is not None
    out: list[Candidate] = []
    for position, (hit, vectors) in enumerate(zip(hits, sentence_vectors, strict=True)):
        texts = hit.chunk.sentence_texts()
        prior = 1.0 / (1.0 + 0.05 * position)
        for i, text in enumerate(texts):
            vector = vectors[i]
            if _DANGLING.match(text):
                if i == 0:
                    continue  # its subject is outside this passage
                text = f"{texts[i - 1]} {text}"
                vector = vectors[i - 1] + vectors[i]
                vector = vector / (np.linalg.norm(vector) or 1.0)
            semantic = float(np.dot(query.vector, vector))
            lexical = lexical_coverage(set(tokenize(text)), terms, idf)
            score = (SEMANTIC_WEIGHT * semantic + LEXICAL_WEIGHT * lexical) * prior
            out.append(Candidate(position, text, vector, semantic, lexical, score))
    return out


def select_mmr(
    candidates: Sequence[Candidate], max_sentences: int, min_sentences: int, mmr_lambda: float
) -> list[Candidate]:
    """Pick relevant, non-redundant sentences (maximal marginal relevance)."""
    pool = sorted(candidates, key=lambda c: -c.score)
    if not pool:
        return []
    best = pool[0].score
    chosen: list[Candidate] = []
    while pool and len(chosen) < max_sentences:
        def marginal(c: Candidate) -> float:
            redundancy = max((float(np.dot(c.vector, s.vector)) for s in chosen), default=0.0)
            return mmr_lambda * c.score - (1 - mmr_lambda) * redundancy

        pick = max(pool, key=marginal)
        pool.remove(pick)
        if any(pick.text in c.text or c.text in pick.text for c in chosen):
            continue
        if any(float(np.dot(pick.vector, c.vector)) > 0.92 for c in chosen):
            continue  # a near-duplicate (chunk overlap or restatement)
        floor = RELATIVE_CUTOFF if len(chosen) >= min_sentences else RELATIVE_CUTOFF - 0.15
        if pick.score < best * floor:
            break
        chosen.append(pick)
    return chosen


def bm25_idf(idf: Mapping[str, float]) -> dict[str, float]:
    """Non-negative IDF weights (rank-bm25 may give common terms negative IDF)."""
    return {t: max(v, 0.0) for t, v in idf.items() if not math.isnan(v)}


class ExtractiveAnswerer:
    """Chooses sentences; the chain turns them into a cited answer."""

    name = "extractive"

    def __init__(self, settings: AnswerSettings, synonyms: SynonymTable, idf: Mapping[str, float]):
        self.settings = settings
        self.synonyms = synonyms
        self.idf = bm25_idf(idf)

    def select(
        self, query: Query, hits: Sequence[Hit], sentence_vectors: Sequence[np.ndarray]
    ) -> list[Candidate]:
        terms = term_alternatives(query.text, self.synonyms)
        candidates = candidates_from(query, hits, sentence_vectors, terms, self.idf)
        return select_mmr(
            candidates, self.settings.max_sentences, self.settings.min_sentences, self.settings.mmr_lambda
        )
