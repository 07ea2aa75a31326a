"""The result of evaluating one checkpoint on a suite, and its JSON form (`results.json`)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

from smollm.evaluation.suite import EvalSuite


@dataclass(kw_only=True)
class EvalResult:
    """Metrics of one checkpoint; MLflow gets `eval/<task>/<metric>` and `eval/category/<name>`."""

    suite: str
    """Name of the suite evaluated."""
    metrics: dict[str, float]
    """`<task>/<metric>`, e.g. `math_add1_cf/acc_norm`, `bpb_stdlib_code/bits_per_byte`."""
    categories: dict[str, float]
    """Category -> mean primary accuracy (`acc_norm`) of its MCQ tasks with `aggregate` on."""
    stderr: dict[str, float] = field(default_factory=dict)
    """lighteval's standard error of each metric (same keys as `metrics`), where it gives one."""
    num_items: dict[str, int] = field(default_factory=dict)
    """Items (or documents) each task was scored on."""
    model_dir: str = ""
    """The checkpoint evaluated (provenance only)."""
    seconds: float = 0.0
    """Wall time of the evaluation (a process's first one includes importing lighteval, ~4-8 s)."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> EvalResult:
        return cls(**json.loads(text))


def category_means(suite: EvalSuite, metrics: Mapping[str, float]) -> dict[str, float]:
    """Mean primary accuracy per category over the suite's aggregated MCQ tasks."""
    scores: dict[str, list[float]] = {}
    for task in suite.tasks:
        if task.is_mcq and task.aggregate:
            scores.setdefault(task.category, []).append(metrics[f"{task.name}/{task.primary_metric}"])
    return {category: math.fsum(values) / len(values) for category, values in sorted(scores.items())}
