"""`anneal_slope`: move the mixture along the slope of the objective the annealing runs measured.

Each annealing member decays from the stage's stable checkpoint on `share` of one candidate
source plus `1 - share` of the stage's mixture; its control decays on the mixture alone (same
seed, same budget). The objective is the priority-weighted mean over categories of held-out
bits per byte (`signal: bpb`, lower is better; the low-noise signal at small scale) or of
accuracy (`signal: accuracy`). A member's gain over its control, divided by its share, is the
slope of the objective towards its candidate.

Every member moves `share` away from the mixture, so all slopes share a curvature term (at
share 0.3 every candidate can look harmful); they are centred on the mixture's own slope, the
weight-averaged slope of the sources in it, which is 0 where the objective is linear. What is
left says which sources to move weight to and from.

The noise is measured, not assumed. With seed repeats (each member and its control at the
same seeds), it is the spread of the paired gains over seeds, pooled over the candidates (the
data order moves a member and its control alike, so pairing removes most of it); without
them, √2 times the control's spread over seeds. A centred slope within `noise_sigmas` of its
noise (over the share, over √seeds) moves nothing. The others move the mixture by up to
`anneal_slope.step`: the largest centred slope (in size) by the full step, the rest in
proportion, before the constraints (max change, weight bounds, epoch caps).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from smollm.config import RebalanceConfig
from smollm.rebalance.inputs import Estimate, RebalanceInputs, SweepRun, weighted_score


@dataclass(frozen=True)
class Slope:
    """What the sweep measured for one candidate (set): its gain over the control, the slope
    that gain implies, centred on the mixture's, and the noise it is judged against."""

    candidates: tuple[str, ...]
    share: float
    gain: Estimate
    slope: float
    centred: float = 0.0
    noise: float | None = None

    @property
    def label(self) -> str:
        return "+".join(self.candidates)

    def significant(self, sigmas: float) -> bool:
        return self.noise is None or abs(self.centred) > sigmas * self.noise


def value(run: SweepRun, signal: str, priorities: dict[str, float]) -> float | None:
    """The run's objective as higher-is-better: minus the weighted bpb, or the weighted accuracy."""
    if signal == "bpb":
        return -weighted_score(run.bpb, priorities) if run.bpb else None
    return weighted_score(run.scores, priorities) if run.scores else None


def control_spread(runs: list[SweepRun], signal: str, priorities: dict[str, float]) -> Estimate:
    """The control's objective over its seed repeats (its spread is the sweep's noise)."""
    values = [value(r, signal, priorities) for r in runs if r.is_control]
    return Estimate.of([v for v in values if v is not None])


def pooled_spread(gains: list[Estimate]) -> float | None:
    """The seed spread of a paired gain, pooled over the candidates measured at several seeds."""
    repeated = [g for g in gains if g.spread is not None]
    if not repeated:
        return None
    dof = sum(g.seeds - 1 for g in repeated)
    return math.sqrt(sum((g.seeds - 1) * g.spread**2 for g in repeated if g.spread is not None) / dof)


def measured_slopes(config: RebalanceConfig, inputs: RebalanceInputs) -> tuple[list[Slope], Estimate]:
    """Each candidate's slope (its best share's), centred on the mixture's, with its noise; and
    the control's spread over seeds."""
    settings, priorities = config.anneal_slope, config.priorities
    runs = {r.name: r for r in inputs.runs("anneal")}
    gains: dict[tuple[tuple[str, ...], float], list[float]] = defaultdict(list)
    for run in runs.values():
        control = runs.get(run.control or "")
        if run.is_control or control is None or not run.share:
            continue
        mine, theirs = value(run, settings.signal, priorities), value(control, settings.signal, priorities)
        if mine is not None and theirs is not None:
            gains[(run.candidates, run.share)].append(mine - theirs)
    best: dict[tuple[str, ...], Slope] = {}
    for (candidates, share), values in sorted(gains.items()):
        estimate = Estimate.of(values)
        slope = Slope(candidates, share, estimate, estimate.mean / share)
        if candidates not in best or slope.slope > best[candidates].slope:
            best[candidates] = slope
    controls = control_spread(list(runs.values()), settings.signal, priorities)
    pooled = pooled_spread([s.gain for s in best.values()])
    in_mixture = [s for s in best.values() if sum(inputs.mixture.get(c, 0.0) for c in s.candidates) > 0]
    mass = sum(sum(inputs.mixture.get(c, 0.0) for c in s.candidates) for s in in_mixture)
    own = (
        sum(s.slope * sum(inputs.mixture.get(c, 0.0) for c in s.candidates) for s in in_mixture) / mass if mass else 0.0
    )
    slopes = []
    for s in best.values():
        noise = None
        if pooled is not None:
            noise = pooled / s.share / math.sqrt(s.gain.seeds)
        elif controls.spread is not None:
            noise = math.sqrt(2) * controls.spread / s.share
        slopes.append(Slope(s.candidates, s.share, s.gain, s.slope, s.slope - own, noise))
    return slopes, controls


def apply_anneal_slope(
    config: RebalanceConfig, inputs: RebalanceInputs
) -> tuple[dict[str, float], list[str], list[dict[str, Any]]]:
    """The targets, the reasons, and the evidence (`slope_evidence`) they were decided on."""
    slopes, controls = measured_slopes(config, inputs)
    if not slopes:
        return {}, ["anneal_slope: no annealing runs with a control were recorded for this stage; no change"], []
    settings, sigmas = config.anneal_slope, config.noise_sigmas
    unit = "bpb" if settings.signal == "bpb" else "accuracy"
    control = -controls.mean if unit == "bpb" else controls.mean
    spread = "" if controls.spread is None else f" ± {controls.spread:.4f}"
    pooled = pooled_spread([s.gain for s in slopes])
    noise = (
        f"paired gains vary by {pooled:.4f} over seeds (pooled): the noise"
        if pooled is not None
        else "no seed repeats of the candidates: the noise is the control's"
        if controls.spread is not None
        else "one seed: the noise is unknown"
    )
    explanation = [f"anneal_slope: control objective {control:.4f}{spread} {unit} over {controls.seeds} seeds; {noise}"]
    moving = [s for s in slopes if s.significant(sigmas)]
    largest = max((abs(s.centred) for s in moving), default=0.0)
    targets: dict[str, float] = {}
    for s in slopes:
        current = {c: inputs.mixture.get(c, 0.0) for c in s.candidates}
        move = settings.step * s.centred / largest if s in moving and largest > 0 else 0.0
        present = [c for c in s.candidates if current[c] > 0 or move > 0]
        for name in present if move else []:  # the others share the rest in proportion
            targets[name] = max(0.0, current[name] + move / len(present))
        noise = "noise unknown" if s.noise is None else f"noise {sigmas:g} sd = {sigmas * s.noise:.4f}"
        if move and present:
            action = f"{'raise' if move > 0 else 'lower'} {', '.join(present)} by {abs(move):.4f}"
        else:
            action = "not in the mixture; no change" if move else "no change"
        explanation.append(
            f"anneal_slope: {s.label} (share {s.share:g}) gains {s.gain.text()} ({unit} objective); slope "
            f"{s.slope:+.4f}, centred {s.centred:+.4f} ({noise}): {action}"
        )
    return targets, explanation, slope_evidence(slopes, sigmas)


def slope_evidence(slopes: list[Slope], sigmas: float) -> list[dict[str, Any]]:
    """One row per candidate: what the sweep measured, for the table next to the move it caused."""
    return [
        {
            "candidate": s.label,
            "share": s.share,
            "gain": round(s.gain.mean, 6),
            "gain_spread": None if s.gain.spread is None else round(s.gain.spread, 6),
            "seeds": s.gain.seeds,
            "centred_slope": round(s.centred, 6),
            "slope_noise": None if s.noise is None else round(sigmas * s.noise, 6),
            "significant": s.significant(sigmas),
        }
        for s in slopes
    ]
