"""`anneal_gain`: move weight to the annealing candidates in proportion to their measured gain.

A candidate's gain is the priority-weighted mean, over categories, of its score minus its
control's (same seed, same budget), averaged over seeds. With seed repeats, a gain within
`noise_sigmas` standard deviations of its spread over seeds is noise and moves nothing; so is
one at or below `anneal_gain.min_gain`. The significant gains share `anneal_gain.step` of
weight: positive ones raise their candidates, negative ones lower those already in the mixture.
"""

from __future__ import annotations

from collections import defaultdict

from smollm.config import RebalanceConfig
from smollm.rebalance.inputs import Estimate, RebalanceInputs, SweepRun, weighted_score


def deltas(run: SweepRun, control: SweepRun) -> dict[str, float]:
    return {c: run.scores[c] - control.scores[c] for c in run.scores if c in control.scores}


def candidate_gains(config: RebalanceConfig, inputs: RebalanceInputs) -> dict[tuple[str, ...], tuple[float, Estimate]]:
    """Per candidate (set): the best share and its gain estimated over seeds."""
    runs = {r.name: r for r in inputs.runs("anneal")}
    per_share: dict[tuple[tuple[str, ...], float], list[float]] = defaultdict(list)
    for run in runs.values():
        if run.is_control or run.control not in runs:
            continue
        gain = weighted_score(deltas(run, runs[run.control]), config.priorities)
        per_share[(run.candidates, run.share or 0.0)].append(gain)
    best: dict[tuple[str, ...], tuple[float, Estimate]] = {}
    for (candidates, share), gains in sorted(per_share.items()):
        estimate = Estimate.of(gains)
        if candidates not in best or estimate.mean > best[candidates][1].mean:
            best[candidates] = (share, estimate)
    return best


def apply_anneal_gain(config: RebalanceConfig, inputs: RebalanceInputs) -> tuple[dict[str, float], list[str]]:
    gains = candidate_gains(config, inputs)
    if not gains:
        return {}, ["anneal_gain: no annealing runs with a control were recorded for this stage; no change"]
    settings = config.anneal_gain
    explanation, significant = [], {}
    for candidates, (share, estimate) in gains.items():
        label = "+".join(candidates)
        reads = f"anneal_gain: {label} (share {share:g}) gains {estimate.text()}"
        if not estimate.significant(config.noise_sigmas, settings.min_gain):
            noise = (
                ""
                if estimate.spread is None
                else f", noise {config.noise_sigmas:g} sd = {config.noise_sigmas * estimate.spread:.4f}"
            )
            explanation.append(f"{reads}: within the noise (min_gain {settings.min_gain:g}{noise}); no change")
            continue
        significant[candidates] = estimate.mean
    total = sum(abs(g) for g in significant.values())
    targets: dict[str, float] = {}
    for candidates, gain in significant.items():
        move = settings.step * gain / total
        share, estimate = gains[candidates]
        present = [c for c in candidates if inputs.mixture.get(c, 0.0) > 0 or gain > 0]
        for name in present:
            base = targets.get(name, inputs.mixture.get(name, 0.0))
            targets[name] = min(1.0, max(0.0, base + move / len(present)))
        label = "+".join(candidates)
        action = (
            f"{'raise' if move > 0 else 'lower'} {', '.join(present)} by {abs(move):.4f}"
            if present
            else "not in the mixture; no change"
        )
        explanation.append(f"anneal_gain: {label} (share {share:g}) gains {estimate.text()}: {action}")
    return targets, explanation
