"""The default answerer: quotes the best-supported sentences of the evidence.

It scores every sentence of the retrieved passages against the question
(embedding similarity plus weighted coverage of the question's key terms),
picks the best with a diversity penalty (MMR) and cites each. It cannot state a
fact that is not in a cited passage because it only copies sentences.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from app.lexical import SynonymTable, tokenize, words
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


@dataclass(frozen=True)
class Term:
    """A key term of the question: the tokens that count as mentioning it, and its weight."""

    alternatives: frozenset[str]
    weight: float


#: weight of a question word the literature never uses but that is ordinary English
COMMON_UNKNOWN_WEIGHT = 1.0


def question_terms(
    question: str,
    synonyms: SynonymTable,
    idf: Mapping[str, float],
    is_common_word: Callable[[str], bool],
) -> list[Term]:
    """The question's key terms with IDF weights.

    A term the index never uses weighs as much as the rarest indexed term when it
    looks specific (a name, an acronym, a number, a word the tokenizer does not
    know whole) — a question about "Japan" or "HLA alleles" is not answered by a
    passage that merely shares its other words — and little when it is ordinary
    English ("roughly", "fraction").
    """
    rarest = max(idf.values(), default=1.0)
    original = {t.casefold(): t for t in re.findall(r"[\w-]+", question)}
    terms: list[Term] = []
    seen: set[str] = set()
    for word in words(question):
        forms = tokenize(word)
        if len(forms) > 1 and not any(f in idf for f in forms[:2]):
            forms = forms[2:]  # an unknown compound (male-to-female): its parts carry the meaning
        elif len(forms) > 1:
            forms = forms[:1]
        for token in forms:
            if token in seen:
                continue
            seen.add(token)
            alternatives = {token, *tokenize(word)[:2]} if token == tokenize(word)[0] else {token}
            for group in synonyms.token_groups:
                if token in group:
                    alternatives |= group
            known = [idf[t] for t in alternatives if t in idf]
            if known:
                weight = max(max(known), 0.5)
            else:
                raw = original.get(token, token)
                specific = (
                    raw[:1].isupper()
                    or any(ch.isdigit() for ch in token)
                    or not is_common_word(token)
                )
                weight = rarest if specific else COMMON_UNKNOWN_WEIGHT
            terms.append(Term(frozenset(alternatives), weight))
    return terms


def lexical_coverage(sentence_tokens: set[str], terms: Sequence[Term]) -> float:
    """Weighted share of the question's terms that the tokens mention (0..1)."""
    total = sum(t.weight for t in terms)
    if not total:
        return 0.0
    return sum(t.weight for t in terms if t.alternatives & sentence_tokens) / total


def candidates_from(
    query: Query,
    hits: Sequence[Hit],
    sentence_vectors: Sequence[np.ndarray],
    terms: Sequence[Term],
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
            lexical = lexical_coverage(set(tokenize(text)), terms)
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

    def __init__(
        self,
        settings: AnswerSettings,
        synonyms: SynonymTable,
        idf: Mapping[str, float],
        is_common_word: Callable[[str], bool],
    ):
        self.settings = settings
        self.synonyms = synonyms
        self.idf = bm25_idf(idf)
        self.is_common_word = is_common_word

    def terms(self, question: str) -> list[Term]:
        return question_terms(question, self.synonyms, self.idf, self.is_common_word)

    def select(
        self,
        query: Query,
        terms: Sequence[Term],
        hits: Sequence[Hit],
        sentence_vectors: Sequence[np.ndarray],
    ) -> list[Candidate]:
        candidates = candidates_from(query, hits, sentence_vectors, terms)
        return select_mmr(
            candidates,
            self.settings.max_sentences,
            self.settings.min_sentences,
            self.settings.mmr_lambda,
        )
