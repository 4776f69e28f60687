"""Score one answer against its question, and summarise a run into metrics.

``score_answer`` turns an ``Answer`` into a :class:`QuestionResult` (every
verdict and every reason it fails); ``summarise`` turns a list of them into the
metrics of one configuration. Both are deterministic given the judge.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from app.qa.schema import Answer
from evals.judge import SupportJudge
from evals.metrics import (
    SentenceVerdict,
    abstention_scores,
    citation_precision,
    citation_problems,
    citation_recall,
    claim_sentences,
    coverage_at_k,
    judge_sentences,
    mean,
    missing_key_facts,
    percentile,
    recall_at_k,
    reciprocal_rank,
    ungrounded_numbers,
)
from evals.questions_io import Question

#: Failure kinds, worst first, with the weight each adds (once) to a question's severity.
SEVERITY: dict[str, int] = {
    "error": 8,
    "ungrounded_number": 6,
    "invalid_citations": 6,
    "answered_out_of_scope": 5,
    "false_abstention": 4,
    "missing_key_fact": 3,
    "retrieval_miss": 2,
    "unsupported_sentence": 2,
    "uncited_sentence": 1,
}

#: Metrics that are shares in [0, 1] (plotted together); the rest are counts or seconds.
RATE_METRICS = (
    "recall@k",
    "coverage@k",
    "mrr",
    "key_fact_accuracy",
    "citation_validity",
    "citation_recall",
    "citation_precision",
    "numbers_grounded",
    "abstention_precision",
    "abstention_recall",
    "false_abstention_rate",
)


@dataclass
class Failure:
    kind: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}"


@dataclass
class QuestionResult:
    """Everything measured for one question under one configuration."""

    id: str
    question: str
    in_scope: bool
    gold_sources: list[str]
    answer: str
    abstained: bool
    reason: str | None
    citations: list[dict[str, Any]]
    retrieved_sources: list[str]
    best_score: float | None
    seconds: float
    recall: float | None = None
    coverage: float | None = None
    reciprocal_rank: float | None = None
    key_facts_ok: bool | None = None
    missing_key_facts: list[Any] = field(default_factory=list)
    citation_problems: list[str] = field(default_factory=list)
    ungrounded_numbers: list[dict[str, Any]] = field(default_factory=list)
    n_claims: int = 0
    citation_recall: float | None = None
    citation_precision: float | None = None
    verdicts: list[dict[str, Any]] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def severity(self) -> int:
        """Sum of the weights of the kinds of failure (each kind counted once)."""
        return sum(SEVERITY.get(kind, 1) for kind in {f.kind for f in self.failures})

    @property
    def citations_valid(self) -> bool:
        return not self.citation_problems

    @property
    def numbers_ok(self) -> bool:
        return not self.ungrounded_numbers

    def to_dict(self) -> dict[str, Any]:
        row = asdict(self)
        row["failures"] = [str(f) for f in self.failures]
        row["severity"] = self.severity
        return row


def _verdict_dict(v: SentenceVerdict) -> dict[str, Any]:
    return {
        "sentence": v.sentence,
        "cites": list(v.cites),
        "supported": v.supported,
        "score": v.score,
        "reason": v.reason,
        "relevant": {str(n): flag for n, flag in v.relevant.items()},
    }


def _fact_text(item: Any) -> str:
    return item if isinstance(item, str) else " | ".join(item)


def score_answer(
    question: Question, answer: Answer, seconds: float, judge: SupportJudge, k: int
) -> QuestionResult:
    """Measure one answer: retrieval, key facts, citations, numbers, support, abstention."""
    retrieved = [str(s) for s in answer.meta.get("retrieved_sources", [])]
    best = answer.meta.get("best_score")
    result = QuestionResult(
        id=question.id,
        question=question.question,
        in_scope=question.in_scope,
        gold_sources=list(question.gold_sources),
        answer=answer.answer,
        abstained=answer.abstained,
        reason=answer.reason,
        citations=[c.model_dump(mode="json", exclude={"highlights"}) for c in answer.citations],
        retrieved_sources=retrieved,
        best_score=float(best) if best is not None else None,
        seconds=seconds,
        extra=dict(question.extra),
    )
    fail = result.failures.append

    if question.gold_sources:
        result.recall = recall_at_k(retrieved, question.gold_sources, k)
        result.coverage = coverage_at_k(retrieved, question.gold_sources, k)
        result.reciprocal_rank = reciprocal_rank(retrieved, question.gold_sources)
        if result.recall == 0.0:
            top = ", ".join(dict.fromkeys(retrieved[:k])) or "nothing"
            gold = ", ".join(question.gold_sources)
            fail(Failure("retrieval_miss", f"no gold source ({gold}) in the top {k}; got {top}"))

    if question.in_scope:
        if answer.abstained:
            result.missing_key_facts = list(question.must_contain)
            result.key_facts_ok = False
            fail(
                Failure("false_abstention", f"abstained ({answer.reason}) on an in-scope question")
            )
        else:
            result.missing_key_facts = missing_key_facts(answer.answer, question.must_contain)
            result.key_facts_ok = not result.missing_key_facts
            if result.missing_key_facts:
                missing = "; ".join(_fact_text(m) for m in result.missing_key_facts)
                fail(Failure("missing_key_fact", f"answer lacks {missing}"))
    elif not answer.abstained:
        fail(Failure("answered_out_of_scope", "answered a question it should abstain on"))

    result.citation_problems = citation_problems(answer.answer, [c.n for c in answer.citations])
    if result.citation_problems:
        fail(Failure("invalid_citations", "; ".join(result.citation_problems)))

    passages = {c.n: c.passage for c in answer.citations}
    sentences = claim_sentences(answer.answer, answer.abstained)
    result.n_claims = len(sentences)
    for sentence, numbers in ungrounded_numbers(sentences, passages):
        result.ungrounded_numbers.append({"sentence": sentence, "numbers": numbers})
        fail(Failure("ungrounded_number", f"{numbers} not in the cited passage: {sentence[:90]}"))

    verdicts = judge_sentences(sentences, passages, judge)
    result.verdicts = [_verdict_dict(v) for v in verdicts]
    result.citation_recall = citation_recall(verdicts)
    result.citation_precision = citation_precision(verdicts)
    for v in verdicts:
        if not v.cites:
            fail(Failure("uncited_sentence", f"no [n] marker: {v.sentence[:90]}"))
        elif not v.supported:
            fail(Failure("unsupported_sentence", f"{v.reason}: {v.sentence[:90]}"))
    return result


def error_result(question: Question, message: str, seconds: float) -> QuestionResult:
    """The row of a question the chain refused with a user error (e.g. too long)."""
    result = QuestionResult(
        id=question.id,
        question=question.question,
        in_scope=question.in_scope,
        gold_sources=list(question.gold_sources),
        answer="",
        abstained=False,
        reason=None,
        citations=[],
        retrieved_sources=[],
        best_score=None,
        seconds=seconds,
        key_facts_ok=False if question.in_scope else None,
        missing_key_facts=list(question.must_contain) if question.in_scope else [],
        extra=dict(question.extra),
    )
    if question.gold_sources:
        result.recall, result.coverage, result.reciprocal_rank = 0.0, 0.0, 0.0
    result.failures.append(Failure("error", message))
    return result


def _share(flags: Sequence[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def summarise(results: Sequence[QuestionResult], k: int) -> dict[str, Any]:
    """The metrics of one configuration from its per-question results.

    Denominators: retrieval metrics over questions with gold sources; key-fact
    accuracy over in-scope questions (an abstention misses every fact);
    citation validity over all answers; numbers grounded and citation
    recall/precision over answers that state something (plain refusals excluded).
    """
    if not results:
        raise ValueError("no results to summarise")
    with_gold = [r for r in results if r.gold_sources]
    in_scope = [r for r in results if r.in_scope]
    stating = [r for r in results if r.n_claims]
    abstention = abstention_scores((r.in_scope, r.abstained) for r in results)
    seconds = [r.seconds for r in results]
    return {
        "n_questions": len(results),
        "n_in_scope": len(in_scope),
        "n_out_of_scope": len(results) - len(in_scope),
        "k": k,
        "recall@k": mean(r.recall for r in with_gold),
        "coverage@k": mean(r.coverage for r in with_gold),
        "mrr": mean(r.reciprocal_rank for r in with_gold),
        "key_fact_accuracy": _share([bool(r.key_facts_ok) for r in in_scope]),
        "citation_validity": _share([r.citations_valid for r in results]),
        "citation_recall": mean(r.citation_recall for r in stating),
        "citation_precision": mean(r.citation_precision for r in stating),
        "numbers_grounded": _share([r.numbers_ok for r in stating]),
        "abstention_precision": abstention.precision,
        "abstention_recall": abstention.recall,
        "false_abstention_rate": abstention.false_abstention_rate,
        "latency_p50_s": percentile(seconds, 50),
        "latency_p95_s": percentile(seconds, 95),
        "latency_mean_s": sum(seconds) / len(seconds),
    }


def worst(results: Sequence[QuestionResult], n: int) -> list[QuestionResult]:
    """The ``n`` failing questions with the highest severity.

    Ties go to the question missing more key facts, then to file order.
    """
    failing = [r for r in results if r.failures]
    return sorted(failing, key=lambda r: (-r.severity, -len(r.missing_key_facts)))[:n]
