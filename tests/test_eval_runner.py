"""Eval plumbing: question files, configurations, the runner, reports, bench and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from app.qa.chain import QAChain
from evals.bench import run_bench, write_bench
from evals.cli import main
from evals.judge import SimilarityJudge
from evals.questions_io import QuestionFileError, load_questions, parse_questions
from evals.report import write_reports
from evals.runner import (
    build_chains,
    config_settings,
    parse_config_names,
    prime_from_index,
    run_eval,
)
from indexer.build import build_index
from indexer.embeddings import EmbeddingModel
from indexer.errors import MyoQAError
from indexer.settings import Settings
from indexer.store import load_index

ROOT = Path(__file__).resolve().parents[1]

GOOD = '{"id": "a", "question": "Q?", "in_scope": true, "must_contain": ["x", ["y", "z"]], "topic": "t"}'


# --- question files -------------------------------------------------------------------------


def test_unknown_fields_are_kept_aside_and_ignored() -> None:
    [q] = parse_questions([GOOD])
    assert q.must_contain == ["x", ["y", "z"]] and q.gold_sources == []
    assert q.extra == {"topic": "t"} and q.line == 1


def test_bad_lines_are_reported_with_their_line_numbers() -> None:
    lines = [
        GOOD,
        "",
        "{not json",
        '{"id": "b", "question": "Q?"}',
        '{"id": "c", "question": "Q?", "in_scope": true, "must_contain": [[]]}',
        GOOD,
        "[1, 2]",
    ]
    with pytest.raises(QuestionFileError) as caught:
        parse_questions(lines, name="dev.jsonl")
    message = str(caught.value)
    assert "dev.jsonl line 3: not valid JSON" in message
    assert "line 4: in_scope: Field required" in message
    assert "line 5: must_contain: Value error, item 0 is an empty list" in message
    assert "line 6: duplicate id 'a' (first on line 1)" in message
    assert "line 7: expected a JSON object" in message


def test_an_empty_or_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(QuestionFileError, match="holds no questions"):
        parse_questions(["", "# comment"])
    with pytest.raises(QuestionFileError, match="does not exist"):
        load_questions(tmp_path / "nope.jsonl")


@pytest.mark.parametrize("name", ["dev.jsonl", "smoke.jsonl"])
def test_bundled_question_files_are_valid(name: str) -> None:
    questions = load_questions(ROOT / "evals" / "questions" / name)
    assert any(not q.in_scope for q in questions) and any(q.in_scope for q in questions)
    assert all(q.must_contain for q in questions if q.in_scope)


def test_dev_set_meets_the_issue_brief() -> None:
    questions = load_questions(ROOT / "evals" / "questions" / "dev.jsonl")
    assert len(questions) >= 95
    assert sum(not q.in_scope for q in questions) >= 15
    manifest = (ROOT / "corpus" / "manifest.csv").read_text(encoding="utf-8")
    ids = {line.split(",", 1)[0] for line in manifest.splitlines()[1:] if line.strip()}
    unknown = {s for q in questions for s in q.gold_sources} - ids
    assert not unknown, f"gold sources missing from corpus/manifest.csv: {sorted(unknown)}"


# --- configurations -------------------------------------------------------------------------


def test_configurations_vary_only_what_they_name() -> None:
    settings = Settings()
    assert parse_config_names(None, settings) == ["hybrid", "dense", "bm25"]
    assert parse_config_names(" BM25, hybrid,bm25", settings) == ["bm25", "hybrid"]
    assert config_settings(settings, "dense").retrieval.mode == "dense"
    assert config_settings(settings, "dense").retrieval.k == settings.retrieval.k
    with pytest.raises(MyoQAError, match="Unknown configuration"):
        parse_config_names("hybrid,sparse", settings)
    with pytest.raises(MyoQAError, match="MYOQA_LLM__MODEL"):
        parse_config_names("llm", settings)


def test_llm_configuration_is_offered_when_a_model_is_set() -> None:
    settings = Settings(llm={"model": "some-model"})  # type: ignore[arg-type]
    assert parse_config_names(None, settings)[-1] == "llm"
    llm = config_settings(settings, "llm")
    assert llm.answer.mode == "llm" and llm.retrieval.mode == "hybrid"


# --- a whole run on the tiny corpus with the fake embedder ----------------------------------


@pytest.fixture
def tiny_index(tiny_settings: Settings, fake_model: EmbeddingModel) -> Settings:
    build_index(tiny_settings, fake_model, progress=False)
    return tiny_settings


TINY_QUESTIONS = [
    '{"id": "ivig", "question": "ProDERM IVIG responders 78.7%", "in_scope": true, '
    '"must_contain": ["78.7"], "gold_sources": ["ivig"], "topic": "ivig"}',
    '{"id": "ibm", "question": "inclusion body myositis finger flexors quadriceps", "in_scope": true, '
    '"must_contain": ["quadriceps"], "gold_sources": ["ibm", "not-indexed"]}',
    '{"id": "off", "question": "banana bread recipe", "in_scope": false, "must_contain": []}',
    '{"id": "long", "question": "' + "x" * 1001 + '", "in_scope": true, "must_contain": ["x"]}',
]


def test_run_eval_writes_three_reports(
    tiny_index: Settings, fake_model: EmbeddingModel, tmp_path: Path
) -> None:
    index = load_index(tiny_index.paths.index_dir)
    chains = build_chains(tiny_index, ["hybrid", "bm25"], fake_model, index)
    judge = SimilarityJudge(embed=fake_model.embed_documents)
    prime_from_index(judge, index)
    run = run_eval(
        parse_questions(TINY_QUESTIONS),
        chains,
        judge,
        k=3,
        questions_file="tiny.jsonl",
        indexed_sources=set(index.manifest.sources),
        progress=False,
    )
    assert list(run.configs) == ["hybrid", "bm25"]
    assert any("not-indexed" in w for w in run.warnings)
    assert run.configs["bm25"].info["retrieval"] == "bm25"

    paths = write_reports(run, tmp_path / "out")
    assert [p.name for p in paths] == ["report.json", "report.md", "report.png"]
    data = json.loads(paths[0].read_text(encoding="utf-8"))
    hybrid = data["configs"]["hybrid"]
    assert hybrid["metrics"]["n_questions"] == 4
    assert hybrid["questions"][-1]["failures"][0].startswith("error: The question is 1001")
    row = hybrid["questions"][0]
    assert {"answer", "citations", "verdicts", "failures", "severity", "retrieved_sources"} <= set(
        row
    )
    markdown = paths[1].read_text(encoding="utf-8")
    assert "## Metrics by configuration" in markdown and "| hybrid | bm25 |" in markdown
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_measures_warm_throughput(
    tiny_index: Settings, fake_model: EmbeddingModel, tmp_path: Path
) -> None:
    chain = QAChain(tiny_index, load_index(tiny_index.paths.index_dir), fake_model)
    questions = parse_questions(TINY_QUESTIONS)[:3]
    result = run_bench(chain, questions, warmup=1, repeat=2, progress=False)
    assert result.n_asked == 6 and result.throughput_qps > 0
    assert 0 < result.latency_p50_ms <= result.latency_p95_ms <= result.latency_max_ms
    json_path, md_path = write_bench(result, tmp_path)
    assert json.loads(json_path.read_text())["n_asked"] == 6
    assert "questions/s" in md_path.read_text()


# --- CLI ------------------------------------------------------------------------------------


def test_cli_missing_index_says_how_to_build(tmp_path: Path) -> None:
    questions = tmp_path / "q.jsonl"
    questions.write_text(GOOD + "\n", encoding="utf-8")
    for command in (
        ["run", "--out", str(tmp_path / "out")],
        ["bench", "--out", str(tmp_path / "b")],
    ):
        result = CliRunner().invoke(
            main, [*command, "--questions", str(questions), "--index-dir", str(tmp_path / "none")]
        )
        assert result.exit_code == 1
        assert "myositis-qa index" in result.output
        assert "Traceback" not in result.output


def test_cli_bad_question_file_names_the_line(tmp_path: Path) -> None:
    questions = tmp_path / "q.jsonl"
    questions.write_text(GOOD + "\n{oops\n", encoding="utf-8")
    result = CliRunner().invoke(
        main, ["run", "--questions", str(questions), "--out", str(tmp_path)]
    )
    assert result.exit_code == 1
    assert "line 2: not valid JSON" in result.output


def test_cli_rejects_an_unknown_configuration(tmp_path: Path) -> None:
    questions = tmp_path / "q.jsonl"
    questions.write_text(GOOD + "\n", encoding="utf-8")
    result = CliRunner().invoke(
        main, ["run", "--questions", str(questions), "--out", str(tmp_path), "--configs", "sparse"]
    )
    assert result.exit_code == 1 and "Unknown configuration" in result.output
