"""`propose`: check the evaluations it compares, run the configured policy on a stage's inputs,
then hold the constraints.

A rule comparing scores across stages whose evaluations differ is refused (`drift.py`), unless
`accept_eval_drift` is set: then what changed leads the explanation and `Proposal.eval_drift`.

Every policy returns targets (the weights it wants for the sources it moves) and the reasons;
the other sources share the rest in proportion; the result is projected onto the constraints
(`constraints.py`), and each source the projection moved is explained by the bound it hit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from smollm.config import RebalanceConfig
from smollm.rebalance.anneal_gain import apply_anneal_gain
from smollm.rebalance.anneal_slope import apply_anneal_slope
from smollm.rebalance.constraints import Bounds, project, source_bounds
from smollm.rebalance.drift import check_inputs
from smollm.rebalance.inputs import RebalanceInputs
from smollm.rebalance.regression import apply_regression
from smollm.rebalance.rules import apply_rules


@dataclass
class Proposal:
    """A next mixture and why: one line per signal that moved (or did not move) it, and per
    constraint that bound."""

    weights: dict[str, float]
    previous: dict[str, float]
    policy: str
    explanation: list[str] = field(default_factory=list)
    eval_drift: list[str] = field(default_factory=list)
    """The eval drift `accept_eval_drift` let the policy compare across (also in `explanation`)."""
    evidence: list[dict[str, Any]] = field(default_factory=list)
    """What the policy measured, one row per candidate (`anneal_slope`: gain, spread, slope)."""

    def diff(self) -> list[dict[str, Any]]:
        rows = []
        for name in sorted(set(self.weights) | set(self.previous)):
            before, after = self.previous.get(name, 0.0), self.weights.get(name, 0.0)
            rows.append({"source": name, "before": before, "after": after, "change": after - before})
        return rows

    def diff_text(self) -> str:
        return "\n".join(
            f"{r['source']}: {r['before']:.4f} -> {r['after']:.4f} ({r['change']:+.4f})" for r in self.diff()
        )

    def markdown(self, title: str) -> str:
        """The proposal, the previous mixture, the diff and the reasons, for a person to read."""
        lines = [f"### {title}", "", f"Policy: `{self.policy}`", "", "| source | previous | proposed | change |"]
        lines.append("|---|---:|---:|---:|")
        for r in self.diff():
            lines.append(f"| {r['source']} | {r['before']:.4f} | {r['after']:.4f} | {r['change']:+.4f} |")
        lines += ["", "Why:", ""] + [f"- {line}" for line in self.explanation]
        return "\n".join(lines)


def fill(current: Mapping[str, float], targets: Mapping[str, float]) -> dict[str, float]:
    """Keep the moved sources at their targets; the others share the rest in proportion."""
    rest = {k: v for k, v in current.items() if k not in targets}
    free = 1.0 - sum(targets.values())
    total_rest = sum(rest.values())
    weights = dict(targets)
    for name, weight in rest.items():
        weights[name] = free * weight / total_rest if total_rest > 0 else free / len(rest)
    return weights


def at_bound(after: float, wanted: float, bounds: Bounds) -> bool:
    """Whether the projection held a source at its own bound (the one on the side it was moved)."""
    return abs(after - (bounds.high if after < wanted else bounds.low)) <= 1e-6


def propose(config: RebalanceConfig, inputs: RebalanceInputs) -> Proposal:
    """The next mixture under `config.policy`, within every constraint (or `Infeasible`); a
    comparison across drifted evaluations is refused (`drift.EvalDrift`) unless accepted."""
    accepted = check_inputs(config, inputs)
    current = inputs.mixture
    evidence: list[dict[str, Any]] = []

    def bounds_for(names):
        return source_bounds(sorted(names), current, inputs.constraints)

    if config.policy == "keep":
        targets: dict[str, float] = {}
        explanation = ["policy keep: mixture unchanged"]
    elif config.policy == "rules":
        targets, explanation = apply_rules(config, inputs)
    elif config.policy == "anneal_gain":
        targets, explanation = apply_anneal_gain(config, inputs)
    elif config.policy == "anneal_slope":
        targets, explanation, evidence = apply_anneal_slope(config, inputs)
    else:
        targets, explanation = apply_regression(config, inputs, bounds_for)
    wanted = fill(current, targets)
    names = sorted(n for n in wanted if wanted[n] > 0 or n in current)
    bounds = bounds_for(names)
    weights = project(wanted, bounds, keep=targets)
    moved = [n for n in names if abs(weights.get(n, 0.0) - wanted[n]) > 1e-4]
    clipped = any(at_bound(weights.get(n, 0.0), wanted[n], bounds[n]) for n in moved)
    total = sum(wanted.values())
    for name in moved:
        after = weights.get(name, 0.0)
        b = bounds[name]
        why = b.why_high if after < wanted[name] else b.why_low
        if not at_bound(after, wanted[name], b):  # moved to meet the others' bounds, or the sum
            why = "within the other sources' bounds" if clipped else f"the targets summed to {total:.4f}, not 1"
        explanation.append(f"constraint: {name} {wanted[name]:.4f} -> {after:.4f} ({why})")
    reasons = [*accepted, *explanation]
    return Proposal(weights, dict(current), config.policy, reasons, eval_drift=accepted, evidence=evidence)
