"""The ``myositis-qa-eval`` command: ``run`` (metrics and reports) and ``bench`` (throughput)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import click

from app.cli.common import settings_with, start, user_errors
from indexer.settings import Settings

log = logging.getLogger(__name__)

_QUESTIONS = click.option(
    "--questions",
    "questions_path",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="JSONL question file (id, question, in_scope, must_contain, gold_sources).",
)
_INDEX_DIR = click.option(
    "--index-dir", type=click.Path(file_okay=False, path_type=Path), help="Index folder."
)
_PROGRESS = click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
_TORCH_THREADS = click.option(
    "--torch-threads",
    type=click.IntRange(min=1),
    envvar="MYOQA_EVAL_TORCH_THREADS",
    help="torch intra-op threads for this run (default: torch's choice, one per core).",
)


def _set_torch_threads(threads: int | None) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def _load(settings: Settings) -> tuple[Any, Any, float]:
    """The embedding model and the index, loaded once (fails fast when there is no index)."""
    from indexer.embeddings import load_embedding_model
    from indexer.store import load_index, read_manifest

    # fail fast, before the model loads, with "build it with myositis-qa index"
    read_manifest(settings.paths.index_dir)
    started = time.perf_counter()
    model = load_embedding_model(settings.embedding)
    index = load_index(
        settings.paths.index_dir, expected_identity=settings.index_identity(model.dim)
    )
    return model, index, time.perf_counter() - started


@click.group()
@click.option(
    "--config",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="MYOQA_CONFIG_FILE",
    help="JSON settings file (as for myositis-qa).",
)
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
def main(config: Path | None, verbose: int) -> None:
    """Measure myositis-qa: grounding, retrieval, abstention and speed."""
    start(verbose, config)


@main.command()
@_QUESTIONS
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder for report.json, report.md and report.png.",
)
@click.option(
    "--configs",
    envvar="MYOQA_EVAL_CONFIGS",
    help="Comma-separated configurations: hybrid, dense, bm25, llm. "
    "Default: hybrid,dense,bm25 (+llm when MYOQA_LLM__MODEL is set). The first is gated.",
)
@click.option(
    "--k",
    "k",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="Cut-off of recall@k.",
)
@click.option(
    "--judge-threshold",
    type=click.FloatRange(0, 1),
    help="Support judge threshold (default: the calibrated value, see evals/README.md).",
)
@click.option(
    "--lexical-judge", is_flag=True, help="Judge support by word overlap only (no embeddings)."
)
@click.option(
    "--worst",
    "n_worst",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Worst questions listed in report.md.",
)
@click.option(
    "--gate", is_flag=True, help="Exit 1 when the first configuration misses a CI threshold."
)
@_INDEX_DIR
@_PROGRESS
@_TORCH_THREADS
@user_errors
def run(
    questions_path: Path,
    out_dir: Path,
    configs: str | None,
    k: int,
    judge_threshold: float | None,
    lexical_judge: bool,
    n_worst: int,
    gate: bool,
    index_dir: Path | None,
    progress: bool,
    torch_threads: int | None,
) -> None:
    """Answer a question file with each configuration and write the reports."""
    from evals.gate import gate_failures
    from evals.judge import SimilarityJudge
    from evals.questions_io import load_questions
    from evals.report import write_reports
    from evals.runner import build_chains, parse_config_names, prime_from_index, run_eval

    settings = settings_with(paths__index_dir=index_dir)
    questions = load_questions(questions_path)
    names = parse_config_names(configs, settings)
    _set_torch_threads(torch_threads)
    model, index, _ = _load(settings)
    chains = build_chains(settings, names, model, index)
    embed = None if lexical_judge else model.embed_documents
    judge = SimilarityJudge(embed=embed, threshold=judge_threshold)
    if embed is not None:
        prime_from_index(judge, index)
    result = run_eval(
        questions,
        chains,
        judge,
        k,
        questions_file=str(questions_path),
        index_info={
            "path": str(settings.paths.index_dir),
            "n_sources": len(index.manifest.sources),
            "n_chunks": len(index.chunks),
            "embedding_model": index.manifest.identity.get("embedding_model"),
        },
        indexed_sources=set(index.manifest.sources),
        progress=progress,
    )
    paths = write_reports(result, out_dir, n_worst)
    for name, config in result.configs.items():
        m = config.metrics
        click.echo(
            f"{name:>7}: recall@{k} {_f(m['recall@k'])}  key facts {_f(m['key_fact_accuracy'])}  "
            f"citations valid {_f(m['citation_validity'])}  numbers grounded {_f(m['numbers_grounded'])}  "
            f"abstention {_f(m['abstention_recall'])}  false abstention {_f(m['false_abstention_rate'])}"
        )
    click.echo("Wrote " + ", ".join(str(p) for p in paths))
    failures = gate_failures(result.default.metrics)
    if failures and gate:
        raise click.ClickException(f"{result.default.name} misses the gate: " + "; ".join(failures))


@main.command()
@_QUESTIONS
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder for bench.json and bench.md.",
)
@click.option(
    "--repeat",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Times each question is asked.",
)
@click.option(
    "--warmup",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="Untimed questions asked first.",
)
@_INDEX_DIR
@_PROGRESS
@_TORCH_THREADS
@user_errors
def bench(
    questions_path: Path,
    out_dir: Path,
    repeat: int,
    warmup: int,
    index_dir: Path | None,
    progress: bool,
    torch_threads: int | None,
) -> None:
    """Warm throughput and latency of the default chain on a question file."""
    from app.qa.chain import load_chain
    from evals.bench import run_bench, write_bench
    from evals.questions_io import load_questions

    settings = settings_with(paths__index_dir=index_dir)
    questions = load_questions(questions_path)
    model, index, load_seconds = _load(settings)
    if torch_threads is not None:  # the flag wins over embedding.query_threads
        settings.embedding.query_threads = torch_threads
    chain = load_chain(settings, model=model, index=index)
    result = run_bench(
        chain,
        questions,
        warmup=warmup,
        repeat=repeat,
        questions_file=str(questions_path),
        load_seconds=load_seconds,
        progress=progress,
    )
    paths = write_bench(result, out_dir)
    click.echo(
        f"{result.throughput_qps:.2f} questions/s, p50 {result.latency_p50_ms:.1f} ms, "
        f"p95 {result.latency_p95_ms:.1f} ms over {result.n_asked} questions"
    )
    click.echo("Wrote " + ", ".join(str(p) for p in paths))


@main.command()
@click.option(
    "--data",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path(__file__).parent / "calibration" / "support.jsonl",
    show_default=True,
    help="JSONL of labelled pairs: kind, supported, sentence, passage.",
)
@click.option(
    "--lexical-weight", type=click.FloatRange(0, 1), help="Override the judge's lexical weight."
)
@click.option("--lexical-judge", is_flag=True, help="Calibrate the lexical-only judge.")
@user_errors
def calibrate(data: Path, lexical_weight: float | None, lexical_judge: bool) -> None:
    """Print how the support judge scores labelled pairs, and its accuracy by threshold."""
    from evals.calibrate import load_pairs, score_pairs, score_table, sweep
    from evals.judge import LEXICAL_WEIGHT, SimilarityJudge
    from indexer.embeddings import load_embedding_model

    pairs = load_pairs(data)
    embed = None
    if not lexical_judge:
        embed = load_embedding_model(settings_with().embedding).embed_documents
    judge = SimilarityJudge(embed=embed, lexical_weight=lexical_weight or LEXICAL_WEIGHT)
    scored = score_pairs(pairs, judge)
    click.echo("\n".join(score_table(scored)))
    click.echo("")
    thresholds = sorted({round(0.5 + 0.02 * i, 2) for i in range(21)} | {judge.threshold})
    click.echo("\n".join(sweep(scored, thresholds)))
    click.echo(f"\nDefault threshold: {judge.threshold} (lexical weight {judge.lexical_weight})")


def _f(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
