"""Properties of `propose` on random inputs (hypothesis): every policy either refuses with an
`Infeasible` that names a source and a bound, or returns a mixture that breaks no constraint,
with an explanation whose constraint lines cite only bounds that bind; a mixture that already
meets the constraints is kept by `keep` and never refused; a refusal happens exactly when no
valid mixture exists; and `project` returns the closest point within the bounds."""

import math
import re

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from smollm.config import AnnealGainConfig, RebalanceConfig, RegressionConfig, RuleConfig
from smollm.rebalance import Constraints, Infeasible, RebalanceInputs, SourceLimits, SweepRun, propose, violations
from smollm.rebalance.constraints import Bounds, project, source_bounds

SOURCES = ["web", "code", "math", "books", "wiki", "synth"]
CATEGORIES = ["math", "code", "knowledge", "reasoning"]
POLICIES = ["keep", "rules", "anneal_gain", "regression"]
PLENTY = 10**9
BOUND = re.compile(r"min_weight|max_weight|max_change|epoch cap")
CONSTRAINT_LINE = re.compile(r"constraint: (?P<name>\S+) \S+ -> \S+ \((?P<why>.*)\)$")

# derandomized (the same examples on every run, no example database written); ~1 s per test
SETTINGS = settings(
    max_examples=100, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)

# weights and bounds from round values too, so that bounds meet exactly (sum of lows == 1, ...)
unit = st.one_of(st.floats(0.0, 1.0), st.sampled_from([0.0, 0.05, 0.1, 0.2, 0.25, 0.3, 0.5, 0.6, 1.0]))
score = st.floats(0.0, 1.0)


def normalised(raw: list[float]) -> list[float]:
    total = sum(raw)
    return [r / total for r in raw]


@st.composite
def mixtures(draw, names, min_positive=1):
    """Weights over `names` summing to 1, some possibly 0."""
    raw = draw(st.lists(st.one_of(st.just(0.0), unit), min_size=len(names), max_size=len(names)))
    if sum(1 for r in raw if r > 0) < min_positive:
        raw[draw(st.integers(0, len(names) - 1))] = 1.0
    return dict(zip(names, normalised(raw), strict=True))


@st.composite
def any_limits(draw, next_stage_tokens):
    """Any limits (min <= max), loose more often than not, so that about half the scenarios are
    feasible."""
    min_weight = draw(st.one_of(st.just(0.0), st.just(0.0), unit.map(lambda u: 0.5 * u)))
    max_weight = draw(st.one_of(st.just(1.0), unit.map(lambda u: min_weight + (1 - min_weight) * u)))
    if draw(st.booleans()):  # no epoch cap to speak of
        return SourceLimits(min_weight=min_weight, max_weight=max_weight, available_tokens=PLENTY)
    available = draw(st.integers(0, 4 * next_stage_tokens))
    max_epochs = draw(st.sampled_from([0.5, 1.0, 2.0, 4.0]))
    consumed = draw(st.integers(0, int(max_epochs * available) + next_stage_tokens // 10))
    return SourceLimits(min_weight, max_weight, max_epochs, available, consumed)


@st.composite
def limits_around(draw, weight, next_stage_tokens):
    """Limits that `weight` meets: min <= weight <= max, and its epoch cap at least `weight`."""
    min_weight = weight * draw(unit)
    max_weight = weight + (1 - weight) * draw(unit)
    if draw(st.booleans()):
        return SourceLimits(min_weight=min_weight, max_weight=max_weight, available_tokens=PLENTY)
    max_epochs = draw(st.sampled_from([0.5, 1.0, 2.0, 4.0]))
    needed = math.ceil(weight * next_stage_tokens)  # tokens the next stage takes at `weight`
    available = math.ceil((needed + draw(st.integers(0, next_stage_tokens))) / max_epochs)
    consumed = draw(st.integers(0, max(0, int(max_epochs * available) - needed)))
    return SourceLimits(min_weight, max_weight, max_epochs, available, consumed)


@st.composite
def rule_sets(draw, names, metrics):
    rules = []
    for i in range(draw(st.integers(0, 4))):
        picked = draw(st.lists(st.sampled_from(names), min_size=1, max_size=len(names), unique=True))
        actions = {"raise_sources": [], "lower_sources": [], "introduce_sources": [], "retire_sources": []}
        for name in picked:
            actions[draw(st.sampled_from(sorted(actions)))].append(name)
        threshold = draw(st.floats(-0.5, 1.0))
        side = draw(st.sampled_from(["below", "above"]))
        rules.append(
            RuleConfig(
                name=f"rule{i}",
                metric=draw(st.sampled_from(sorted(metrics))),
                change=draw(st.booleans()),
                by=draw(st.one_of(st.floats(0.01, 1.0), st.sampled_from([0.05, 0.1, 0.2, 0.5, 1.0]))),
                **{side: threshold},
                **actions,
            )
        )
    return rules


@st.composite
def anneal_runs(draw, names, mixture):
    """Per seed a control and each candidate (set) at each share, wired to that seed's control."""
    candidate_sets = draw(
        st.lists(
            st.lists(st.sampled_from(names), min_size=1, max_size=2, unique=True).map(tuple),
            max_size=3,
            unique=True,
        )
    )
    shares = draw(st.lists(st.sampled_from([0.3, 0.6, 0.9]), min_size=1, max_size=2, unique=True))
    categories = draw(st.lists(st.sampled_from(CATEGORIES), min_size=1, max_size=3, unique=True))
    runs = []
    for seed in range(draw(st.integers(1, 3))):
        control = f"anneal-control-seed{seed}"
        base = {c: draw(score) for c in categories}
        if draw(st.integers(0, 9)) > 0:  # now and then a control that was not recorded
            runs.append(SweepRun(control, "anneal", (), dict(mixture), base, seed=seed))
        for candidates in candidate_sets:
            for share in shares:
                scores = {c: base[c] + draw(st.floats(-0.2, 0.2)) for c in categories}
                label = "+".join(candidates)
                runs.append(
                    SweepRun(
                        f"anneal-{label}-{share}-seed{seed}",
                        "anneal",
                        candidates,
                        {},
                        scores,
                        control=control,
                        share=share,
                        seed=seed,
                    )
                )
    return runs


@st.composite
def ablation_runs(draw, names):
    """Data-ablation runs: random mixtures over `names`, each trained with one or more seeds."""
    categories = draw(st.lists(st.sampled_from(CATEGORIES), min_size=1, max_size=3, unique=True))
    runs = []
    for i in range(draw(st.integers(0, 8))):
        weights = draw(mixtures(names))
        for seed in range(draw(st.integers(1, 2))):
            scores = {c: draw(score) for c in categories} if draw(st.integers(0, 9)) > 0 else {}
            runs.append(SweepRun(f"ablate-mix{i}-seed{seed}", "ablate", (f"mix{i}",), weights, scores, seed=seed))
    return runs


@st.composite
def configs(draw, policy, names, metrics, max_change):
    priorities = draw(
        st.one_of(
            st.just({}),
            st.dictionaries(st.sampled_from(CATEGORIES), st.floats(0.0, 2.0), min_size=1).filter(
                lambda p: sum(p.values()) > 0
            ),
        )
    )
    return RebalanceConfig(
        policy=policy,
        rules=draw(rule_sets(names, metrics)) if policy == "rules" else [],
        max_change=max_change,
        priorities=priorities,
        noise_sigmas=draw(st.sampled_from([0.0, 1.0, 2.0])),
        anneal_gain=AnnealGainConfig(
            step=draw(st.sampled_from([0.05, 0.2, 0.5, 1.0])), min_gain=draw(st.sampled_from([0.0, 0.01]))
        ),
        regression=RegressionConfig(
            model=draw(st.sampled_from(["log_linear", "linear"])),
            epsilon=draw(st.sampled_from([0.01, 0.1])),
            ridge=draw(st.sampled_from([0.0, 1e-4, 1e-2])),
            kl_penalty=draw(st.sampled_from([0.0, 1e-3, 0.01, 0.1])),
            min_runs=draw(st.integers(2, 4)),
        ),
    )


@st.composite
def scenarios(draw, policy, feasible_current=False, all_present=False):
    """(config, inputs): 2-6 sources, the current mixture (some at 0, written as 0 or absent), the
    constraints (any, or ones the current mixture meets), metrics, rules and sweep runs."""
    names = SOURCES[: draw(st.integers(2, 6))]
    weights = draw(mixtures(names))
    mixture = {n: w for n, w in weights.items() if w > 0 or all_present or draw(st.booleans())}
    max_change = draw(st.one_of(st.floats(0.01, 1.0), st.sampled_from([0.05, 0.1, 0.2, 0.5, 1.0])))
    next_stage_tokens = draw(st.integers(1, 10_000))
    if feasible_current:
        limits = {n: draw(limits_around(weights[n], next_stage_tokens)) for n in names}
    else:
        # per source: limits its current weight meets, or any (which may conflict with it)
        either = [limits_around(weights[n], next_stage_tokens) | any_limits(next_stage_tokens) for n in names]
        limits = {n: draw(s) for n, s in zip(names, either, strict=True)}
    categories = draw(st.lists(st.sampled_from(CATEGORIES), min_size=1, unique=True))
    metrics = {f"category/{c}": draw(score) for c in categories}
    metrics.update({f"{c}/acc": draw(score) for c in draw(st.lists(st.sampled_from(CATEGORIES), unique=True))})
    previous = draw(
        st.one_of(st.none(), st.dictionaries(st.sampled_from(sorted(metrics)), score)),
    )
    # with all sources present, sweeps and rules stay within the mixture's sources (see below)
    sweep_names = sorted(mixture) if all_present else names
    runs = []
    if policy == "anneal_gain":
        runs = draw(anneal_runs(sweep_names, mixture))
    elif policy == "regression":
        runs = draw(ablation_runs(sweep_names))
    config = draw(configs(policy, sweep_names, metrics, max_change))
    data = RebalanceInputs(
        stage="s1",
        next_stage="s2",
        metrics=metrics,
        previous_metrics=previous,
        mixture=mixture,
        constraints=Constraints(limits, max_change, next_stage_tokens),
        sweep_runs=runs,
    )
    return config, data


def check_proposal_or_refusal(config, data):
    """The property every policy holds; returns the weights, or None when it refused."""
    try:
        p = propose(config, data)
    except Infeasible as error:
        message = str(error)
        assert message.startswith("rebalance: infeasible"), message
        assert any(name in message for name in data.constraints.sources), message
        assert BOUND.search(message), message
        return None
    assert violations(p.weights, data.mixture, data.constraints) == [], (p.weights, p.explanation)
    assert all(math.isfinite(w) and w >= 0 for w in p.weights.values()), p.weights
    assert set(p.weights) <= set(data.constraints.sources)
    assert p.explanation and all(isinstance(line, str) and line for line in p.explanation)
    assert p.policy == config.policy and p.previous == data.mixture
    for line in p.explanation:  # a constraint line cites a source's own bound only when it sits on it
        if found := CONSTRAINT_LINE.match(line):
            name, why = found["name"], found["why"]
            bounds = source_bounds([name], data.mixture, data.constraints)[name]
            if why in (bounds.why_low, bounds.why_high):
                at = bounds.low if why == bounds.why_low else bounds.high
                assert p.weights.get(name, 0.0) == pytest.approx(at, abs=2e-6), (line, p.weights)
    return p.weights


@pytest.mark.parametrize("policy", POLICIES)
@SETTINGS
@given(data=st.data())
def test_every_policy_proposes_a_valid_mixture_or_names_the_conflict(policy, data):
    config, inputs = data.draw(scenarios(policy))
    check_proposal_or_refusal(config, inputs)


@pytest.mark.parametrize("policy", POLICIES)
@SETTINGS
@given(data=st.data())
def test_a_current_mixture_within_the_constraints_is_never_refused(policy, data):
    config, inputs = data.draw(scenarios(policy, feasible_current=True))
    assert violations(inputs.mixture, inputs.mixture, inputs.constraints) == []
    weights = check_proposal_or_refusal(config, inputs)
    assert weights is not None, "refused although the current mixture meets every constraint"
    if policy == "keep":  # up to the rounding to 6 digits (its residue, a few 1e-6, goes to one source)
        for name in set(weights) | set(inputs.mixture):
            assert weights.get(name, 0.0) == pytest.approx(inputs.mixture.get(name, 0.0), abs=1e-5)


def valid_mixture_exists(data: RebalanceInputs) -> bool | None:
    """Directly from the constraints: each source's [lower, upper] (weight bounds, max_change
    around its current weight, epoch cap, [0, 1]) is non-empty and the bounds admit a sum of 1.
    None when the answer hangs on the 1e-6 tolerance (a margin between -1e-5 and -1e-9)."""
    constraints, lowers, uppers = data.constraints, [], []
    for name, before in data.mixture.items():
        limits = constraints.sources[name]
        left = limits.max_epochs * limits.available_tokens - limits.consumed_tokens
        cap = max(0.0, left / constraints.next_stage_tokens)  # used up: nothing more, weight 0
        lowers.append(max(0.0, limits.min_weight, before - constraints.max_change))
        uppers.append(min(1.0, limits.max_weight, before + constraints.max_change, cap))
    margin = min([u - lo for lo, u in zip(lowers, uppers, strict=True)] + [1 - sum(lowers), sum(uppers) - 1])
    if margin >= -1e-9:
        return True
    if margin < -1e-5:
        return False
    return None


@pytest.mark.parametrize("policy", POLICIES)
@SETTINGS
@given(data=st.data())
def test_refused_exactly_when_no_valid_mixture_exists(policy, data):
    # Every declared source is in the current mixture (some at 0) and the rules and sweeps only
    # name those: a valid mixture is then any one over them that `violations` accepts.
    config, inputs = data.draw(scenarios(policy, all_present=True))
    exists = valid_mixture_exists(inputs)
    assume(exists is not None)
    weights = check_proposal_or_refusal(config, inputs)
    assert (weights is not None) == exists, f"valid mixture exists: {exists}, proposal: {weights}"


def test_bounds_that_sum_to_one_at_weights_six_digits_cannot_write_are_met():
    # Found by the properties above: three sources capped at 1/3 each (here by the epoch cap: one
    # epoch of 1 token, for a 3-token stage) leave exactly one valid mixture, the thirds; rounded
    # to 6 digits they sum to 0.999999 and no source has room for the residue.
    thirds = {"web": 1 / 3, "code": 1 / 3, "math": 1 / 3}
    capped = SourceLimits(max_epochs=1.0, available_tokens=1)
    data = RebalanceInputs("s1", "s2", {}, None, thirds, Constraints(dict.fromkeys(thirds, capped), 0.2, 3))
    for policy in POLICIES:
        p = propose(RebalanceConfig(policy=policy), data)
        assert violations(p.weights, thirds, data.constraints) == []
        assert p.weights == pytest.approx(thirds)


@st.composite
def boxes(draw):
    """Random targets (far outside [0, 1] too, as rules' running targets can be) and per-source
    bounds that admit a mixture."""
    names = SOURCES[: draw(st.integers(1, 6))]
    lows = [0.5 * draw(unit) / len(names) for _ in names]
    highs = [lo + (1 - lo) * draw(unit) for lo in lows]
    assume(sum(highs) >= 1)
    bounds = {n: Bounds(lo, hi, "low", "high") for n, lo, hi in zip(names, lows, highs, strict=True)}
    targets = {n: draw(st.floats(-6.0, 6.0)) for n in names}
    return targets, bounds


@SETTINGS
@given(boxes())
def test_project_is_the_closest_point_within_the_bounds(box):
    # the Euclidean projection onto {sum = 1, low <= w <= high} is w_i = clip(t_i - tau) for one
    # tau (KKT): the sources strictly inside their bounds share t_i - w_i = tau, those at their
    # high have t_i - high >= tau, those at their low t_i - low <= tau
    targets, bounds = box
    weights = project(targets, bounds)
    w = {n: weights.get(n, 0.0) for n in bounds}
    assert sum(w.values()) == pytest.approx(1.0, abs=1e-6)
    assert all(bounds[n].low - 1e-6 <= w[n] <= bounds[n].high + 1e-6 for n in bounds)
    tau_min, tau_max = -math.inf, math.inf
    for n, b in bounds.items():
        if b.high - b.low <= 2e-5:  # fixed: says nothing of tau
            continue
        if w[n] >= b.high - 1e-5:
            tau_max = min(tau_max, targets[n] - b.high)
        elif w[n] <= b.low + 1e-5:
            tau_min = max(tau_min, targets[n] - b.low)
        else:
            tau_max, tau_min = min(tau_max, targets[n] - w[n]), max(tau_min, targets[n] - w[n])
    assert tau_min <= tau_max + 1e-5, (targets, w)
