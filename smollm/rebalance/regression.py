"""`regression`: fit score ~ mixture over the data-ablation runs, then maximise the fit.

In the spirit of RegMix and the data-mixing laws: each ablation run (a mixture trained from
scratch, per seed) is one point; the priority-weighted category score is fitted as
`b0 + sum_j b_j * phi(w_j)` (`phi = log(w + epsilon)` for `log_linear`, the identity for
`linear`) by ridge regression. The proposal maximises the fitted score minus
`kl_penalty * KL(next || current)` on the constrained simplex (SLSQP, then projected). Seed
repeats of one mixture measure the noise: a predicted gain below `noise_sigmas` of it keeps
the current mixture.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from smollm.config import RebalanceConfig, RegressionConfig
from smollm.rebalance.constraints import Bounds, project
from smollm.rebalance.inputs import RebalanceInputs, weighted_score


@dataclass(frozen=True)
class Fit:
    names: list[str]
    intercept: float
    coef: np.ndarray
    model: str
    epsilon: float
    r2: float
    loo_rmse: float

    def features(self, weights: np.ndarray) -> np.ndarray:
        return np.log(weights + self.epsilon) if self.model == "log_linear" else weights

    def predict(self, weights: np.ndarray) -> float:
        return float(self.intercept + self.features(weights) @ self.coef)

    def gradient(self, weights: np.ndarray) -> np.ndarray:
        return self.coef / (weights + self.epsilon) if self.model == "log_linear" else self.coef


def fit(points: list[tuple[np.ndarray, float]], names: list[str], config: RegressionConfig) -> Fit:
    """Ridge regression on centred features (the intercept is not penalised)."""

    def solve(x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        mx, my = x.mean(axis=0), y.mean()
        xc = x - mx
        # least squares, not solve: with ridge 0 the system is singular on a degenerate design
        # (a source at the same weight in every run, fewer runs than sources); the minimum-norm fit
        coef = np.linalg.lstsq(xc.T @ xc + config.ridge * np.eye(x.shape[1]), xc.T @ (y - my), rcond=None)[0]
        return float(my - mx @ coef), coef

    probe = Fit(names, 0.0, np.zeros(len(names)), config.model, config.epsilon, 0.0, 0.0)
    x = np.stack([probe.features(w) for w, _ in points])
    y = np.array([s for _, s in points])
    intercept, coef = solve(x, y)
    residual = y - (intercept + x @ coef)
    total = float(((y - y.mean()) ** 2).sum())
    r2 = 1 - float((residual**2).sum()) / total if total > 0 else 1.0
    errors = []
    for i in range(len(points)):
        keep = np.arange(len(points)) != i
        b0, b = solve(x[keep], y[keep])
        errors.append(float(y[i] - (b0 + x[i] @ b)))
    return Fit(names, intercept, coef, config.model, config.epsilon, r2, math.sqrt(np.mean(np.square(errors))))


def seed_noise(points: list[tuple[np.ndarray, float]]) -> float | None:
    """The pooled standard deviation of the scores of repeated mixtures (None without repeats)."""
    groups: dict[tuple[float, ...], list[float]] = defaultdict(list)
    for weights, score in points:
        groups[tuple(np.round(weights, 9))].append(score)
    repeats = [g for g in groups.values() if len(g) > 1]
    if not repeats:
        return None
    squares = sum(((np.array(g) - np.mean(g)) ** 2).sum() for g in repeats)
    return math.sqrt(squares / sum(len(g) - 1 for g in repeats))


def maximise(model: Fit, current: np.ndarray, bounds: dict[str, Bounds], kl_penalty: float) -> np.ndarray:
    """argmax fit(w) - kl_penalty * KL(w || current) over the bounds' box on the simplex."""
    from scipy.optimize import minimize

    q = (current + 1e-3) / (current + 1e-3).sum()  # sources new to the mixture: finite KL

    def loss(w: np.ndarray) -> float:
        w = np.clip(w, 1e-12, None)
        return -(model.predict(w) - kl_penalty * float(np.sum(w * np.log(w / q))))

    def grad(w: np.ndarray) -> np.ndarray:
        w = np.clip(w, 1e-12, None)
        return -(model.gradient(w) - kl_penalty * (np.log(w / q) + 1))

    names = model.names
    box = [(bounds[n].low, bounds[n].high) for n in names]
    start = np.array([project(dict(zip(names, current, strict=True)), bounds).get(n, 0.0) for n in names])
    result = minimize(
        loss,
        start,
        jac=grad,
        method="SLSQP",
        bounds=box,
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones_like(w)}],
        options={"maxiter": 500, "ftol": 1e-12},
    )
    best = result.x if loss(result.x) <= loss(start) else start
    projected = project(dict(zip(names, best, strict=True)), bounds)
    return np.array([projected.get(n, 0.0) for n in names])


def apply_regression(
    config: RebalanceConfig, inputs: RebalanceInputs, bounds_for
) -> tuple[dict[str, float], list[str]]:
    """The whole next mixture (already within the bounds) and the explanation."""
    runs = [r for r in inputs.runs("ablate") if r.scores]
    settings = config.regression
    distinct = {tuple(sorted(r.weights.items())) for r in runs}
    if len(distinct) < settings.min_runs:
        return {}, [
            f"regression: {len(distinct)} distinct ablation mixtures recorded (needs {settings.min_runs}); no change"
        ]
    names = sorted({n for r in runs for n in r.weights} | set(inputs.mixture))
    points = [
        (np.array([r.weights.get(n, 0.0) for n in names]), weighted_score(r.scores, config.priorities)) for r in runs
    ]
    model = fit(points, names, settings)
    bounds = bounds_for(names)
    current = np.array([inputs.mixture.get(n, 0.0) for n in names])
    proposal = maximise(model, current, bounds, settings.kl_penalty)
    before, after = model.predict(current), model.predict(proposal)
    noise = seed_noise(points)
    head = (
        f"regression: {settings.model} fit on {len(runs)} ablation runs ({len(distinct)} mixtures), "
        f"R2 {model.r2:.3f}, leave-one-out RMSE {model.loo_rmse:.4f}; predicted score {before:.4f} at the "
        f"current mixture, {after:.4f} at the proposal ({after - before:+.4f})"
    )
    if noise is not None and after - before <= config.noise_sigmas * noise:
        return {}, [
            f"{head}: within the seed noise ({config.noise_sigmas:g} sd = {config.noise_sigmas * noise:.4f}); no change"
        ]
    lines = [head + ("" if noise is None else f", seed noise sd {noise:.4f}")]
    for name, coef, w0, w1 in zip(names, model.coef, current, proposal, strict=True):
        lines.append(f"regression: {name} coefficient {coef:+.4f}: {w0:.4f} -> {w1:.4f}")
    return dict(zip(names, (float(w) for w in proposal), strict=True)), lines
