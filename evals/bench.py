"""Warm performance benchmark of one chain: throughput and latency percentiles.

The model and index are loaded and a few questions asked before timing starts,
so the numbers describe a serving process, not a cold start.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.qa.schema import QAService
from evals.metrics import percentile
from evals.questions_io import Question

log = logging.getLogger(__name__)

JSON_FILE = "bench.json"
MARKDOWN_FILE = "bench.md"


@dataclass
class BenchResult:
    questions_file: str
    created: str
    n_questions: int
    repeat: int
    warmup: int
    n_asked: int
    wall_seconds: float
    throughput_qps: float
    latency_p50_ms: float
    latency_p95_ms: float
    latency_max_ms: float
    load_seconds: float | None
    chain: dict[str, Any]
    environment: dict[str, Any] = field(default_factory=dict)


def environment() -> dict[str, Any]:
    """What the numbers depend on: CPU count, torch threads, versions."""
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
    }
    try:
        import torch

        env["torch"] = torch.__version__
        env["torch_threads"] = torch.get_num_threads()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return env


def run_bench(
    chain: QAService,
    questions: Sequence[Question],
    *,
    warmup: int = 5,
    repeat: int = 1,
    questions_file: str = "",
    load_seconds: float | None = None,
    progress: bool = True,
) -> BenchResult:
    """Ask ``warmup`` questions untimed, then every question ``repeat`` times, one at a time."""
    from tqdm import tqdm

    if not questions:
        raise ValueError("no questions to benchmark")
    if repeat < 1 or warmup < 0:
        raise ValueError("repeat must be >= 1 and warmup >= 0")
    for question in questions[:warmup]:
        chain.ask(question.question)
    latencies: list[float] = []
    todo = [q for _ in range(repeat) for q in questions]
    started = time.perf_counter()
    for question in tqdm(todo, desc="bench", unit="q", disable=not progress, leave=False):
        t0 = time.perf_counter()
        chain.ask(question.question)
        latencies.append(time.perf_counter() - t0)
    wall = time.perf_counter() - started
    return BenchResult(
        questions_file=questions_file,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        n_questions=len(questions),
        repeat=repeat,
        warmup=min(warmup, len(questions)),
        n_asked=len(todo),
        wall_seconds=round(wall, 4),
        throughput_qps=round(len(todo) / wall, 3) if wall > 0 else float("inf"),
        latency_p50_ms=round(percentile(latencies, 50) * 1000, 2),
        latency_p95_ms=round(percentile(latencies, 95) * 1000, 2),
        latency_max_ms=round(max(latencies) * 1000, 2),
        load_seconds=None if load_seconds is None else round(load_seconds, 3),
        chain=dict(chain.info),
        environment=environment(),
    )


def render_markdown(result: BenchResult) -> str:
    load = "n/a" if result.load_seconds is None else f"{result.load_seconds:.2f} s"
    rows = [
        ("questions", f"{result.n_questions} × {result.repeat} (after {result.warmup} warm-up)"),
        ("throughput", f"{result.throughput_qps:.2f} questions/s (one at a time)"),
        ("latency p50", f"{result.latency_p50_ms:.1f} ms"),
        ("latency p95", f"{result.latency_p95_ms:.1f} ms"),
        ("latency max", f"{result.latency_max_ms:.1f} ms"),
        ("load (model + index)", load),
        ("chain", ", ".join(f"{k}={v}" for k, v in result.chain.items())),
        ("machine", ", ".join(f"{k}={v}" for k, v in result.environment.items())),
    ]
    lines = [
        "# Benchmark",
        "",
        f"`{result.questions_file}`, {result.created}",
        "",
        "| measure | value |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines) + "\n"


def write_bench(result: BenchResult, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / JSON_FILE, out_dir / MARKDOWN_FILE
    json_path.write_text(json.dumps(asdict(result), indent=2) + "\n", encoding="utf-8")
    md_path.write_text(render_markdown(result), encoding="utf-8")
    log.info("Wrote %s and %s", json_path, md_path)
    return [json_path, md_path]
