"""What a rebalancing policy reads: one stage's evaluations (and the previous stage's), the sweeps
it ran, the current mixture and the constraints. Recorded as JSON with every proposal, so a
decision can be replayed, or re-made by another policy, without the stores that produced it.

Both stages' suite fingerprints travel with their metrics (`smollm.evaluation.fingerprint`):
a rule on a metric's change compares the two evaluations, which `drift.py` allows only where
the tasks it reads were evaluated alike.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from smollm.evaluation.fingerprint import SuiteFingerprint
from smollm.rebalance.constraints import Constraints
from smollm.sweep import category_scores


@dataclass(frozen=True)
class SweepRun:
    """One member of a sweep the stage ran: its mixture, what it was compared with, its scores."""

    name: str
    kind: str
    candidates: tuple[str, ...]
    """Candidate sources (anneal) or the candidate mixture's name (ablate); () for a control."""
    weights: dict[str, float]
    """The mixture it trained on."""
    scores: dict[str, float]
    """Category scores (mean accuracy)."""
    control: str | None = None
    """The control member it is compared with (same seed and settings)."""
    share: float | None = None
    seed: int = 0
    bpb: dict[str, float] = field(default_factory=dict)
    """Category bits per byte (lower is better); empty where the suite has no bpb task."""

    @property
    def is_control(self) -> bool:
        return not self.candidates

    def to_dict(self) -> dict[str, Any]:
        return {**vars(self), "candidates": list(self.candidates)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SweepRun:
        return cls(**{**data, "candidates": tuple(data.get("candidates", ()))})


@dataclass(frozen=True)
class RebalanceInputs:
    stage: str
    next_stage: str
    metrics: dict[str, float]
    """The stage run's metrics without `eval/` (`category/math`, `<task>/<metric>`, `sweep/...`)."""
    previous_metrics: dict[str, float] | None
    """The previous stage's, for rules on a metric's change; None for a first stage."""
    mixture: dict[str, float]
    constraints: Constraints
    sweep_runs: list[SweepRun] = field(default_factory=list)
    fingerprint: SuiteFingerprint | None = None
    """The suite fingerprint of the stage's evaluation; None where it was not recorded."""
    previous_fingerprint: SuiteFingerprint | None = None
    """The previous stage's, for the eval-drift guard (`drift.py`)."""
    previous_stage: str | None = None
    """The previous stage's name (what `previous_metrics` are of)."""
    next_decay_fraction: float | None = None
    """The fraction of the next stage over which the LR decays (its `decay_fraction`; > 0: an
    anneal), for rules on the LR phase; None where not recorded."""

    @property
    def scores(self) -> dict[str, float]:
        return category_scores(self.metrics, prefix="category/")

    def runs(self, kind: str) -> list[SweepRun]:
        return [r for r in self.sweep_runs if r.kind == kind]

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "next_stage": self.next_stage,
            "metrics": dict(sorted(self.metrics.items())),
            "previous_metrics": None if self.previous_metrics is None else dict(sorted(self.previous_metrics.items())),
            "mixture": dict(sorted(self.mixture.items())),
            "constraints": self.constraints.to_dict(),
            "sweep_runs": [r.to_dict() for r in self.sweep_runs],
            "fingerprint": None if self.fingerprint is None else self.fingerprint.to_dict(),
            "previous_fingerprint": None if self.previous_fingerprint is None else self.previous_fingerprint.to_dict(),
            "previous_stage": self.previous_stage,
            "next_decay_fraction": self.next_decay_fraction,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RebalanceInputs:
        return cls(
            stage=data["stage"],
            next_stage=data["next_stage"],
            metrics=dict(data["metrics"]),
            previous_metrics=None if data.get("previous_metrics") is None else dict(data["previous_metrics"]),
            mixture=dict(data["mixture"]),
            constraints=Constraints.from_dict(data["constraints"]),
            sweep_runs=[SweepRun.from_dict(r) for r in data.get("sweep_runs", [])],
            fingerprint=_fingerprint(data.get("fingerprint")),
            previous_fingerprint=_fingerprint(data.get("previous_fingerprint")),
            previous_stage=data.get("previous_stage"),
            next_decay_fraction=data.get("next_decay_fraction"),
        )


def _fingerprint(data: Mapping[str, Any] | None) -> SuiteFingerprint | None:
    return None if data is None else SuiteFingerprint.from_dict(data)


def weighted_score(scores: Mapping[str, float], priorities: Mapping[str, float]) -> float:
    """The priority-weighted mean of the category scores (all categories weigh 1 if none given);
    categories without a score are left out of both sums."""
    weights = {c: priorities.get(c, 0.0) if priorities else 1.0 for c in scores}
    total = sum(weights.values())
    if total <= 0:
        return 0.0
    return sum(weights[c] * scores[c] for c in scores) / total


@dataclass(frozen=True)
class Estimate:
    """A measured quantity over seeds: its mean, the spread of the seeds (None with one seed)."""

    mean: float
    spread: float | None
    seeds: int

    @classmethod
    def of(cls, values: list[float]) -> Estimate:
        finite = [v for v in values if math.isfinite(v)]
        if not finite:
            return cls(0.0, None, 0)
        spread = statistics.stdev(finite) if len(finite) > 1 else None
        return cls(statistics.fmean(finite), spread, len(finite))

    def significant(self, sigmas: float, floor: float = 0.0) -> bool:
        """Larger (in size) than `floor` and than `sigmas` standard deviations of the seeds."""
        noise = 0.0 if self.spread is None else sigmas * self.spread
        return abs(self.mean) > max(floor, noise)

    def text(self) -> str:
        if self.spread is None:
            return f"{self.mean:+.4f} (1 seed, noise unknown)"
        return f"{self.mean:+.4f} ± {self.spread:.4f} over {self.seeds} seeds"
