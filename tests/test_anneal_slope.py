"""`anneal_slope` on recorded sweep members: centred slopes of the bpb objective move weight from
the sources whose annealing hurt to those whose annealing helped; a gain within the control's
measured spread over seeds moves nothing; the move is bounded by the step and the constraints."""

import pytest

from smollm.config import AnnealSlopeConfig, RebalanceConfig
from smollm.rebalance import SweepRun, propose
from smollm.rebalance.anneal_slope import measured_slopes
from tests.test_rebalance import inputs

MIXTURE = {"prose": 0.5, "code": 0.3, "math": 0.2}
CONTROL = {"knowledge": 2.00, "code": 1.50, "math": 0.80}


def member(name, candidate, bpb, seed=0, share=0.3):
    control = f"control-{seed}"
    return SweepRun(name, "anneal", (candidate,), {}, {}, control=control, share=share, seed=seed, bpb=bpb)


def controls(*spreads):
    """The control at seeds 0, 1, ...: each category's bpb shifted by the seed's spread."""
    return [
        SweepRun(f"control-{seed}", "anneal", (), MIXTURE, {}, seed=seed, bpb={c: v + d for c, v in CONTROL.items()})
        for seed, d in enumerate(spreads)
    ]


def shifted(**deltas):
    return {c: v + deltas.get(c, 0.0) for c, v in CONTROL.items()}


def policy(**kw):
    return RebalanceConfig(policy="anneal_slope", anneal_slope=AnnealSlopeConfig(**kw), max_change=0.3)


def test_weight_moves_from_the_source_whose_annealing_hurt_to_the_one_whose_helped():
    runs = [
        *controls(0.0, 0.002),
        member("prose", "prose", shifted(knowledge=-0.06, code=0.02, math=0.02)),  # net -0.02/3 bpb
        member("code", "code", shifted(knowledge=0.03, code=-0.03, math=0.03)),  # net +0.01
        member("math", "math", shifted(knowledge=0.05, code=0.05, math=-0.04)),  # net +0.02: hurt
    ]
    proposal = propose(policy(step=0.2), inputs(runs=runs, mixture=MIXTURE))
    assert proposal.weights["prose"] > MIXTURE["prose"]
    assert proposal.weights["math"] < MIXTURE["math"]
    assert abs(sum(proposal.weights.values()) - 1) < 1e-9
    rows = {r["candidate"]: r for r in proposal.evidence}
    assert rows["prose"]["gain"] == pytest.approx(0.02 / 3, abs=1e-6)  # objective up = bpb down
    assert rows["prose"]["centred_slope"] > rows["code"]["centred_slope"] > rows["math"]["centred_slope"]
    assert all(r["significant"] for r in rows.values())
    assert any("control objective" in line and "over 2 seeds" in line for line in proposal.explanation)
    # the moves did not sum to 0 and no bound was hit: the projection says so, naming no bound
    shared = [line for line in proposal.explanation if line.startswith("constraint:")]
    assert shared and all(line.endswith("(the targets summed to 0.8490, not 1)") for line in shared)


def test_centring_removes_the_curvature_every_member_shares():
    # every candidate "hurts" (all move 30% away from the mixture), prose least: prose still rises
    runs = [
        *controls(0.0, 0.001),
        member("prose", "prose", shifted(knowledge=0.01, code=0.01, math=0.01)),
        member("code", "code", shifted(knowledge=0.04, code=0.04, math=0.04)),
        member("math", "math", shifted(knowledge=0.05, code=0.05, math=0.05)),
    ]
    slopes, _ = measured_slopes(policy(), inputs(runs=runs, mixture=MIXTURE))
    assert all(s.slope < 0 for s in slopes)
    proposal = propose(policy(), inputs(runs=runs, mixture=MIXTURE))
    assert proposal.weights["prose"] > MIXTURE["prose"]


def test_a_gain_within_the_control_seed_spread_moves_nothing():
    runs = [
        *controls(0.0, 0.03),  # the control itself moves 0.03 bpb between seeds
        member("prose", "prose", shifted(knowledge=-0.01)),
        member("code", "code", shifted(code=0.01)),
    ]
    proposal = propose(policy(), inputs(runs=runs, mixture=MIXTURE))
    assert proposal.weights == pytest.approx(MIXTURE)
    assert proposal.evidence and not any(r["significant"] for r in proposal.evidence)
    assert any("within" not in line and "no change" in line for line in proposal.explanation)


def test_a_source_not_in_the_mixture_is_brought_in_when_its_annealing_helps():
    runs = [
        *controls(0.0, 0.001),
        member("prose", "prose", shifted(knowledge=-0.01)),
        member("extra", "extra", shifted(knowledge=-0.05, code=-0.02, math=-0.02)),
    ]
    proposal = propose(policy(step=0.1), inputs(runs=runs, mixture=MIXTURE))
    assert proposal.weights["extra"] == pytest.approx(0.1, abs=1e-6)


def test_the_epoch_cap_binds_and_says_so():
    runs = [*controls(0.0, 0.001), member("math", "math", shifted(math=-0.2)), member("code", "code", shifted())]
    capped = {"math": {"available_tokens": 100, "max_epochs": 2.0, "consumed_tokens": 150}}
    proposal = propose(policy(), inputs(runs=runs, mixture=MIXTURE, next_tokens=1000, **capped))
    assert proposal.weights["math"] == pytest.approx(0.05, abs=1e-6)  # 50 tokens left of 200
    assert any(line.startswith("constraint: math") and "epoch" in line for line in proposal.explanation)


def test_accuracy_signal_reads_the_category_scores():
    acc = [
        SweepRun("control-0", "anneal", (), MIXTURE, {"math": 0.2}, seed=0),
        SweepRun("control-1", "anneal", (), MIXTURE, {"math": 0.21}, seed=1),
        SweepRun("math", "anneal", ("math",), {}, {"math": 0.4}, control="control-0", share=0.3),
        SweepRun("code", "anneal", ("code",), {}, {"math": 0.2}, control="control-0", share=0.3),
    ]
    proposal = propose(policy(signal="accuracy"), inputs(runs=acc, mixture=MIXTURE))
    assert proposal.weights["math"] > MIXTURE["math"]


def test_without_annealing_runs_the_mixture_is_kept():
    proposal = propose(policy(), inputs(mixture=MIXTURE))
    assert proposal.weights == pytest.approx(MIXTURE)
    assert "no annealing runs" in proposal.explanation[0]


def test_members_evaluate_only_what_the_policy_reads_of_them():
    assert policy().member_eval_kinds == ("bpb",)  # bits per byte: the bpb tasks alone
    assert policy(signal="accuracy").member_eval_kinds == ()  # accuracy: the whole suite
    assert RebalanceConfig(policy="anneal_gain").member_eval_kinds == ()
    assert RebalanceConfig(policy="rules").member_eval_kinds == ()
