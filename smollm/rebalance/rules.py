"""`rules`: declarative signal -> action rules (`conf/rebalance/*.yaml`).

A rule compares one metric of the stage run — or its change since the previous stage — with a
threshold and, when it fires, raises, lowers, introduces or retires sources by a bounded step.
A rule may be for one LR phase of the next stage only (`phase: decay`: the anneal), and may skip
a metric the suite does not compute (`if_missing: skip`). Rules are applied in order on the
running targets; the same recorded metrics always give the same targets (`smollm replay` checks
a recorded pipeline against them).
"""

from __future__ import annotations

from collections.abc import Mapping

from smollm.config import RebalanceConfig, RuleConfig
from smollm.rebalance.inputs import RebalanceInputs


def signal(rule: RuleConfig, inputs: RebalanceInputs) -> tuple[float | None, str]:
    """The rule's value (None when it cannot be computed) and how it reads."""
    if rule.metric not in inputs.metrics:
        if rule.if_missing == "skip":
            return None, f"{rule.metric} was not logged (if_missing: skip)"
        raise ValueError(
            f"rebalance.rules.{rule.name}.metric: {rule.metric!r} was not logged (have: {sorted(inputs.metrics)})"
        )
    value = inputs.metrics[rule.metric]
    if not rule.change:
        return value, f"{rule.metric}={value:.4f}"
    previous = (inputs.previous_metrics or {}).get(rule.metric)
    if previous is None:
        return None, f"change of {rule.metric}: no previous stage value"
    return value - previous, f"change of {rule.metric}={value - previous:+.4f} ({previous:.4f} -> {value:.4f})"


def out_of_phase(rule: RuleConfig, inputs: RebalanceInputs) -> str | None:
    """Why the rule is not for the next stage's LR phase; None when it is."""
    if rule.phase == "any":
        return None
    if inputs.next_decay_fraction is None:
        raise ValueError(
            f"rebalance.rules.{rule.name}.phase: {rule.phase!r} needs the next stage's decay_fraction, "
            "which these inputs do not record"
        )
    decays = inputs.next_decay_fraction > 0
    if decays == (rule.phase == "decay"):
        return None
    return f"{inputs.next_stage} {'decays' if decays else 'holds'} the LR, the rule is for {rule.phase} stages"


def move(rule: RuleConfig, current: Mapping[str, float], targets: dict[str, float]) -> list[str]:
    """Apply a fired rule's actions to `targets` (the running targets over `current`); what it did."""
    moves = []
    for sources, sign in ((rule.raise_sources, 1), (rule.lower_sources, -1)):
        for name in sources:
            base = targets.get(name, current.get(name, 0.0))
            targets[name] = min(1.0, max(0.0, base + sign * rule.by / len(sources)))
            moves.append(f"{'+' if sign > 0 else '-'}{name} by {rule.by / len(sources):g}")
    for name in rule.introduce_sources:
        if targets.get(name, current.get(name, 0.0)) > 0:
            moves.append(f"{name} already in the mixture")
            continue
        targets[name] = rule.by / len(rule.introduce_sources)
        moves.append(f"introduce {name} at {targets[name]:g}")
    for name in rule.retire_sources:
        targets[name] = 0.0
        moves.append(f"retire {name}")
    return moves


def apply_rules(config: RebalanceConfig, inputs: RebalanceInputs) -> tuple[dict[str, float], list[str]]:
    """Targets for the sources the fired rules moved, and one line per rule."""
    targets: dict[str, float] = {}
    explanation = []
    for rule in config.rules:
        skipped = out_of_phase(rule, inputs)
        if skipped is not None:
            explanation.append(f"rule {rule.name}: {skipped}; no change")
            continue
        value, reads = signal(rule, inputs)
        threshold = f"< {rule.below:g}" if rule.below is not None else f"> {rule.above:g}"
        if value is None:
            explanation.append(f"rule {rule.name}: {reads}; no change")
            continue
        fired = value < rule.below if rule.below is not None else value > rule.above  # type: ignore[operator]
        if not fired:
            explanation.append(f"rule {rule.name}: {reads} not {threshold}; no change")
            continue
        moves = move(rule, inputs.mixture, targets)
        explanation.append(f"rule {rule.name}: {reads} {threshold}; " + ", ".join(moves))
    if not config.rules:
        explanation.append("rules: no rules configured; no change")
    return targets, explanation
