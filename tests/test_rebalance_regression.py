"""The `regression` policy against a known ground truth: a hidden response from mixture to category
scores (data-mixing-law style, saturating, so NOT the log-linear family the policy fits), sampled
at a handful of ablation mixtures; the proposal must score close to the true optimum, beat the
current mixture, stay put within the seed noise or without enough runs, and respect tight bounds."""

import numpy as np
import pytest
from scipy.optimize import minimize

from smollm.config import RebalanceConfig, RegressionConfig
from smollm.rebalance import Constraints, RebalanceInputs, SourceLimits, SweepRun, propose, violations

SOURCES = ["code", "math", "prose"]
CATEGORIES = ["code", "math", "knowledge"]
CURRENT = {"code": 0.2, "math": 0.1, "prose": 0.7}
PLENTY = 10**9

# The hidden response: score_c(w) = A_c - B_c * exp(-(T @ w)_c). Each category saturates in its
# own source and gains a little from the others; the mean over categories (no priorities) has an
# interior optimum near code 0.24, math 0.24, prose 0.51 (true score 0.6898 vs 0.6797 at CURRENT).
A = np.array([0.8, 0.7, 0.9])
B = np.array([0.6, 0.5, 0.7])
T = np.array(
    [
        [4.0, 0.5, 1.0],  # code: code, math, prose
        [0.5, 5.0, 0.8],  # math
        [0.3, 0.5, 3.0],  # knowledge
    ]
)

# Ablation design: 10 mixtures from a symmetric Dirichlet(3) (away from the corners, as an ablation
# grid would be), scores with N(0, 0.002) noise, one seed per mixture; kl_penalty 1e-3.
DESIGN_POINTS = 10
DESIGN_ALPHA = 3.0
SCORE_NOISE = 0.002

# How close to the true optimum (0.6898; the current mixture is 0.0101 below it), measured over
# design seeds 0-39: median gap 0.0002, 90th percentile 0.0021, worst 0.0066, every design above
# the current mixture. The tail is the log-linear model's: a design with a point near a corner
# makes log(w + 0.01) steep where the true response saturates. (Flat Dirichlet(1) designs of 6
# points are worse: 8 of 40 designs then propose a mixture below the current one, worst gap 0.039;
# the `linear` model always goes to a corner, 0.05 below the optimum.)
# Design seed 0 alone: gap 0.0001; TOLERANCE = 0.0005 is 5% of the current mixture's gap.
TOLERANCE = 0.0005
MEDIAN_TOLERANCE = 0.0005  # measured 0.0002, x2.5
P90_TOLERANCE = 0.005  # measured 0.0021, x2.4


def true_scores(w: np.ndarray) -> dict[str, float]:
    return dict(zip(CATEGORIES, (float(s) for s in A - B * np.exp(-T @ w)), strict=True))


def true_score(w) -> float:
    w = np.array([w.get(n, 0.0) for n in SOURCES]) if isinstance(w, dict) else np.asarray(w)
    return float(np.mean(list(true_scores(w).values())))


def true_optimum(max_change: float = 1.0) -> tuple[np.ndarray, float]:
    """The true argmax over the simplex (within max_change of CURRENT): SLSQP from several starts,
    checked against a 0.005 grid."""
    current = np.array([CURRENT[n] for n in SOURCES])
    box = [(max(0.0, c - max_change), min(1.0, c + max_change)) for c in current]
    best = None
    for start in [current, np.full(3, 1 / 3), np.array([0.6, 0.2, 0.2]), np.array([0.2, 0.6, 0.2])]:
        start = np.clip(start, [b[0] for b in box], [b[1] for b in box])
        result = minimize(
            lambda w: -true_score(w),
            start,
            method="SLSQP",
            bounds=box,
            constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0}],
            options={"ftol": 1e-14, "maxiter": 1000},
        )
        if result.success and (best is None or result.fun < best.fun):
            best = result
    a, b = np.meshgrid(np.linspace(0, 1, 201), np.linspace(0, 1, 201))
    grid = np.stack([a.ravel(), b.ravel(), 1 - a.ravel() - b.ravel()], axis=1)
    inside = np.all((grid >= [lo - 1e-9 for lo, _ in box]) & (grid <= [hi + 1e-9 for _, hi in box]), axis=1)
    on_grid = float(np.mean(A - B * np.exp(-grid[inside] @ T.T), axis=1).max())
    assert -best.fun >= on_grid - 1e-9
    return best.x, -best.fun


def ablation_runs(mixtures, seed_offsets=(0.0,), noise=0.0, seed=0):
    """One `ablate` run per mixture and seed offset, scored by the hidden response (+ offset, + noise)."""
    rng = np.random.default_rng(1000 + seed)
    runs = []
    for i, w in enumerate(mixtures):
        weights = dict(zip(SOURCES, (float(x) for x in w), strict=True))
        for s, offset in enumerate(seed_offsets):
            scores = {c: v + offset + (rng.normal(0, noise) if noise else 0.0) for c, v in true_scores(w).items()}
            runs.append(SweepRun(f"ablate-mix{i}-seed{s}", "ablate", (f"mix{i}",), weights, scores, seed=s))
    return runs


def design(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(np.full(len(SOURCES), DESIGN_ALPHA), size=DESIGN_POINTS)


def inputs(runs, max_change=1.0):
    limits = {n: SourceLimits(available_tokens=PLENTY) for n in SOURCES}
    return RebalanceInputs(
        stage="s1",
        next_stage="s2",
        metrics={},
        previous_metrics=None,
        mixture=dict(CURRENT),
        constraints=Constraints(limits, max_change, 1000),
        sweep_runs=list(runs),
    )


def regression(max_change=1.0, **kw):
    settings = {"kl_penalty": 1e-3, **kw}
    return RebalanceConfig(policy="regression", max_change=max_change, regression=RegressionConfig(**settings))


def test_regression_proposal_scores_near_the_true_optimum():
    _, best = true_optimum()
    data = inputs(ablation_runs(design(0), noise=SCORE_NOISE))
    p = propose(regression(), data)
    assert violations(p.weights, CURRENT, data.constraints) == []
    gap = best - true_score(p.weights)
    assert gap <= TOLERANCE, f"proposal {p.weights} is {gap:.4f} below the true optimum {best:.4f}"
    assert true_score(p.weights) > true_score(CURRENT)
    assert p.explanation[0].startswith("regression: log_linear fit on 10 ablation runs (10 mixtures)")
    assert [line.split(" coefficient")[0] for line in p.explanation[1:]] == [f"regression: {n}" for n in SOURCES]


def test_regression_over_many_ablation_designs_beats_the_current_mixture_and_is_near_the_optimum():
    _, best = true_optimum()
    gaps = []
    for seed in range(40):
        data = inputs(ablation_runs(design(seed), noise=SCORE_NOISE, seed=seed))
        p = propose(regression(), data)
        assert violations(p.weights, CURRENT, data.constraints) == []
        assert true_score(p.weights) > true_score(CURRENT), f"design {seed}: {p.weights} is worse than the current"
        gaps.append(best - true_score(p.weights))
    assert np.median(gaps) <= MEDIAN_TOLERANCE
    assert np.quantile(gaps, 0.9) <= P90_TOLERANCE


def test_regression_within_the_seed_noise_keeps_the_mixture():
    # three seeds per mixture, offset -d, 0, +d: the fit (on the means) is the noiseless one, the
    # pooled seed spread is d. The predicted gain (+0.016) is far below d = 0.05: no change.
    runs = ablation_runs(design(0), seed_offsets=(-0.05, 0.0, 0.05))
    p = propose(regression(), inputs(runs))
    assert p.weights == pytest.approx(CURRENT)
    assert len(p.explanation) == 1 and "within the seed noise (1 sd = 0.0500); no change" in p.explanation[0]
    # the same runs with a seed spread of 0.001: the gain is significant, the mixture moves
    runs = ablation_runs(design(0), seed_offsets=(-0.001, 0.0, 0.001))
    p = propose(regression(), inputs(runs))
    assert p.weights != pytest.approx(CURRENT) and "seed noise sd 0.0010" in p.explanation[0]
    assert true_score(p.weights) > true_score(CURRENT)


def test_regression_with_fewer_mixtures_than_min_runs_keeps_the_mixture():
    # 2 distinct mixtures (3 seeds each: 6 runs) against min_runs 3
    runs = ablation_runs(design(0)[:2], seed_offsets=(-0.001, 0.0, 0.001))
    p = propose(regression(min_runs=3), inputs(runs))
    assert p.weights == pytest.approx(CURRENT)
    assert p.explanation == ["regression: 2 distinct ablation mixtures recorded (needs 3); no change"]
    p = propose(regression(), inputs([]))
    assert p.weights == pytest.approx(CURRENT) and "0 distinct ablation mixtures" in p.explanation[0]


def test_regression_respects_max_change_and_still_moves_the_right_way():
    # unconstrained, the optimum moves math up by ~0.14 and prose down by ~0.19; with max_change
    # 0.1 neither can get there
    optimum, _ = true_optimum()
    _, best_within = true_optimum(max_change=0.1)
    data = inputs(ablation_runs(design(0), noise=SCORE_NOISE), max_change=0.1)
    p = propose(regression(max_change=0.1), data)
    assert violations(p.weights, CURRENT, data.constraints) == []
    assert max(abs(p.weights.get(n, 0.0) - CURRENT[n]) for n in SOURCES) <= 0.1 + 1e-6
    for i, name in enumerate(SOURCES):
        wanted = optimum[i] - CURRENT[name]
        if abs(wanted) > 0.05:
            assert (p.weights[name] - CURRENT[name]) * wanted > 0, f"{name} moved away from the optimum"
    assert p.weights["prose"] == pytest.approx(CURRENT["prose"] - 0.1, abs=1e-6)  # the bound binds
    assert true_score(p.weights) > true_score(CURRENT)
    assert best_within - true_score(p.weights) <= TOLERANCE
