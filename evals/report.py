"""Reports of an eval run: report.json (everything), report.md (for people), report.png."""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evals.gate import GATE, GATE_K
from evals.runner import ConfigRun, EvalRun
from evals.scoring import RATE_METRICS, SEVERITY, QuestionResult, worst

log = logging.getLogger(__name__)

JSON_FILE = "report.json"
MARKDOWN_FILE = "report.md"
PLOT_FILE = "report.png"

#: Rows of the Markdown metrics table: (metric key, label).
TABLE_ROWS: tuple[tuple[str, str], ...] = (
    ("recall@k", "recall@{k} (any gold source in top {k})"),
    ("coverage@k", "coverage@{k} (share of gold sources in top {k})"),
    ("mrr", "MRR"),
    ("key_fact_accuracy", "key-fact accuracy (in scope)"),
    ("citation_validity", "citation validity"),
    ("citation_recall", "citation recall (ALCE)"),
    ("citation_precision", "citation precision (ALCE)"),
    ("numbers_grounded", "numbers grounded"),
    ("abstention_precision", "abstention precision"),
    ("abstention_recall", "abstention recall (out of scope)"),
    ("false_abstention_rate", "false abstention (in scope)"),
    ("latency_p50_s", "latency p50 (ms)"),
    ("latency_p95_s", "latency p95 (ms)"),
)


def fmt(metric: str, value: Any) -> str:
    if value is None:
        return "n/a"
    if metric.startswith("latency"):
        return f"{value * 1000:.0f}"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _gate_text(metric: str, k: int) -> str:
    if k != GATE_K and metric == "recall@k":
        return ""
    return " ".join(f"{t.op} {t.value:g}" for t in GATE if t.metric == metric)


def metrics_table(run: EvalRun) -> list[str]:
    names = list(run.configs)
    gate_of = {t.metric: t for t in GATE}
    lines = [
        "| metric | " + " | ".join(names) + " | gate (default config) |",
        "|---|" + "---:|" * len(names) + "---|",
    ]
    for key, label in TABLE_ROWS:
        cells = []
        for name in names:
            value = run.configs[name].metrics.get(key)
            text = fmt(key, value)
            threshold = gate_of.get(key)
            if (
                name == names[0]
                and threshold
                and _gate_text(key, run.k)
                and not threshold.passes(value)
            ):
                text = f"**{text}** ✗"
            cells.append(text)
        lines.append(
            f"| {label.format(k=run.k)} | " + " | ".join(cells) + f" | {_gate_text(key, run.k)} |"
        )
    return lines


def failure_counts(run: EvalRun) -> list[str]:
    names = list(run.configs)
    lines = [
        "| failure | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for kind in SEVERITY:
        counts = [
            sum(any(f.kind == kind for f in r.failures) for r in run.configs[n].results)
            for n in names
        ]
        lines.append(f"| {kind} | " + " | ".join(str(c) for c in counts) + " |")
    return lines


def topic_table(config: ConfigRun) -> list[str]:
    """Key-fact accuracy and recall by the question files' optional ``topic`` field."""
    groups: dict[str, list[QuestionResult]] = defaultdict(list)
    for r in config.results:
        topic = r.extra.get("topic")
        if isinstance(topic, str) and r.in_scope:
            groups[topic].append(r)
    if not groups:
        return []
    lines = ["| topic | questions | key-fact accuracy | recall@k |", "|---|---:|---:|---:|"]
    for topic, rows in sorted(groups.items()):
        facts = sum(bool(r.key_facts_ok) for r in rows) / len(rows)
        recalls = [r.recall for r in rows if r.recall is not None]
        recall = f"{sum(recalls) / len(recalls):.2f}" if recalls else "n/a"
        lines.append(f"| {topic} | {len(rows)} | {facts:.2f} | {recall} |")
    return lines


def worst_table(results: Sequence[QuestionResult], n: int) -> list[str]:
    rows = worst(results, n)
    if not rows:
        return ["No question fails."]
    lines = [
        "| id | severity | question | why it fails | answer (start) |",
        "|---|---:|---|---|---|",
    ]
    for r in rows:
        why = "<br>".join(_cell(str(f)) for f in r.failures)
        lines.append(
            f"| {r.id} | {r.severity} | {_cell(r.question)} | {why} | {_cell(r.answer[:160])} |"
        )
    return lines


def render_markdown(run: EvalRun, n_worst: int = 10) -> str:
    default = run.default
    configs = ", ".join(f"{n} ({c.info.get('mode', '?')})" for n, c in run.configs.items())
    parts = [
        "# Eval report",
        "",
        f"- questions: `{run.questions_file}` ({default.metrics['n_questions']}: "
        f"{default.metrics['n_in_scope']} in scope, {default.metrics['n_out_of_scope']} out of scope)",
        f"- created: {run.created}",
        f"- index: {run.index.get('n_sources', '?')} sources, {run.index.get('n_chunks', '?')} chunks, "
        f"embedding model `{run.index.get('embedding_model', '?')}`",
        f"- support judge: `{json.dumps(run.judge)}`",
        f"- configurations: {configs}",
        "",
    ]
    if run.warnings:
        parts += ["## Warnings", "", *[f"- {w}" for w in run.warnings], ""]
    parts += ["## Metrics by configuration", "", *metrics_table(run), ""]
    parts += [f"✗ marks a gate threshold the default configuration ({default.name}) misses.", ""]
    parts += ["## Failures by kind (questions)", "", *failure_counts(run), ""]
    topics = topic_table(default)
    if topics:
        parts += [f"## By topic ({default.name})", "", *topics, ""]
    parts += [
        f"## Worst questions ({default.name})",
        "",
        *worst_table(default.results, n_worst),
        "",
    ]
    for name, config in list(run.configs.items())[1:]:
        parts += [f"## Worst questions ({name})", "", *worst_table(config.results, 5), ""]
    return "\n".join(parts)


def _plot_label(metric: str, k: int) -> str:
    label = metric.replace("@k", f"@{k}").replace("_", " ")
    return f"{label} (lower is better)" if metric == "false_abstention_rate" else label


def write_plot(run: EvalRun, path: Path) -> None:
    """Grouped bars of the rate metrics, and latency, by configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(run.configs)
    metrics = [
        m for m in RATE_METRICS if any(run.configs[n].metrics.get(m) is not None for n in names)
    ]
    fig, (ax, lat) = plt.subplots(
        1, 2, figsize=(15, 5.5), gridspec_kw={"width_ratios": [4, 1]}, constrained_layout=True
    )
    width = 0.8 / max(len(names), 1)
    x = np.arange(len(metrics))
    for i, name in enumerate(names):
        values = [run.configs[name].metrics.get(m) or 0.0 for m in metrics]
        ax.bar(x + (i - (len(names) - 1) / 2) * width, values, width, label=name)
    for j, metric in enumerate(metrics):
        for t in GATE:
            if t.metric == metric and (metric != "recall@k" or run.k == GATE_K):
                ax.hlines(
                    t.value, j - 0.45, j + 0.45, colors="black", linestyles="dashed", linewidth=1
                )
    ax.set_xticks(
        x,
        [_plot_label(m, run.k) for m in metrics],
        rotation=35,
        ha="right",
    )
    ax.set_ylim(0, 1.16)  # room above the bars for the legend
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_title("Metrics by configuration (dashed: CI gate)")
    ax.legend(loc="upper left", ncols=len(names), fontsize="small", frameon=False)
    ax.grid(axis="y", alpha=0.3)
    p50 = [run.configs[n].metrics["latency_p50_s"] * 1000 for n in names]
    p95 = [run.configs[n].metrics["latency_p95_s"] * 1000 for n in names]
    xi = np.arange(len(names))
    lat.bar(xi - 0.2, p50, 0.4, label="p50")
    lat.bar(xi + 0.2, p95, 0.4, label="p95")
    lat.set_xticks(xi, names)
    lat.set_ylabel("ms per question")
    lat.set_title("Latency")
    lat.legend(fontsize="small")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_reports(run: EvalRun, out_dir: Path, n_worst: int = 10) -> list[Path]:
    """Write report.json, report.md and report.png into ``out_dir``; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path, png_path = out_dir / JSON_FILE, out_dir / MARKDOWN_FILE, out_dir / PLOT_FILE
    json_path.write_text(
        json.dumps(run.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    md_path.write_text(render_markdown(run, n_worst), encoding="utf-8")
    write_plot(run, png_path)
    log.info("Wrote %s, %s and %s", json_path, md_path, png_path)
    return [json_path, md_path, png_path]
