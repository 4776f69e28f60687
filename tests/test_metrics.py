"""Eval metrics: each pinned with hand-built answers, including the cases that must fail."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from app.qa.policy import GENERAL_GUIDANCE_INTRO, PERSONAL_ADVICE, REASON_PATIENT_SPECIFIC, REFUSAL
from app.qa.schema import Answer, Citation
from app.qa.verify import DraftSentence
from evals.gate import GATE, gate_failures
from evals.judge import SimilarityJudge, Support, content_words, lexical_support
from evals.metrics import (
    abstention_scores,
    citation_precision,
    citation_problems,
    citation_recall,
    claim_sentences,
    coverage_at_k,
    first_gold_rank,
    judge_sentences,
    key_facts_present,
    mean,
    missing_key_facts,
    numbers_grounded,
    percentile,
    recall_at_k,
    reciprocal_rank,
    ungrounded_numbers,
)
from evals.questions_io import Question
from evals.scoring import score_answer, summarise, worst

PRODERM = "In ProDERM, 78.7% (37/47) of IVIG-treated patients responded versus 43.8% (21/48) with placebo."
TIF1 = "Anti-TIF1γ is the autoantibody most strongly tied to cancer in adult dermatomyositis."


def citation(n: int, passage: str, source_id: str = "src") -> Citation:
    return Citation(n=n, source_id=source_id, title="T", chunk_id=f"c{n}", passage=passage)


def answer(text: str, passages: Sequence[str], **kwargs: Any) -> Answer:
    return Answer(
        answer=text, citations=[citation(i + 1, p) for i, p in enumerate(passages)], **kwargs
    )


class ContainsJudge:
    """A readable fake: supported when every word of the sentence occurs in the passages."""

    name = "contains"

    def settings(self) -> dict[str, Any]:
        return {"name": self.name}

    def judge(self, sentence: str, passages: Sequence[str]) -> Support:
        words = content_words(sentence)
        joined = content_words(" ".join(passages))
        ok = bool(passages) and words <= joined
        return Support(ok, 1.0 if ok else 0.0, "" if ok else "words missing")


# --- retrieval ------------------------------------------------------------------------------


def test_recall_at_k_counts_a_gold_source_only_within_k() -> None:
    retrieved = ["a", "b", "gold", "c"]
    assert recall_at_k(retrieved, {"gold"}, 3) == 1.0
    assert recall_at_k(retrieved, {"gold"}, 2) == 0.0
    assert recall_at_k([], {"gold"}, 5) == 0.0


def test_recall_needs_one_of_several_gold_sources_coverage_needs_all() -> None:
    retrieved = ["x", "g1", "y"]
    assert recall_at_k(retrieved, ["g1", "g2"], 5) == 1.0
    assert coverage_at_k(retrieved, ["g1", "g2"], 5) == 0.5
    assert coverage_at_k(retrieved, ["g1", "g1"], 5) == 1.0  # duplicates in gold do not dilute


def test_reciprocal_rank_is_one_over_the_first_gold_rank() -> None:
    assert reciprocal_rank(["gold", "x"], {"gold"}) == 1.0
    assert reciprocal_rank(["x", "y", "x", "gold", "gold"], {"gold"}) == 0.25
    assert reciprocal_rank(["x", "y"], {"gold"}) == 0.0
    assert first_gold_rank(["x", "y"], {"gold"}) is None


@pytest.mark.parametrize(
    "call", [lambda: recall_at_k(["a"], [], 5), lambda: recall_at_k(["a"], ["a"], 0)]
)
def test_retrieval_metrics_reject_meaningless_input(call: Any) -> None:
    with pytest.raises(ValueError):
        call()


# --- key facts ------------------------------------------------------------------------------


def test_key_facts_are_case_insensitive_with_alternatives() -> None:
    text = "Anti-MDA5 DM is linked to Rapidly Progressive ILD [1]."
    assert key_facts_present(text, ["mda5", ["interstitial lung", "rapidly progressive ild"]])
    assert missing_key_facts(text, ["mda5", ["cancer", "malignan"]]) == [["cancer", "malignan"]]


def test_every_key_fact_must_be_present() -> None:
    assert not key_facts_present("IVIG helps the skin [1].", ["skin", "muscle"])
    assert key_facts_present("anything", [])


def test_a_citation_marker_is_not_a_key_fact() -> None:
    assert not key_facts_present("The trial was positive [1].", ["1"])
    assert key_facts_present("Grade 1 rash [2].", ["1"])


def test_key_fact_matching_unifies_unicode_dashes_and_spaces() -> None:
    assert key_facts_present("About two\u2011thirds of  adults [1].", ["two-thirds of adults"])
    assert key_facts_present("TIF1\u03b3 positive", ["tif1γ"])


# --- citation validity ----------------------------------------------------------------------


def test_valid_citations_have_no_problems() -> None:
    assert citation_problems("A [1]. B [2][1]. C [1, 2].", [1, 2]) == []
    assert citation_problems(REFUSAL, []) == []


def test_a_dangling_marker_breaks_validity() -> None:
    problems = citation_problems("A [1]. B [3].", [1, 2])
    assert any("[3]" in p for p in problems)
    assert any("never cited" in p and "2" in p for p in problems)


def test_an_unused_citation_breaks_validity() -> None:
    assert citation_problems("A [1].", [1, 2]) == ["citations never cited in the text: [2]"]


def test_citations_must_be_numbered_one_to_n_without_repeats() -> None:
    assert any("expected [1, 2]" in p for p in citation_problems("A [1]. B [3].", [1, 3]))
    assert any("more than once" in p for p in citation_problems("A [1].", [1, 1]))


# --- claims and numbers ---------------------------------------------------------------------


def test_policy_wording_is_not_a_claim() -> None:
    text = f"{PERSONAL_ADVICE} {GENERAL_GUIDANCE_INTRO} Prednisolone 0.5–1 mg/kg/day is used [1]."
    sentences = claim_sentences(text, abstained=True)
    assert [s.cites for s in sentences] == [(1,)]
    assert claim_sentences(REFUSAL + " It does not mention xyz.", abstained=True) == []
    # in an answer, an uncited sentence is a claim
    assert [s.cites for s in claim_sentences("Cited [1]. Not cited.")] == [(1,), ()]


def test_numbers_in_the_cited_passage_are_grounded() -> None:
    sentences = claim_sentences("In ProDERM 78.7% responded versus 43.8% [1].")
    assert numbers_grounded(sentences, {1: PRODERM})


def test_a_number_absent_from_the_passage_breaks_numbers_grounded() -> None:
    sentences = claim_sentences("In ProDERM 85% responded [1].")
    assert not numbers_grounded(sentences, {1: PRODERM})
    assert ungrounded_numbers(sentences, {1: PRODERM}) == [("In ProDERM 85% responded.", ["85"])]


def test_numbers_must_be_in_the_passage_the_sentence_cites_not_another() -> None:
    sentences = claim_sentences("In ProDERM 78.7% responded [2]. TIF1 matters [1].")
    assert not numbers_grounded(sentences, {1: PRODERM, 2: TIF1})


def test_a_dangling_marker_grounds_no_number() -> None:
    assert not numbers_grounded(claim_sentences("78.7% responded [3]."), {1: PRODERM})


def test_citation_numbers_themselves_are_not_stated_numbers() -> None:
    assert numbers_grounded(claim_sentences("Anti-TIF1γ is tied to cancer [1]."), {1: TIF1})


# --- ALCE citation recall and precision -----------------------------------------------------


def test_citation_recall_uses_the_union_of_a_sentences_citations() -> None:
    sentence = DraftSentence("ProDERM IVIG responded and anti-TIF1γ tied to cancer.", (1, 2))
    verdicts = judge_sentences([sentence], {1: PRODERM, 2: TIF1}, ContainsJudge())
    assert verdicts[0].supported
    assert citation_recall(verdicts) == 1.0
    assert citation_precision(verdicts) == 1.0  # each citation is needed


def test_unsupported_or_uncited_sentences_lower_citation_recall() -> None:
    sentences = [
        DraftSentence("IVIG responded in ProDERM.", (1,)),
        DraftSentence("Rituximab cures myositis.", (1,)),
        DraftSentence("IVIG responded.", ()),
    ]
    verdicts = judge_sentences(sentences, {1: PRODERM}, ContainsJudge())
    assert [v.supported for v in verdicts] == [True, False, False]
    assert citation_recall(verdicts) == pytest.approx(1 / 3)
    assert citation_precision(verdicts) == 0.5  # the unsupported sentence's citation is irrelevant


def test_a_redundant_irrelevant_citation_lowers_precision_not_recall() -> None:
    sentence = DraftSentence("IVIG responded in ProDERM.", (1, 2))
    verdicts = judge_sentences([sentence], {1: PRODERM, 2: TIF1}, ContainsJudge())
    assert citation_recall(verdicts) == 1.0
    assert verdicts[0].relevant == {1: True, 2: False}
    assert citation_precision(verdicts) == 0.5


def test_citation_scores_are_none_when_there_is_nothing_to_score() -> None:
    assert citation_recall([]) is None
    assert citation_precision([]) is None


# --- support judge --------------------------------------------------------------------------


def test_lexical_support_is_the_share_of_content_words_found() -> None:
    assert lexical_support("IVIG-treated patients responded", [PRODERM]) == 1.0
    assert lexical_support("Rituximab patients responded", [PRODERM]) == pytest.approx(2 / 3)
    assert lexical_support("the of and", [PRODERM]) == 1.0


def test_lexical_judge_rejects_a_missing_number_even_with_full_overlap() -> None:
    judge = SimilarityJudge(embed=None)
    assert judge.judge("In ProDERM, 78.7% of IVIG-treated patients responded.", [PRODERM]).supported
    verdict = judge.judge("In ProDERM, 79.9% of IVIG-treated patients responded.", [PRODERM])
    assert not verdict.supported and "79.9" in verdict.reason
    assert not judge.judge("Rituximab cures myositis quickly.", [PRODERM]).supported
    assert not judge.judge("Anything.", []).supported


def test_embedding_judge_combines_lexical_and_best_sentence_cosine() -> None:
    vectors = {"alpha": [1.0, 0.0], "beta": [0.0, 1.0]}

    def embed(texts: Sequence[str]) -> np.ndarray:
        return np.array([vectors["alpha" if "alpha" in t else "beta"] for t in texts])

    judge = SimilarityJudge(embed=embed, threshold=0.6, lexical_weight=0.5)
    same = judge.judge("alpha word", ["Some beta text. The alpha word here."])
    assert same.supported and same.detail["semantic"] == 1.0
    other = judge.judge("alpha unrelated", ["Only beta text here."])
    assert not other.supported and other.detail["semantic"] == 0.0


def test_primed_vectors_are_not_embedded_again() -> None:
    calls: list[list[str]] = []

    def embed(texts: Sequence[str]) -> np.ndarray:
        calls.append(list(texts))
        return np.ones((len(texts), 2)) / np.sqrt(2)

    judge = SimilarityJudge(embed=embed)
    judge.prime(["Passage sentence one."], np.array([[1.0, 0.0]]))
    judge.judge("Question sentence.", ["Passage sentence one."])
    assert calls == [["Question sentence."]]


# --- abstention, latency --------------------------------------------------------------------


def test_abstention_precision_recall_and_false_abstention() -> None:
    # (in_scope, abstained): 2 of 3 out-of-scope abstained, 1 of 4 in-scope abstained
    outcomes = [(False, True), (False, True), (False, False), (True, True)] + [(True, False)] * 3
    scores = abstention_scores(outcomes)
    assert scores.recall == pytest.approx(2 / 3)
    assert scores.precision == pytest.approx(2 / 3)
    assert scores.false_abstention_rate == 0.25


def test_abstention_scores_are_none_when_undefined() -> None:
    scores = abstention_scores([(True, False)])
    assert (
        scores.precision is None and scores.recall is None and scores.false_abstention_rate == 0.0
    )


def test_percentile_interpolates_like_numpy() -> None:
    values = [0.5, 0.1, 0.3, 0.2, 0.4]
    for q in (0, 50, 95, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    with pytest.raises(ValueError):
        percentile([], 50)


def test_mean_skips_none() -> None:
    assert mean([1.0, None, 0.0]) == 0.5
    assert mean([None]) is None


# --- scoring a whole answer -----------------------------------------------------------------


def question(**kwargs: Any) -> Question:
    defaults: dict[str, Any] = {"id": "q1", "question": "?", "in_scope": True}
    return Question(**(defaults | kwargs))


def test_a_good_answer_has_no_failures() -> None:
    q = question(must_contain=[["78.7", "79%"]], gold_sources=["ivig"])
    a = answer(
        "In ProDERM, 78.7% (37/47) of IVIG-treated patients responded versus 43.8% (21/48) with placebo [1].",
        [PRODERM],
        meta={"retrieved_sources": ["x", "ivig"]},
    )
    result = score_answer(q, a, 0.01, SimilarityJudge(), k=5)
    assert result.failures == []
    assert result.recall == 1.0 and result.reciprocal_rank == 0.5 and result.key_facts_ok


def test_scoring_names_every_failure() -> None:
    q = question(must_contain=["placebo"], gold_sources=["ivig"])
    a = answer(
        "In ProDERM, 85% responded [1]. Extra [3].",
        [PRODERM],
        meta={"retrieved_sources": ["other"]},
    )
    kinds = {f.kind for f in score_answer(q, a, 0.01, SimilarityJudge(), k=5).failures}
    assert {"retrieval_miss", "missing_key_fact", "invalid_citations", "ungrounded_number"} <= kinds


def test_an_uncited_sentence_is_its_own_failure() -> None:
    a = answer(f"IVIG was studied. {PRODERM[:-1]} [1].", [PRODERM])
    result = score_answer(question(must_contain=["78.7"]), a, 0.01, SimilarityJudge(), k=5)
    assert [f.kind for f in result.failures] == ["uncited_sentence"]
    assert result.citation_recall == 0.5


def test_abstaining_in_scope_fails_key_facts_and_answering_out_of_scope_fails() -> None:
    judge = SimilarityJudge()
    refused = score_answer(question(), Answer(answer=REFUSAL, abstained=True), 0.01, judge, 5)
    assert refused.key_facts_ok is False
    assert [f.kind for f in refused.failures] == ["false_abstention"]
    answered = score_answer(
        question(in_scope=False), answer(f"{PRODERM[:-1]} [1].", [PRODERM]), 0.01, judge, 5
    )
    assert [f.kind for f in answered.failures] == ["answered_out_of_scope"]


def test_patient_specific_refusal_with_cited_guidance_counts_as_abstention() -> None:
    text = f"{PERSONAL_ADVICE} {GENERAL_GUIDANCE_INTRO} {PRODERM[:-1]} [1]."
    a = answer(text, [PRODERM], abstained=True, reason=REASON_PATIENT_SPECIFIC)
    result = score_answer(question(in_scope=False), a, 0.01, SimilarityJudge(), 5)
    assert result.failures == [] and result.n_claims == 1 and result.citation_recall == 1.0


def test_summary_denominators_and_gate() -> None:
    judge = SimilarityJudge()
    good = answer(f"{PRODERM[:-1]} [1].", [PRODERM], meta={"retrieved_sources": ["ivig"]})
    results = [
        score_answer(
            question(id="a", must_contain=["78.7"], gold_sources=["ivig"]), good, 0.1, judge, 5
        ),
        score_answer(
            question(id="b", in_scope=False), Answer(answer=REFUSAL, abstained=True), 0.3, judge, 5
        ),
    ]
    metrics = summarise(results, 5)
    assert metrics["key_fact_accuracy"] == 1.0 and metrics["recall@k"] == 1.0
    assert metrics["numbers_grounded"] == 1.0  # the refusal states nothing, so it is not counted
    assert metrics["abstention_recall"] == 1.0 and metrics["false_abstention_rate"] == 0.0
    assert metrics["latency_p50_s"] == pytest.approx(0.2)
    assert gate_failures(metrics) == []
    broken = dict(metrics, numbers_grounded=0.99, false_abstention_rate=None)
    assert len(gate_failures(broken)) == 2
    assert worst(results, 5) == []


def test_gate_holds_at_least_the_issue_thresholds() -> None:
    floors = {
        "recall@k": 0.9,
        "key_fact_accuracy": 0.85,
        "citation_validity": 1.0,
        "numbers_grounded": 1.0,
        "abstention_recall": 0.9,
    }
    gate = {t.metric: t for t in GATE}
    for metric, floor in floors.items():
        assert gate[metric].op == ">=" and gate[metric].value >= floor
    assert gate["false_abstention_rate"].op == "<=" and gate["false_abstention_rate"].value <= 0.05


def test_worst_ranks_scope_errors_above_uncited_sentences() -> None:
    judge = SimilarityJudge()
    uncited = answer(f"IVIG was studied. {PRODERM[:-1]} [1].", [PRODERM])
    results = [
        score_answer(question(id="uncited", must_contain=["78.7"]), uncited, 0.1, judge, 5),
        score_answer(
            question(id="fine", must_contain=["78.7"]),
            answer(f"{PRODERM[:-1]} [1].", [PRODERM]),
            0.1,
            judge,
            5,
        ),
        score_answer(question(id="answered", in_scope=False), uncited, 0.1, judge, 5),
    ]
    assert [r.id for r in worst(results, 5)] == ["answered", "uncited"]
    assert results[2].severity == 5 + 1  # each kind counted once
