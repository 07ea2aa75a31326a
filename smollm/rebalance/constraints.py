"""The constraints every proposed mixture satisfies, and the projection onto them.

Per source: its min/max weight, at most `max_change` away from its current weight, and the epoch
cap (what is left of `max_epochs * available_tokens` after the tokens already consumed, over the
next stage's budget, leaving the stages after it what they take at the least: a weight comes
down by at most `max_change` a stage, so a source the next stage takes much of keeps drawing
on it). Together with "the weights sum to 1" they form a box on the simplex; a
policy's targets are projected onto it (the closest point, Euclidean), and an empty box is an
`Infeasible` error that names the constraints that conflict. `violations` lists what a given
mixture breaks: the check of every proposal in the tests, and of an edit made at approval
(`flows/approval.py`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

TOLERANCE = 1e-6


class Infeasible(ValueError):
    """The constraints leave no valid mixture; the message says which."""


@dataclass(frozen=True)
class SourceLimits:
    """What the constraints need to know of one source."""

    min_weight: float = 0.0
    max_weight: float = 1.0
    max_epochs: float = 4.0
    available_tokens: int = 0
    consumed_tokens: int = 0


@dataclass(frozen=True)
class Constraints:
    sources: dict[str, SourceLimits]
    max_change: float
    next_stage_tokens: int
    later_stage_tokens: tuple[int, ...] = ()
    """The budgets of the stages after the next one, in order."""

    def least_use(self, name: str, weight: float) -> float:
        """The fewest tokens of `name` the remaining stages take if the next one takes `weight`:
        the later stages come down by `max_change` a stage, to no less than its `min_weight`."""
        low, change = self.sources[name].min_weight, self.max_change
        later = sum(max(low, weight - k * change, 0.0) * t for k, t in enumerate(self.later_stage_tokens, 1))
        return weight * self.next_stage_tokens + later

    def epoch_cap(self, name: str) -> float:
        """The largest weight of `name` for the next stage that leaves every later stage a
        weight within the source's epoch cap (0 when it is spent)."""
        limits = self.sources[name]
        left = limits.max_epochs * limits.available_tokens - limits.consumed_tokens
        if self.least_use(name, 0.0) >= left:
            return 0.0
        if self.least_use(name, 1.0) <= left:
            return 1.0
        lo, hi = 0.0, 1.0  # least_use increases with the weight: bisect for least_use == left
        for _ in range(100):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if self.least_use(name, mid) <= left else (lo, mid)
        return lo

    def cap_text(self, name: str) -> str:
        """Where the cap comes from, for a reason or a violation."""
        limits = self.sources[name]
        text = f"{limits.max_epochs:g} epochs of {limits.available_tokens} tokens, {limits.consumed_tokens} consumed"
        text += f", over {self.next_stage_tokens} tokens"
        cap = self.epoch_cap(name)
        if self.later_stage_tokens and self.least_use(name, cap) > cap * self.next_stage_tokens + 1e-9:
            later = sum(self.later_stage_tokens)
            text += f" and {later} later ones that come down by at most max_change {self.max_change:g} a stage"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_change": self.max_change,
            "next_stage_tokens": self.next_stage_tokens,
            "later_stage_tokens": list(self.later_stage_tokens),
            "sources": {n: vars(s) for n, s in sorted(self.sources.items())},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Constraints:
        sources = {n: SourceLimits(**s) for n, s in data["sources"].items()}
        later = tuple(int(t) for t in data.get("later_stage_tokens", ()))
        return cls(sources, float(data["max_change"]), int(data["next_stage_tokens"]), later)


@dataclass(frozen=True)
class Bounds:
    low: float
    high: float
    why_low: str
    why_high: str


def source_bounds(names: list[str], current: Mapping[str, float], constraints: Constraints) -> dict[str, Bounds]:
    """Each source's [low, high]; a source whose own constraints conflict is `Infeasible`."""
    bounds = {}
    for name in names:
        if name not in constraints.sources:
            raise Infeasible(f"rebalance: source {name!r} has no constraints (not a declared, built source)")
        limits, before = constraints.sources[name], current.get(name, 0.0)
        highs = {
            f"max_weight={limits.max_weight:g}": limits.max_weight,
            f"max_change: {before:.4f}+{constraints.max_change:g}": before + constraints.max_change,
            f"epoch cap: {constraints.cap_text(name)}": constraints.epoch_cap(name),
        }
        lows = {
            f"min_weight={limits.min_weight:g}": limits.min_weight,
            f"max_change: {before:.4f}-{constraints.max_change:g}": before - constraints.max_change,
            "0": 0.0,
        }
        why_high = min(highs, key=highs.__getitem__)
        why_low = max(lows, key=lows.__getitem__)
        low, high = lows[why_low], min(1.0, highs[why_high])
        if low > high + TOLERANCE:
            raise Infeasible(
                f"rebalance: infeasible for {name}: {why_low} (>= {low:.4f}) but {why_high} (<= {high:.4f})"
            )
        bounds[name] = Bounds(low, max(low, high), why_low, why_high)
    return bounds


def check_feasible(bounds: Mapping[str, Bounds]) -> None:
    low = sum(b.low for b in bounds.values())
    high = sum(b.high for b in bounds.values())
    if low > 1 + TOLERANCE:
        detail = ", ".join(f"{n} >= {b.low:.4f} ({b.why_low})" for n, b in sorted(bounds.items()) if b.low > 0)
        raise Infeasible(f"rebalance: infeasible, the lower bounds sum to {low:.4f} > 1: {detail}")
    if high < 1 - TOLERANCE:
        detail = ", ".join(f"{n} <= {b.high:.4f} ({b.why_high})" for n, b in sorted(bounds.items()))
        raise Infeasible(f"rebalance: infeasible, the upper bounds sum to {high:.4f} < 1: {detail}")


def project(weights: Mapping[str, float], bounds: Mapping[str, Bounds], keep: Iterable[str] = ()) -> dict[str, float]:
    """The closest weights (Euclidean) that sum to 1 within the bounds. The sources in `keep` (the
    ones a policy moved) hold their targets, clipped to their bounds, while the others can absorb
    the difference; only when they cannot is everything projected together."""
    check_feasible(bounds)
    kept = {n: min(bounds[n].high, max(bounds[n].low, weights.get(n, 0.0))) for n in keep if n in bounds}
    rest = {n: b for n, b in bounds.items() if n not in kept}
    left = 1.0 - sum(kept.values())
    if kept and rest and sum(b.low for b in rest.values()) <= left <= sum(b.high for b in rest.values()):
        return round_within({**kept, **_project(weights, rest, left)}, bounds)
    if kept and not rest and abs(left) <= TOLERANCE:
        return round_within(kept, bounds)
    return round_within(_project(weights, bounds, 1.0), bounds)


def _project(weights: Mapping[str, float], bounds: Mapping[str, Bounds], total: float) -> dict[str, float]:
    names = sorted(bounds)

    def clipped(tau: float) -> dict[str, float]:
        return {n: min(bounds[n].high, max(bounds[n].low, weights.get(n, 0.0) - tau)) for n in names}

    # sum(clipped(tau)) decreases in tau, from the highs' sum (every source at its high) to the
    # lows' (every one at its low); bisect for sum == total
    values = [weights.get(n, 0.0) for n in names]
    lo, hi = min(values) - 1.0, max(values) + 1.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if sum(clipped(mid).values()) > total else (lo, mid)
    return clipped((lo + hi) / 2)


def round_within(weights: Mapping[str, float], bounds: Mapping[str, Bounds], digits: int = 6) -> dict[str, float]:
    """Weights rounded to `digits`, summing to 1 exactly as far as floats go, still in bounds:
    the rounding residue goes to the sources with room for it."""
    unit = 10.0**-digits
    rounded = {n: round(w, digits) for n, w in weights.items()}
    residue = round((1.0 - sum(rounded.values())) / unit)
    order = sorted(rounded, key=lambda n: -(bounds[n].high - rounded[n] if residue > 0 else rounded[n] - bounds[n].low))
    step = 1 if residue > 0 else -1
    while residue != 0:
        moved = False
        for name in order:
            room = bounds[name].high - rounded[name] if step > 0 else rounded[name] - bounds[name].low
            if room >= unit / 2 and residue != 0:
                rounded[name] = round(rounded[name] + step * unit, digits)
                residue -= step
                moved = True
        if not moved:  # no source has room for the residue at `digits` (bounds summing to 1): unrounded
            return {n: w for n, w in sorted(weights.items()) if w > 0}
    return {n: w for n, w in sorted(rounded.items()) if w > 0}


@dataclass(frozen=True)
class Violation:
    """One constraint a mixture breaks: on `source` (None: the mixture as a whole), the
    constraint's name (`max_change`, `epoch_cap`, ...) and the value that breaks it."""

    source: str | None
    constraint: str
    detail: str

    def __str__(self) -> str:
        return f"{self.source}: {self.detail}" if self.source else self.detail


def violations(weights: Mapping[str, float], current: Mapping[str, float], constraints: Constraints) -> list[Violation]:
    """Every constraint `weights` breaks, moving from `current` (empty for a valid proposal):
    what the tests check a policy's proposal with, and what an approval edit must pass."""
    found = []
    total = sum(weights.values())
    if abs(total - 1) > TOLERANCE:
        found.append(Violation(None, "sum", f"weights sum to {total:.6f}, not 1"))
    for name in sorted(set(weights) | set(current)):
        w, before = weights.get(name, 0.0), current.get(name, 0.0)
        if name not in constraints.sources:
            if w > 0:
                found.append(Violation(name, "constraints", f"{w:g} on a source without constraints (not built)"))
            continue
        found += _source_violations(name, w, before, constraints)
    return found


def _source_violations(name: str, w: float, before: float, constraints: Constraints) -> list[Violation]:
    limits, cap, change = constraints.sources[name], constraints.epoch_cap(name), constraints.max_change
    found = []
    if w < 0:
        found.append(Violation(name, "negative", f"{w:g} is negative"))
    if w > limits.max_weight + TOLERANCE:
        found.append(Violation(name, "max_weight", f"{w:g} exceeds max_weight {limits.max_weight:g}"))
    if w < limits.min_weight - TOLERANCE:
        found.append(Violation(name, "min_weight", f"{w:g} is below min_weight {limits.min_weight:g}"))
    if abs(w - before) > change + TOLERANCE:
        side = "above" if w > before else "below"
        found.append(Violation(name, "max_change", f"{w:g} is more than max_change {change:g} {side} {before:g}"))
    if w > cap + TOLERANCE:
        detail = f"{w:g} exceeds the epoch cap {cap:.6g} ({constraints.cap_text(name)})"
        found.append(Violation(name, "epoch_cap", detail))
    return found
