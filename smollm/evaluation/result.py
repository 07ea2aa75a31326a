"""The result of evaluating one checkpoint on a suite, and its JSON form (`results.json`): the
metrics, and the suite fingerprint that says what they measured (`fingerprint.py`)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from smollm.evaluation.suite import EvalSuite


@dataclass(kw_only=True)
class EvalResult:
    """Metrics of one checkpoint; MLflow gets `eval/<task>/<metric>` and `eval/category/<name>`."""

    suite: str
    """Name of the suite evaluated."""
    metrics: dict[str, float]
    """`<task>/<metric>`, e.g. `math_add1_cf/acc_norm`, `bpb_stdlib_code/bits_per_byte`."""
    categories: dict[str, float]
    """Category -> mean primary metric (`acc_norm` for MCQ, lighteval's for generative built-ins)
    of its tasks with `aggregate` on."""
    stderr: dict[str, float] = field(default_factory=dict)
    """lighteval's standard error of each metric (same keys as `metrics`), where it gives one."""
    num_items: dict[str, int] = field(default_factory=dict)
    """Items (or documents) each task was scored on."""
    model_dir: str = ""
    """The checkpoint evaluated (provenance only)."""
    seconds: float = 0.0
    """Wall time of the evaluation (a process's first one includes importing lighteval, ~4-8 s)."""
    fingerprint: dict[str, Any] = field(default_factory=dict)
    """`SuiteFingerprint.to_dict()` of the suite evaluated: two results compare only if equal."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> EvalResult:
        return cls(**json.loads(text))


def metric_key(name: str) -> str:
    """A lighteval metric name as a key MLflow accepts: parameters dropped, `@` spelled out
    (`maj@n:n=4&normalize_pred=<function ..>` -> `maj_at_n`); `acc_norm` stays as it is."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name.split(":", 1)[0].replace("@", "_at_"))


def category_means(
    suite: EvalSuite, metrics: Mapping[str, float], primary: Mapping[str, str] | None = None
) -> dict[str, float]:
    """Mean primary metric per category over the suite's aggregated tasks (bpb excluded: lower
    is better). `primary` names the metric of tasks whose own is only known to lighteval
    (`native` built-ins), by task name."""
    scores: dict[str, list[float]] = {}
    for task in suite.tasks:
        if task.aggregate and task.kind != "bpb":
            metric = task.primary_metric or (primary or {})[task.name]
            scores.setdefault(task.category, []).append(metrics[f"{task.name}/{metric}"])
    return {category: math.fsum(values) / len(values) for category, values in sorted(scores.items())}


def category_bpb(suite: EvalSuite, metrics: Mapping[str, float]) -> dict[str, float]:
    """Mean bits per byte per category over the suite's aggregated `bpb` tasks (lower is
    better): the low-noise signal a small annealing run moves measurably."""
    values: dict[str, list[float]] = {}
    for task in suite.tasks:
        key = f"{task.name}/bits_per_byte"
        if task.aggregate and task.kind == "bpb" and key in metrics:
            values.setdefault(task.category, []).append(metrics[key])
    return {category: math.fsum(v) / len(v) for category, v in sorted(values.items())}
