"""Calibrate the support judge on labelled (sentence, passage, supported) pairs.

The pairs live in ``evals/calibration/support.jsonl``: hand-written paraphrases
of corpus passages (supported) and sentences the passage does not support
(a wrong number, an unstated claim on the same topic, a contradiction that
reuses the passage's words). ``myositis-qa-eval calibrate`` prints, for each
candidate threshold, how many pairs of each kind the judge gets right.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from evals.judge import SimilarityJudge
from indexer.errors import MyoQAError


@dataclass(frozen=True)
class Pair:
    kind: str
    supported: bool
    sentence: str
    passage: str


@dataclass(frozen=True)
class Scored:
    pair: Pair
    numbers_ok: bool
    lexical: float
    semantic: float | None
    score: float


def load_pairs(path: Path) -> list[Pair]:
    pairs = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            pairs.append(
                Pair(str(row["kind"]), bool(row["supported"]), row["sentence"], row["passage"])
            )
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise MyoQAError(f"{path} line {line_no}: not a calibration pair ({exc})") from exc
    if not pairs:
        raise MyoQAError(f"{path} holds no calibration pairs.")
    return pairs


def score_pairs(pairs: Sequence[Pair], judge: SimilarityJudge) -> list[Scored]:
    """The judge's score of every pair, with the threshold set aside."""
    scored = []
    for pair in pairs:
        verdict = judge.judge(pair.sentence, [pair.passage])
        scored.append(
            Scored(
                pair=pair,
                numbers_ok=not verdict.reason.startswith("numbers"),
                lexical=verdict.detail.get("lexical", 0.0),
                semantic=verdict.detail.get("semantic"),
                score=verdict.score,
            )
        )
    return scored


def accuracy_by_kind(scored: Sequence[Scored], threshold: float) -> dict[str, tuple[int, int]]:
    """Per kind of pair: (judged correctly, total) at ``threshold``."""
    right: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for s in scored:
        predicted = s.numbers_ok and s.score >= threshold
        total[s.pair.kind] += 1
        right[s.pair.kind] += predicted == s.pair.supported
    return {kind: (right[kind], total[kind]) for kind in total}


def sweep(scored: Sequence[Scored], thresholds: Sequence[float]) -> list[str]:
    """A Markdown table: accuracy per kind of pair at each threshold."""
    kinds = sorted({s.pair.kind for s in scored})
    lines = [
        "| threshold | " + " | ".join(kinds) + " | all |",
        "|---:|" + "---:|" * (len(kinds) + 1),
    ]
    for t in thresholds:
        acc = accuracy_by_kind(scored, t)
        right = sum(r for r, _ in acc.values())
        cells = [f"{acc[k][0]}/{acc[k][1]}" for k in kinds]
        lines.append(f"| {t:.2f} | " + " | ".join(cells) + f" | {right}/{len(scored)} |")
    return lines


def score_table(scored: Sequence[Scored]) -> list[str]:
    lines = [
        "| kind | supported | lexical | semantic | score | sentence |",
        "|---|---|---:|---:|---:|---|",
    ]
    for s in sorted(scored, key=lambda s: (s.pair.kind, -s.score)):
        semantic = "n/a" if s.semantic is None else f"{s.semantic:.2f}"
        flag = "" if s.numbers_ok else " (numbers)"
        lines.append(
            f"| {s.pair.kind} | {s.pair.supported} | {s.lexical:.2f} | {semantic} | "
            f"{s.score:.2f}{flag} | {s.pair.sentence} |"
        )
    return lines
