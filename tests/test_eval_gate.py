"""The CI gate: the dev set through the default chain (hybrid, extractive) with the real model.

Thresholds live in evals/gate.py; they were set from measured numbers and are
never lowered to make this pass (see evals/README.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from evals.gate import GATE, GATE_K, Threshold, gate_failures
from evals.judge import SimilarityJudge
from evals.questions_io import load_questions
from evals.runner import EvalRun, build_chains, prime_from_index, run_eval
from evals.scoring import worst
from indexer.embeddings import EmbeddingModel
from indexer.settings import Settings
from indexer.store import load_index

DEV = Path(__file__).resolve().parents[1] / "evals" / "questions" / "dev.jsonl"


@pytest.fixture(scope="module")
def dev_run(bundled_index: Settings, real_model: EmbeddingModel) -> EvalRun:
    index = load_index(bundled_index.paths.index_dir, bundled_index.index_identity(real_model.dim))
    chains = build_chains(bundled_index, ["hybrid"], real_model, index)
    judge = SimilarityJudge(embed=real_model.embed_documents)
    prime_from_index(judge, index)
    return run_eval(
        load_questions(DEV),
        chains,
        judge,
        k=GATE_K,
        questions_file=str(DEV),
        indexed_sources=set(index.manifest.sources),
        progress=False,
    )


@pytest.mark.slow
def test_every_gold_source_is_indexed(dev_run: EvalRun) -> None:
    assert dev_run.warnings == []


@pytest.mark.slow
@pytest.mark.parametrize("threshold", GATE, ids=str)
def test_dev_set_meets_the_gate(dev_run: EvalRun, threshold: Threshold) -> None:
    config = dev_run.default
    failures = gate_failures(config.metrics, (threshold,))
    if failures:
        why = "\n".join(
            f"  {r.id}: " + "; ".join(map(str, r.failures)) for r in worst(config.results, 5)
        )
        pytest.fail(f"{failures[0]}\nworst questions:\n{why}")
