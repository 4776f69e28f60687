"""Run a question set through one or more chain configurations and score every answer.

The embedding model and the index are loaded once; each configuration is a
``QAChain`` over them with its own settings (retrieval mode, answerer).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from app.qa.schema import QAService
from evals.judge import SimilarityJudge, SupportJudge
from evals.questions_io import Question
from evals.scoring import QuestionResult, error_result, score_answer, summarise
from indexer.embeddings import EmbeddingModel
from indexer.errors import MyoQAError
from indexer.settings import Settings
from indexer.store import LoadedIndex

log = logging.getLogger(__name__)

RETRIEVAL_CONFIGS = ("hybrid", "dense", "bm25")
LLM_CONFIG = "llm"


def default_config_names(settings: Settings) -> list[str]:
    """hybrid (the default) first, then dense and BM25, then the LLM answerer when configured."""
    names = list(RETRIEVAL_CONFIGS)
    if settings.llm.model:
        names.append(LLM_CONFIG)
    return names


def parse_config_names(text: str | None, settings: Settings) -> list[str]:
    """``"hybrid,bm25"`` -> names, checked; None -> :func:`default_config_names`."""
    if not text:
        return default_config_names(settings)
    names = list(dict.fromkeys(n.strip().lower() for n in text.split(",") if n.strip()))
    known = (*RETRIEVAL_CONFIGS, LLM_CONFIG)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise MyoQAError(f"Unknown configuration(s) {unknown}; choose from {', '.join(known)}.")
    if not names:
        raise MyoQAError("--configs names no configuration.")
    if LLM_CONFIG in names and not settings.llm.model:
        raise MyoQAError(
            "The llm configuration needs a model: set MYOQA_LLM__MODEL (and MYOQA_LLM__BASE_URL)."
        )
    return names


def config_settings(settings: Settings, name: str) -> Settings:
    """The settings of one configuration: a retrieval mode, or the LLM answerer over hybrid."""
    if name == LLM_CONFIG:
        return settings.model_copy(
            update={
                "retrieval": settings.retrieval.model_copy(update={"mode": "hybrid"}),
                "answer": settings.answer.model_copy(update={"mode": "llm"}),
            }
        )
    if name not in RETRIEVAL_CONFIGS:
        raise ValueError(f"unknown configuration {name!r}")
    return settings.model_copy(
        update={
            "retrieval": settings.retrieval.model_copy(update={"mode": name}),
            "answer": settings.answer.model_copy(update={"mode": "extractive"}),
        }
    )


def build_chains(
    settings: Settings, names: Sequence[str], model: EmbeddingModel, index: LoadedIndex
) -> dict[str, QAService]:
    """One chain per configuration, sharing the model and the index."""
    from app.qa.chain import QAChain

    chains: dict[str, QAService] = {}
    for name in names:
        llm = None
        if name == LLM_CONFIG:
            from app.qa.llm import build_chat_model

            llm = build_chat_model(settings.llm)
        chains[name] = QAChain(config_settings(settings, name), index, model, llm=llm)
    return chains


def prime_from_index(judge: SimilarityJudge, index: LoadedIndex) -> None:
    """Hand the judge the index's sentence vectors so it embeds only what is new."""
    matrix = index.all_sentence_vectors()
    for chunk, offset in zip(index.chunks, index.sentence_offsets(), strict=True):
        judge.prime(chunk.sentence_texts(), matrix[offset : offset + len(chunk.sentences)])


@dataclass
class ConfigRun:
    """The results of one configuration."""

    name: str
    info: dict[str, Any]
    metrics: dict[str, Any]
    results: list[QuestionResult]


@dataclass
class EvalRun:
    """A whole run: every configuration over one question file."""

    questions_file: str
    created: str
    k: int
    judge: dict[str, Any]
    index: dict[str, Any]
    configs: dict[str, ConfigRun] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def default(self) -> ConfigRun:
        """The first configuration run (hybrid unless --configs said otherwise)."""
        return next(iter(self.configs.values()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "questions_file": self.questions_file,
            "created": self.created,
            "k": self.k,
            "judge": self.judge,
            "index": self.index,
            "warnings": self.warnings,
            "configs": {
                name: {
                    "info": run.info,
                    "metrics": run.metrics,
                    "questions": [r.to_dict() for r in run.results],
                }
                for name, run in self.configs.items()
            },
        }


def unknown_gold_sources(questions: Sequence[Question], indexed: set[str]) -> dict[str, list[str]]:
    """Gold source ids the index does not hold, with the questions naming them."""
    out: dict[str, list[str]] = {}
    for q in questions:
        for source in q.gold_sources:
            if source not in indexed:
                out.setdefault(source, []).append(q.id)
    return out


def run_config(
    name: str,
    chain: QAService,
    questions: Sequence[Question],
    judge: SupportJudge,
    k: int,
    progress: bool = True,
) -> ConfigRun:
    """Ask every question (no history) and score each answer."""
    from tqdm import tqdm

    results: list[QuestionResult] = []
    for question in tqdm(questions, desc=name, unit="q", disable=not progress, leave=False):
        started = time.perf_counter()
        try:
            answer = chain.ask(question.question)
        except MyoQAError as exc:  # a question the chain rejects (too long, empty) is a failure
            log.warning("%s: %s", question.id, exc)
            results.append(error_result(question, str(exc), time.perf_counter() - started))
            continue
        seconds = time.perf_counter() - started
        results.append(score_answer(question, answer, seconds, judge, k))
    metrics = summarise(results, k)
    log.info(
        "%s: recall@%s %s, key facts %s",
        name,
        k,
        _fmt(metrics["recall@k"]),
        _fmt(metrics["key_fact_accuracy"]),
    )
    return ConfigRun(name=name, info=dict(chain.info), metrics=metrics, results=results)


def run_eval(
    questions: Sequence[Question],
    chains: Mapping[str, QAService],
    judge: SupportJudge,
    k: int = 5,
    *,
    questions_file: str = "",
    index_info: Mapping[str, Any] | None = None,
    indexed_sources: set[str] | None = None,
    progress: bool = True,
) -> EvalRun:
    """Run every configuration over the questions; the first chain is the default one."""
    if not chains:
        raise ValueError("no configuration to run")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    run = EvalRun(
        questions_file=questions_file,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        k=k,
        judge=judge.settings(),
        index=dict(index_info or {}),
    )
    if indexed_sources is not None:
        for source, ids in sorted(unknown_gold_sources(questions, indexed_sources).items()):
            message = f"gold source {source!r} is not in the index ({len(ids)} questions: {', '.join(ids[:5])}"
            run.warnings.append(message + (", ...)" if len(ids) > 5 else ")"))
            log.warning("%s", run.warnings[-1])
    for name, chain in chains.items():
        run.configs[name] = run_config(name, chain, questions, judge, k, progress)
    return run


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
