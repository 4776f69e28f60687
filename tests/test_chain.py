"""The retrieval chain: tokenizer, fusion, verifier, citations, abstention, conversation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from langchain_core.language_models.fake_chat_models import FakeListChatModel

from app.cli.main import main
from app.qa.chain import QAChain, load_chain
from app.qa.lexical import default_synonyms, tokenize
from app.qa.policy import PERSONAL_ADVICE, REFUSAL
from app.qa.retrieval import reciprocal_rank_fusion
from app.qa.scope import condense, is_follow_up, is_patient_specific
from app.qa.verify import (
    DraftSentence,
    cited_numbers,
    parse_cited_sentences,
    render,
    renumber,
    verify,
)
from indexer.build import build_index
from indexer.embeddings import EmbeddingModel
from indexer.errors import MyoQAError
from indexer.settings import Settings
from indexer.store import load_index

# --- lexical -------------------------------------------------------------------------


def test_bm25_tokenizer_keeps_domain_tokens_whole() -> None:
    tokens = tokenize("Anti-MDA5 and anti-Jo-1 (PL-7) with IVIG 2 g/kg; score ≥5.5; CD19 CAR-T")
    for whole in ("anti-mda5", "anti-jo-1", "pl-7", "2g/kg", "≥5.5", "cd19", "car-t"):
        assert whole in tokens
    assert "mda5" in tokens and "jo-1" in tokens  # parts still match a bare "MDA5" query


@pytest.mark.parametrize("variant", ["TIF1γ", "TIF1-gamma", "TIF-1γ", "tif1 gamma", "TIF1Γ"])
def test_greek_letters_and_spelled_forms_meet(variant: str) -> None:
    assert "tif1gamma" in tokenize(f"anti-{variant} antibodies") or "tif1gamma" in tokenize(variant)


def test_synonym_table_expands_abbreviations_and_spellings() -> None:
    table = default_synonyms()
    assert "dermatomyositis" in table.expansions("How is DM treated?")
    assert "esophageal" in table.expansions("oesophageal dysmotility")
    assert "hemoperfusion" in table.expansions("polymyxin-B haemoperfusion")
    assert "inclusion body myositis" in table.expansions("sIBM prognosis")


def test_reciprocal_rank_fusion_rewards_agreement() -> None:
    fused = reciprocal_rank_fusion([[1, 2, 3], [3, 1, 4]], [1.0, 1.0], k=60)
    assert max(fused, key=fused.__getitem__) == 1
    assert fused[3] > fused[2] and fused[4] > 0


# --- verifier and citations -------------------------------------------------------------


def test_verifier_removes_a_sentence_whose_number_is_not_in_its_passage() -> None:
    evidence = {1: "In ProDERM, 78.7% responded with IVIG.", 2: "IVIG was given at 2 g/kg."}
    drafts = parse_cited_sentences(
        "In ProDERM, 78.7% responded [1]. IVIG was given at 1 g/kg [2]. Placebo was given [7]. "
        "Nothing cited here."
    )
    result = verify(drafts, evidence)
    assert [s.text for s in result.kept] == ["In ProDERM, 78.7% responded."]
    whys = [r["why"] for r in result.removed]
    assert whys[0] == "numbers not in cited passages: ['1']"
    assert "out of range" in whys[1] and whys[2] == "no citation"


def test_citation_after_the_period_belongs_to_its_sentence() -> None:
    drafts = parse_cited_sentences("First claim. [2] Second claim [1][3].")
    assert drafts == [DraftSentence("First claim.", (2,)), DraftSentence("Second claim.", (1, 3))]


@given(st.lists(st.lists(st.integers(0, 9), min_size=1, max_size=3), min_size=1, max_size=6))
def test_renumbered_citations_resolve_and_are_contiguous(cites: list[list[int]]) -> None:
    drafts = [DraftSentence(f"Claim {i} is stated.", tuple(c)) for i, c in enumerate(cites)]
    numbered, order = renumber(drafts)
    text = render(numbered)
    used = cited_numbers(text)
    assert set(used) == set(range(1, len(order) + 1))  # every [n] resolves, every source used
    first_use = list(dict.fromkeys(used))
    assert first_use == sorted(first_use)  # numbered in order of first use
    for sentence, original in zip(numbered, drafts, strict=True):
        assert [order[n - 1] for n in sentence.cites] == list(dict.fromkeys(original.cites))


# --- scope --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "question",
    [
        "My patient weighs 72 kg, what dose should I write?",
        "Will my mother go into remission?",
        "Should I stop my methotrexate?",
        "I have DM and am pregnant, is IVIG safe for me?",
    ],
)
def test_patient_specific_requests_are_recognised(question: str) -> None:
    assert is_patient_specific(question)


@pytest.mark.parametrize(
    "question",
    [
        "What prednisolone dose does the BSR guideline advise for adults?",
        "Is IVIG effective in DM?",
    ],
)
def test_general_questions_are_not_patient_specific(question: str) -> None:
    assert not is_patient_specific(question)


def test_follow_up_carries_the_previous_entities() -> None:
    history = [
        {"role": "user", "content": "How is dermatomyositis treated?"},
        {"role": "assistant", "content": "Glucocorticoids [1]."},
    ]
    vocabulary = set(tokenize("dermatomyositis treated children"))
    assert is_follow_up("and what about in children?")
    assert condense("and what about in children?", history, vocabulary) == (
        "and what about in children? dermatomyositis treated"
    )
    assert (
        condense("What is anti-HMGCR myopathy?", history, vocabulary)
        == "What is anti-HMGCR myopathy?"
    )


# --- chain wiring with fakes ------------------------------------------------------------------


@pytest.fixture
def fake_chain(tiny_settings: Settings, fake_model: EmbeddingModel) -> QAChain:
    build_index(tiny_settings, fake_model, progress=False)
    settings = tiny_settings.model_copy(
        update={"answer": tiny_settings.answer.model_copy(update={"abstain_threshold": 0.0})}
    )
    return QAChain(settings, load_index(settings.paths.index_dir), fake_model)


@pytest.mark.parametrize("question", ["", "   \n ", "x" * 1001])
def test_empty_or_overlong_questions_are_user_errors(fake_chain: QAChain, question: str) -> None:
    with pytest.raises(MyoQAError, match=r"type a question|limit is 1000"):
        fake_chain.ask(question)


def test_extractive_answer_cites_what_it_quotes(fake_chain: QAChain) -> None:
    answer = fake_chain.ask("ProDERM IVIG responders 78.7%")
    assert not answer.abstained and answer.citations
    assert set(cited_numbers(answer.answer)) == {c.n for c in answer.citations}
    for citation in answer.citations:
        assert citation.highlights and all(h in citation.passage for h in citation.highlights)
    contract = answer.contract()
    assert set(contract) == {"answer", "citations", "abstained", "reason"}
    assert {
        "n",
        "source_id",
        "title",
        "authors",
        "journal",
        "year",
        "doi",
        "pmid",
        "section",
        "page",
        "chunk_id",
        "passage",
    } <= set(contract["citations"][0])


def test_llm_answer_is_verified_and_renumbered(fake_chain: QAChain) -> None:
    fake_chain.llm = FakeListChatModel(
        responses=["Responders were 78.7% with IVIG [2]. The dose was 5 g/kg [2]. Made up [9]."]
    )
    hits = fake_chain.retriever.retrieve(fake_chain.retriever.prepare("ProDERM responders"))
    answer = fake_chain.ask("ProDERM responders")
    if "78.7" in hits[1].chunk.text:
        assert answer.answer == "Responders were 78.7% with IVIG [1]."
        assert answer.citations[0].chunk_id == hits[1].chunk.chunk_id
    removed = [r["why"] for r in answer.meta["removed"]]
    assert any("numbers not in cited passages" in w for w in removed)
    assert any("out of range" in w for w in removed)


def test_llm_answer_with_nothing_verified_abstains(fake_chain: QAChain) -> None:
    fake_chain.llm = FakeListChatModel(responses=["The response rate was 99% [1]."])
    answer = fake_chain.ask("ProDERM responders")
    assert answer.abstained and answer.answer == REFUSAL and answer.citations == []
    assert answer.reason == "unverified"


def test_llm_refusal_is_passed_through_as_abstention(fake_chain: QAChain) -> None:
    fake_chain.llm = FakeListChatModel(responses=[REFUSAL])
    assert fake_chain.ask("What is the capital of France?").abstained


def test_stream_yields_text_then_the_final_answer(fake_chain: QAChain) -> None:
    events = list(fake_chain.stream("ProDERM IVIG responders"))
    final = events[-1]
    assert not isinstance(final, str)
    assert "".join(e for e in events[:-1] if isinstance(e, str)) == final.answer


# --- CLI ---------------------------------------------------------------------------------------


def test_cli_rejects_empty_question_without_traceback(
    fake_chain: QAChain, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("app.qa.chain.load_chain", lambda settings: fake_chain)
    result = CliRunner().invoke(main, ["ask", "--json", "  "])
    assert result.exit_code != 0
    assert "Please type a question." in result.output and "Traceback" not in result.output


def test_cli_missing_index_says_how_to_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_model: EmbeddingModel
) -> None:
    monkeypatch.setattr("app.qa.chain.load_embedding_model", lambda settings: fake_model)
    result = CliRunner().invoke(
        main, ["ask", "--index-dir", str(tmp_path / "none"), "What is IBM?"]
    )
    assert result.exit_code == 1
    assert "myositis-qa index" in result.output


def test_cli_batch_writes_one_json_answer_per_line(
    fake_chain: QAChain, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr("app.qa.chain.load_chain", lambda settings: fake_chain)
    batch = tmp_path / "q.jsonl"
    batch.write_text(
        json.dumps({"id": "a", "question": "ProDERM responders", "extra": 1})
        + "\n"
        + json.dumps({"id": "b", "question": ""})
        + "\n"
    )
    result = CliRunner().invoke(main, ["ask", "--json", "--batch", str(batch)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert [r["id"] for r in rows] == ["a", "b"]
    assert set(rows[0]) == {"id", "answer", "citations", "abstained", "reason"}
    assert rows[1]["error"] == "Please type a question."


# --- real model, bundled corpus ------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_chain(bundled_index: Settings, real_model: EmbeddingModel) -> QAChain:
    return load_chain(bundled_index, model=real_model)


@pytest.mark.slow
def test_classification_question_cites_the_criteria(real_chain: QAChain) -> None:
    answer = real_chain.ask(
        "What total score means probable IIM under the 2017 EULAR/ACR criteria without a biopsy?"
    )
    assert not answer.abstained
    assert "5.5" in answer.answer
    assert "eular-acr-criteria" in {c.source_id for c in answer.citations}


@pytest.mark.slow
@pytest.mark.parametrize(
    "question",
    [
        "What is the best treatment for migraine?",
        "Which stocks should I buy this year?",
        "What is the MMR vaccination schedule for infants?",
    ],
)
def test_off_topic_questions_abstain(real_chain: QAChain, question: str) -> None:
    answer = real_chain.ask(question)
    assert answer.abstained and answer.answer.startswith(REFUSAL) and not answer.citations


@pytest.mark.slow
def test_patient_dosing_request_is_declined_with_cited_guidance(real_chain: QAChain) -> None:
    answer = real_chain.ask(
        "My patient weighs 72 kg and has new dermatomyositis, what prednisolone dose should I write?"
    )
    assert answer.abstained and answer.reason == "patient_specific"
    assert answer.answer.startswith(PERSONAL_ADVICE)
    assert answer.citations and "mg/kg" in answer.answer
    assert set(cited_numbers(answer.answer)) == {c.n for c in answer.citations}


@pytest.mark.slow
def test_follow_up_uses_the_history(real_chain: QAChain) -> None:
    history = [
        {"role": "user", "content": "How is dermatomyositis treated?"},
        {"role": "assistant", "content": "..."},
    ]
    answer = real_chain.ask("and what about in children?", history)
    assert not answer.abstained
    assert "juvenile-dm" in {c.source_id for c in answer.citations}


def test_llm_mode_rewrites_a_follow_up_with_the_model(fake_chain: QAChain) -> None:
    fake_chain.llm = FakeListChatModel(
        responses=["What were the ProDERM IVIG responder rates?", "Responders were 78.7% [1]."]
    )
    history = [
        {"role": "user", "content": "Tell me about ProDERM."},
        {"role": "assistant", "content": "ProDERM tested IVIG [1]."},
    ]
    answer = fake_chain.ask("and the responders?", history)
    assert answer.meta["query"] == "What were the ProDERM IVIG responder rates?"


def test_llm_failure_is_a_user_error(fake_chain: QAChain) -> None:
    class Broken(FakeListChatModel):
        def invoke(self, *args: object, **kwargs: object) -> object:  # type: ignore[override]
            raise ConnectionError("connection refused")

    fake_chain.llm = Broken(responses=["unused"])
    with pytest.raises(MyoQAError, match=r"language model did not answer.*MYOQA_LLM__BASE_URL"):
        fake_chain.ask("ProDERM responders")


def test_each_retrievers_best_passage_survives_fusion(fake_chain: QAChain) -> None:
    retriever = fake_chain.retriever
    query = retriever.prepare("Thromboembolic")
    lexical, _ = retriever.bm25_ranking(query)
    dense, _ = retriever.dense_ranking(query)
    rows = [hit.row for hit in retriever.retrieve(query, k=2)]
    assert lexical[0] in rows and dense[0] in rows


def test_a_single_passage_request_gets_exactly_one(fake_chain: QAChain) -> None:
    retriever = fake_chain.retriever
    query = retriever.prepare("Thromboembolic events with IVIG")
    hits = retriever.retrieve(query, k=1)
    assert len(hits) == 1
    assert hits[0].row == retriever.bm25_ranking(query)[0][0]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("What score defines probable IIM in the 2017 EULAR/ACR criteria without a biopsy?", "5.5"),
        (
            "Which patients need enhanced cancer screening under the IMACS guideline?",
            "moderate-risk",
        ),
        ("What were the main results of the ProDERM trial of IVIG?", "78.7%"),
    ],
)
def test_the_chats_example_questions_are_answered(
    real_chain: QAChain, question: str, expected: str
) -> None:
    answer = real_chain.ask(question)
    assert not answer.abstained and expected in answer.answer
