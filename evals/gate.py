"""The CI gate: thresholds the default (hybrid, extractive) configuration must meet.

Used by tests/test_eval_gate.py, by ``myositis-qa-eval run --gate`` and by the
report. Set from what the dev set measures; never lowered to make CI pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class Threshold:
    metric: str
    op: Literal[">=", "<="]
    value: float

    def passes(self, measured: float | None) -> bool:
        if measured is None:
            return False
        return measured >= self.value if self.op == ">=" else measured <= self.value

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.value:g}"


#: recall@k is measured at GATE_K.
GATE_K = 5
GATE: tuple[Threshold, ...] = (
    Threshold("recall@k", ">=", 0.90),
    Threshold("key_fact_accuracy", ">=", 0.85),
    Threshold("citation_validity", ">=", 1.0),
    Threshold("citation_recall", ">=", 0.95),
    Threshold("numbers_grounded", ">=", 1.0),
    Threshold("abstention_recall", ">=", 0.90),
    Threshold("false_abstention_rate", "<=", 0.05),
)


def gate_failures(metrics: Mapping[str, Any], gate: tuple[Threshold, ...] = GATE) -> list[str]:
    """One line per threshold the metrics miss; empty when the gate passes."""
    failures = []
    for threshold in gate:
        measured = metrics.get(threshold.metric)
        if not threshold.passes(measured):
            shown = "n/a" if measured is None else f"{measured:.3f}"
            failures.append(f"{threshold}: measured {shown}")
    return failures
