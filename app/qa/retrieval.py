"""Hybrid retrieval: dense (FAISS) and BM25, fused by reciprocal rank, then reranked."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from rank_bm25 import BM25Okapi

from app.qa.lexical import SynonymTable, default_synonyms, tokenize
from indexer.chunking import Chunk
from indexer.embeddings import EmbeddingModel
from indexer.settings import RetrievalSettings
from indexer.store import LoadedIndex

log = logging.getLogger(__name__)


@dataclass
class Hit:
    """A retrieved chunk with the scores that put it there."""

    row: int
    chunk: Chunk
    score: float = 0.0
    dense: float | None = None
    bm25: float | None = None
    dense_rank: int | None = None
    bm25_rank: int | None = None


@dataclass
class Query:
    """A question prepared once for every stage: text, expansions, tokens, vector."""

    text: str
    expansions: list[str]
    tokens: list[str]
    vector: np.ndarray | None = None
    terms: list[str] = field(default_factory=list)

    @property
    def expanded_text(self) -> str:
        return f"{self.text} ({', '.join(self.expansions)})" if self.expansions else self.text


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[int]], weights: Sequence[float], k: int
) -> dict[int, float]:
    """Fuse ranked lists of row ids: ``sum(w / (k + rank))`` with ranks starting at 1."""
    fused: dict[int, float] = {}
    for ranking, weight in zip(rankings, weights, strict=True):
        for rank, row in enumerate(ranking, start=1):
            fused[row] = fused.get(row, 0.0) + weight / (k + rank)
    return fused


class Reranker(Protocol):
    """A second-stage ranker (e.g. a cross-encoder where a deployment has one)."""

    def rerank(self, query: Query, hits: list[Hit]) -> list[Hit]: ...


class KeepOrder:
    """The default reranker: fusion order is final (no offline cross-encoder exists here)."""

    def rerank(self, query: Query, hits: list[Hit]) -> list[Hit]:
        return hits


class HybridRetriever:
    """Dense + BM25 over one loaded index; build once, query many times."""

    def __init__(
        self,
        index: LoadedIndex,
        model: EmbeddingModel,
        settings: RetrievalSettings,
        synonyms: SynonymTable | None = None,
        reranker: Reranker | None = None,
    ) -> None:
        self.index = index
        self.model = model
        self.settings = settings
        self.synonyms = synonyms or default_synonyms()
        self.reranker = reranker or KeepOrder()
        corpus_tokens = [tokenize(f"{c.section} {c.text}") for c in index.chunks]
        self.bm25 = BM25Okapi(corpus_tokens)
        self.vocabulary = {t for tokens in corpus_tokens for t in tokens}

    def prepare(self, text: str) -> Query:
        expansions = self.synonyms.expansions(text)
        tokens = tokenize(text) + [t for e in expansions for t in tokenize(e)]
        query = Query(text=text, expansions=expansions, tokens=tokens)
        if self.settings.mode != "bm25":
            query.vector = self.model.embed_query(query.expanded_text)
        return query

    def dense_ranking(self, query: Query) -> tuple[list[int], dict[int, float]]:
        if query.vector is None:
            return [], {}
        k = min(self.settings.dense_k, len(self.index.chunks))
        scores, rows = self.index.vectors.search(query.vector[None, :].astype(np.float32), k)
        ranking = [int(r) for r in rows[0] if r >= 0]
        return ranking, {
            int(r): float(s) for r, s in zip(rows[0], scores[0], strict=True) if r >= 0
        }

    def bm25_ranking(self, query: Query) -> tuple[list[int], dict[int, float]]:
        if not query.tokens:
            return [], {}
        scores = self.bm25.get_scores(query.tokens)
        k = min(self.settings.bm25_k, len(scores))
        top = np.argsort(-scores, kind="stable")[:k]
        ranking = [int(r) for r in top if scores[r] > 0]
        return ranking, {r: float(scores[r]) for r in ranking}

    def retrieve(self, query: Query, k: int | None = None) -> list[Hit]:
        """The ``k`` best chunks for a prepared query."""
        k = k or self.settings.k
        mode = self.settings.mode
        dense, dense_scores = self.dense_ranking(query) if mode != "bm25" else ([], {})
        lexical, bm25_scores = self.bm25_ranking(query) if mode != "dense" else ([], {})
        fused = reciprocal_rank_fusion(
            [dense, lexical],
            [self.settings.dense_weight, self.settings.bm25_weight],
            self.settings.rrf_k,
        )
        dense_rank = {row: i for i, row in enumerate(dense, start=1)}
        bm25_rank = {row: i for i, row in enumerate(lexical, start=1)}
        ordered = sorted(fused, key=lambda row: (-fused[row], row))
        # each retriever's very best is kept: a rare exact term (a trial's name) that only
        # BM25 sees, or a paraphrase only the dense search sees, must not be fused away
        reserved = list(dict.fromkeys(r[0] for r in (lexical, dense) if r))[:k]
        ordered = list(dict.fromkeys([*ordered[: max(k - len(reserved), 0)], *reserved, *ordered]))
        hits = [
            Hit(
                row=row,
                chunk=self.index.chunks[row],
                score=fused[row],
                dense=dense_scores.get(row),
                bm25=bm25_scores.get(row),
                dense_rank=dense_rank.get(row),
                bm25_rank=bm25_rank.get(row),
            )
            for row in ordered
        ]
        return self.reranker.rerank(query, hits)[:k]
