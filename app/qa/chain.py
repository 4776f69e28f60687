"""The retrieval chain: validate -> condense -> retrieve -> answer -> verify -> cite.

Built from LangChain runnables so a stage can be swapped or traced; the
extractive answerer is the default, an LLM answerer plugs in by settings.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from langchain_core.runnables import Runnable, RunnableLambda

from app.qa.attribution import citation_units
from app.qa.extractive import ExtractiveAnswerer, assess_support
from app.qa.lexical import default_synonyms
from app.qa.llm import build_messages, build_rewrite_messages, llm_failure
from app.qa.policy import (
    GENERAL_GUIDANCE_INTRO,
    NOT_REPORTED_INTRO,
    PERSONAL_ADVICE,
    REASON_INSUFFICIENT,
    REASON_NOT_REPORTED,
    REASON_PATIENT_SPECIFIC,
    REASON_UNVERIFIED,
    REFUSAL,
)
from app.qa.retrieval import Hit, HybridRetriever, Query
from app.qa.schema import Answer, Citation, Message
from app.qa.scope import condense, is_follow_up, is_patient_specific
from app.qa.verify import DraftSentence, parse_cited_sentences, render, renumber, verify
from indexer.embeddings import EmbeddingModel, load_embedding_model
from indexer.errors import MyoQAError
from indexer.settings import Settings
from indexer.store import LoadedIndex, load_index
from indexer.text import sentence_spans, split_sentences

log = logging.getLogger(__name__)


def validate_question(question: object, limit: int) -> str:
    """The question, stripped; an empty or over-long one is a user error."""
    if not isinstance(question, str) or not question.strip():
        raise MyoQAError("Please type a question.")
    if len(question) > limit:
        raise MyoQAError(
            f"The question is {len(question)} characters long; the limit is {limit}. "
            "Please shorten it."
        )
    return question.strip()


class QAChain:
    """Answers questions from one loaded index. Build once; ``ask`` many times."""

    def __init__(
        self,
        settings: Settings,
        index: LoadedIndex,
        model: EmbeddingModel,
        llm: Any | None = None,
    ) -> None:
        self.settings = settings
        self.index = index
        self.model = model
        self.synonyms = default_synonyms()
        self.retriever = HybridRetriever(index, model, settings.retrieval, self.synonyms)
        self.extractive = ExtractiveAnswerer(
            settings.answer,
            self.synonyms,
            self.retriever.bm25.idf,
            is_common_word=lambda word: model.count_tokens(word) == 1,
        )
        self.llm = llm
        self._sentence_matrix = index.all_sentence_vectors()
        self._offsets = index.sentence_offsets()
        self.runnable: Runnable[dict[str, Any], Answer] = (
            RunnableLambda(self._prepare)
            | RunnableLambda(self._retrieve)
            | RunnableLambda(self._answer)
        )

    # --- public -------------------------------------------------------------------

    @property
    def info(self) -> dict[str, Any]:
        mode = "extractive"
        if self.llm is not None:
            mode = f"llm:{getattr(self.llm, 'model_name', None) or getattr(self.llm, 'model', None) or type(self.llm).__name__}"
        return {
            "mode": mode,
            "n_chunks": len(self.index.chunks),
            "n_sources": len(self.index.manifest.sources),
            "index_built_at": self.index.manifest.built_at,
            "embedding_model": self.index.manifest.identity["embedding_model"],
            "retrieval": self.settings.retrieval.mode,
        }

    def validate(self, question: str) -> str:
        """The question, stripped; an empty or over-long one is a user error."""
        return validate_question(question, self.settings.answer.max_question_chars)

    def ask(self, question: str, history: Sequence[Message] | None = None) -> Answer:
        return self.runnable.invoke({"question": question, "history": list(history or [])})

    def stream(
        self, question: str, history: Sequence[Message] | None = None
    ) -> Iterator[str | Answer]:
        """Yield the answer text in pieces (tokens for a streaming LLM), then the Answer.

        The final ``Answer`` is the verified one; a UI shows it in place of the pieces.
        """
        state = self._retrieve(
            self._prepare({"question": question, "history": list(history or [])})
        )
        if self.llm is not None and not state["patient_specific"]:
            pieces: list[str] = []
            for piece in self._llm_stream(state):
                pieces.append(piece)
                yield piece
            state["llm_text"] = "".join(pieces)
            yield self._answer(state)
            return
        answer = self._answer(state)
        cursor = 0
        for _, end in sentence_spans(answer.answer):
            yield answer.answer[cursor:end]
            cursor = end
        if cursor < len(answer.answer):
            yield answer.answer[cursor:]
        yield answer

    # --- stages -------------------------------------------------------------------

    def _prepare(self, state: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        question = self.validate(state["question"])
        history = state.get("history") or []
        if self.llm is not None and history and is_follow_up(question):
            search_text = self._llm_rewrite(question, history)
        else:
            search_text = condense(question, history, self.retriever.vocabulary)
        query = self.retriever.prepare(search_text)
        if query.vector is None:  # BM25-only retrieval still scores sentences semantically
            query.vector = self.model.embed_query(query.expanded_text)
        return {
            "question": question,
            "query": query,
            "patient_specific": is_patient_specific(question),
            "started": started,
        }

    def _retrieve(self, state: dict[str, Any]) -> dict[str, Any]:
        state["hits"] = self.retriever.retrieve(state["query"])
        return state

    def _sentence_vectors(self, hits: Sequence[Hit]) -> list[np.ndarray]:
        return [
            self._sentence_matrix[
                self._offsets[h.row] : self._offsets[h.row] + len(h.chunk.sentences)
            ]
            for h in hits
        ]

    def _answer(self, state: dict[str, Any]) -> Answer:
        query: Query = state["query"]
        hits: list[Hit] = state["hits"]
        meta: dict[str, Any] = {
            "query": query.text,
            "retrieved": [h.chunk.chunk_id for h in hits],
            "retrieved_sources": [h.chunk.source_id for h in hits],
        }
        terms = self.extractive.terms(query.text)
        picked = (
            self.extractive.select(query, terms, hits, self._sentence_vectors(hits)) if hits else []
        )
        support = assess_support(
            state["question"],
            terms,
            picked,
            self.settings.answer.abstain_threshold,
            self.settings.answer.min_coverage,
        )
        meta["best_score"] = round(picked[0].score, 4) if picked else 0.0
        meta["coverage"] = round(support.coverage, 4)
        meta["support"] = support.why or "supported"

        if state["patient_specific"]:
            general = support.supported
            answer = self._cited(
                [DraftSentence(c.text, (c.hit_position,)) for c in picked] if general else [],
                hits,
                meta,
                prefix=PERSONAL_ADVICE + (f" {GENERAL_GUIDANCE_INTRO}" if general else ""),
            )
            answer.abstained, answer.reason = True, REASON_PATIENT_SPECIFIC
        elif support.not_reported is not None:
            found = support.not_reported
            answer = self._cited(
                [DraftSentence(found.text, (found.hit_position,))],
                hits,
                meta,
                prefix=f"{REFUSAL} {NOT_REPORTED_INTRO}",
            )
            answer.abstained, answer.reason = True, REASON_NOT_REPORTED
        elif not support.supported:
            refusal = REFUSAL
            if support.unknown_terms:
                refusal += f" It does not mention {', '.join(support.unknown_terms)}."
            answer = Answer(answer=refusal, abstained=True, reason=REASON_INSUFFICIENT, meta=meta)
        elif self.llm is not None:
            text: str = state.get("llm_text") or self._llm_invoke(state)
            meta["llm_raw"] = text
            evidence = {i + 1: h.chunk.text for i, h in enumerate(hits)}
            checked = verify(parse_cited_sentences(text), evidence)
            meta["removed"] = checked.removed
            drafts = [DraftSentence(s.text, tuple(n - 1 for n in s.cites)) for s in checked.kept]
            if drafts and not text.strip().startswith(REFUSAL):
                answer = self._cited(drafts, hits, meta)
            else:
                answer = Answer(answer=REFUSAL, abstained=True, reason=REASON_UNVERIFIED, meta=meta)
        else:
            drafts = [DraftSentence(c.text, (c.hit_position,)) for c in picked]
            # extractive sentences are copied, so verification can only fail on a bug
            evidence = {i: h.chunk.text for i, h in enumerate(hits)}
            checked = verify(drafts, evidence)
            meta["removed"] = checked.removed
            answer = self._cited(checked.kept, hits, meta)
            if not answer.citations:
                answer = Answer(
                    answer=REFUSAL, abstained=True, reason=REASON_INSUFFICIENT, meta=meta
                )
        answer.meta["seconds"] = round(time.perf_counter() - state["started"], 4)
        return answer

    def _cited(
        self,
        drafts: Sequence[DraftSentence],
        hits: Sequence[Hit],
        meta: dict[str, Any],
        prefix: str = "",
    ) -> Answer:
        """Number the cited passages in order of first use and attach their records.

        A passage of a digest is cited once per primary reference of the sentences
        quoted from it, and the citation names that reference (see ``attribution``).
        A quoted pair of sentences is cited sentence by sentence, so each sentence
        names its own paper (the rendered text is the same either way).
        """
        drafts = [
            DraftSentence(sentence, d.cites)
            for d in drafts
            for sentence in (split_sentences(d.text.strip()) or [d.text])
        ]
        per_sentence, units = citation_units(
            [(d.text, d.cites) for d in drafts],
            lambda key: hits[key].chunk,
            lambda ref: self.index.reference(ref) is not None,
        )
        split = [DraftSentence(d.text, u) for d, u in zip(drafts, per_sentence, strict=True)]
        numbered, order = renumber(split)
        citations = []
        for n, unit in enumerate(order, start=1):
            key, ref_key, ref_keys = units[unit]
            chunk = hits[key].chunk
            record = self.index.source(chunk.source_id)
            highlights = [d.text for d in split if unit in d.cites]
            quoted_pages = [chunk.pages_of(h) for h in highlights]
            first = [a for a, _ in quoted_pages if a is not None]
            last = [b for _, b in quoted_pages if b is not None]
            ref = self.index.reference(ref_key) if ref_key else None
            named = (
                {
                    "title": ref.title or record.title,
                    "authors": ref.authors,
                    "journal": ref.journal_line(),
                    "year": ref.year,
                    "doi": ref.doi,
                    "pmid": ref.pmid,
                    "pmcid": ref.pmcid,
                    "url": ref.url,
                    "digest_title": record.title,
                }
                if ref is not None
                else {
                    "title": record.title,
                    "authors": record.authors,
                    "journal": record.journal,
                    "year": record.year,
                    "doi": record.doi,
                    "pmid": record.pmid,
                    "pmcid": record.pmcid,
                    "url": record.url,
                }
            )
            citations.append(
                Citation(
                    n=n,
                    source_id=chunk.source_id,
                    section=chunk.section,
                    page=min(first) if first else chunk.page_start,
                    page_end=max(last) if last else chunk.page_end,
                    chunk_id=chunk.chunk_id,
                    passage=chunk.text,
                    highlights=[h for h in highlights if h in chunk.text],
                    reference_key=ref_key,
                    reference_keys=list(ref_keys),
                    **named,
                )
            )
        body = render(numbered)
        text = f"{prefix} {body}".strip() if prefix else body
        return Answer(answer=text, citations=citations, abstained=False, reason=None, meta=meta)

    # --- LLM ----------------------------------------------------------------------

    def _llm_messages(self, state: dict[str, Any]) -> list[tuple[str, str]]:
        return build_messages(state["query"].text, [h.chunk for h in state["hits"]], self.index)

    def _llm_invoke(self, state: dict[str, Any]) -> str:
        assert self.llm is not None
        try:
            result = self.llm.invoke(self._llm_messages(state))
        except Exception as exc:  # any provider/network failure is the user's to fix
            raise llm_failure(exc) from exc
        return str(getattr(result, "content", result))

    def _llm_stream(self, state: dict[str, Any]) -> Iterator[str]:
        assert self.llm is not None
        try:
            for piece in self.llm.stream(self._llm_messages(state)):
                yield str(getattr(piece, "content", piece))
        except Exception as exc:
            raise llm_failure(exc) from exc

    def _llm_rewrite(self, question: str, history: Sequence[Message]) -> str:
        """Let the model turn a follow-up into a standalone question (LLM mode)."""
        assert self.llm is not None
        try:
            result = self.llm.invoke(build_rewrite_messages(question, history))
        except Exception as exc:
            raise llm_failure(exc) from exc
        rewritten = str(getattr(result, "content", result)).strip().splitlines()
        standalone = rewritten[0].strip() if rewritten else ""
        if not standalone or len(standalone) > self.settings.answer.max_question_chars:
            return condense(question, history, self.retriever.vocabulary)
        log.debug("Rewrote %r as %r", question, standalone)
        return standalone


def load_chain(
    settings: Settings,
    model: EmbeddingModel | None = None,
    llm: Any | None = None,
    index: LoadedIndex | None = None,
) -> QAChain:
    """Load the embedding model and the index (refusing one built with other settings).

    ``model``, ``llm`` and ``index`` may be passed in when the caller already has them.
    """
    if settings.embedding.query_threads:
        import torch

        torch.set_num_threads(settings.embedding.query_threads)
    model = model or load_embedding_model(settings.embedding)
    if index is None:
        index = load_index(
            settings.paths.index_dir, expected_identity=settings.index_identity(model.dim)
        )
    if llm is None and settings.answer.mode == "llm":
        from app.qa.llm import build_chat_model

        llm = build_chat_model(settings.llm)
    chain = QAChain(settings, index, model, llm=llm)
    log.info(
        "Loaded %s chunks from %s (%s)",
        len(index.chunks),
        settings.paths.index_dir,
        chain.info["mode"],
    )
    return chain
