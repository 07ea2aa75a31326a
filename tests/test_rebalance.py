"""The policies on hand-made inputs: which signal moves which source (before which LR phase),
bounded moves, constraints, noise, explanations, and the written YAML."""

import dataclasses

import pytest
import yaml

from smollm.config import AnnealGainConfig, RebalanceConfig, RuleConfig
from smollm.rebalance import (
    GENERATED_MARK,
    Constraints,
    Infeasible,
    RebalanceInputs,
    SourceLimits,
    SweepRun,
    propose,
    violations,
    write_mixture,
)
from smollm.schema import ConfigError, from_dict

CURRENT = {"prose": 0.6, "code": 0.3, "math": 0.1}
PLENTY = 10**9


def limits(**kw):
    sources = {
        "prose": SourceLimits(min_weight=0.1, available_tokens=PLENTY),
        "code": SourceLimits(available_tokens=PLENTY),
        "math": SourceLimits(max_weight=0.5, available_tokens=PLENTY),
        "extra": SourceLimits(available_tokens=PLENTY),
    }
    for name, change in kw.items():
        sources[name] = SourceLimits(**{**vars(sources[name]), **change})
    return sources


def inputs(
    metrics=None,
    previous=None,
    runs=(),
    max_change=0.2,
    next_tokens=1000,
    mixture=CURRENT,
    next_decay=None,
    later=(),
    **kw,
):
    return RebalanceInputs(
        stage="s1",
        next_stage="s2",
        metrics=dict(metrics or {}),
        previous_metrics=previous,
        mixture=dict(mixture),
        constraints=Constraints(limits(**kw), max_change, next_tokens, later),
        sweep_runs=list(runs),
        next_decay_fraction=next_decay,
    )


def rules(*extra, **kw):
    rule = RuleConfig(name="math_low", metric="category/math", below=0.5, raise_sources=["math"], by=0.1)
    return RebalanceConfig(policy="rules", rules=[rule, *extra], **kw)


def test_rule_fires_below_threshold_and_others_shrink_in_proportion():
    p = propose(rules(), inputs({"category/math": 0.3}))
    assert p.weights["math"] == pytest.approx(0.2)
    assert p.weights["prose"] == pytest.approx(0.8 * 0.6 / 0.9, abs=1e-6)
    assert p.weights["code"] == pytest.approx(0.8 * 0.3 / 0.9, abs=1e-6)
    assert sum(p.weights.values()) == pytest.approx(1.0)
    assert p.explanation == ["rule math_low: category/math=0.3000 < 0.5; +math by 0.1"]


def test_rule_does_not_fire_above_threshold():
    p = propose(rules(), inputs({"category/math": 0.7}))
    assert p.weights == pytest.approx(CURRENT)
    assert p.explanation == ["rule math_low: category/math=0.7000 not < 0.5; no change"]


def test_a_rule_on_the_change_since_the_previous_stage():
    stalled = RuleConfig(name="code_stalled", metric="category/code", below=0.01, change=True, raise_sources=["code"])
    config = RebalanceConfig(rules=[stalled])
    p = propose(config, inputs({"category/code": 0.40}, previous={"category/code": 0.395}))
    assert p.weights["code"] == pytest.approx(0.35) and "change of category/code=+0.0050" in p.explanation[0]
    p = propose(config, inputs({"category/code": 0.45}, previous={"category/code": 0.40}))
    assert p.weights == pytest.approx(CURRENT)
    p = propose(config, inputs({"category/code": 0.45}))  # a first stage has no change
    assert p.weights == pytest.approx(CURRENT) and "no previous stage value" in p.explanation[0]


def test_introduce_and_retire_move_by_bounded_steps():
    rule = RuleConfig(
        name="swap", metric="category/math", below=1, introduce_sources=["extra"], retire_sources=["prose"], by=0.1
    )
    p = propose(RebalanceConfig(rules=[rule], max_change=0.2), inputs({"category/math": 0.0}))
    assert p.weights["extra"] == pytest.approx(0.1)
    assert p.weights["prose"] == pytest.approx(0.4)  # retiring: at most max_change per stage
    assert any(line.startswith("constraint: prose") and "max_change" in line for line in p.explanation)
    assert not violations(p.weights, CURRENT, inputs().constraints)


def test_max_change_bounds_the_move():
    config = RebalanceConfig(
        rules=[RuleConfig(name="r", metric="m", below=1, raise_sources=["math"], by=0.5)], max_change=0.15
    )
    p = propose(config, inputs({"m": 0}, max_change=0.15))
    assert p.weights["math"] == pytest.approx(0.25, abs=1e-6)


def test_epoch_cap_limits_a_source_given_tokens_left():
    # math: 4 epochs of 1000 tokens, 3700 consumed -> 300 left for a 1000-token stage -> weight <= 0.3
    capped = {"available_tokens": 1000, "consumed_tokens": 3700}
    p = propose(rules(max_change=1.0), inputs({"category/math": 0.0}, max_change=1.0, math=capped))
    assert p.weights["math"] == pytest.approx(0.2)
    capped["consumed_tokens"] = 3900
    p = propose(rules(max_change=1.0), inputs({"category/math": 0.0}, max_change=1.0, math=capped))
    assert p.weights["math"] == pytest.approx(0.1, abs=1e-6)
    assert any("epoch cap" in line for line in p.explanation)


def test_the_epoch_cap_leaves_the_later_stages_room_to_come_down_by_max_change():
    # math: 4 epochs of 1000 tokens, 3600 consumed -> 400 left. Alone, the next 1000-token stage
    # could take 0.4; with one more 1000-token stage after it, whose weight can drop by at most
    # max_change 0.3, it takes w + (w - 0.3) <= 0.4 -> w <= 0.35, and that stage still fits.
    capped = {"available_tokens": 1000, "consumed_tokens": 3600}
    config = RebalanceConfig(
        rules=[RuleConfig(name="r", metric="m", below=1, raise_sources=["math"], by=0.5)], max_change=0.3
    )
    alone = propose(config, inputs({"m": 0}, max_change=0.3, math=capped))
    assert alone.weights["math"] == pytest.approx(0.4, abs=1e-6)  # max_change (and the cap) bind
    ahead = propose(config, inputs({"m": 0}, max_change=0.3, later=(1000,), math=capped))
    assert ahead.weights["math"] == pytest.approx(0.35, abs=1e-6)
    (line,) = [r for r in ahead.explanation if r.startswith("constraint: math")]
    assert "1000 later ones that come down by at most max_change 0.3 a stage" in line
    left = 400 - 1000 * ahead.weights["math"]  # the stage after: down by 0.3 fits what is left
    assert (ahead.weights["math"] - 0.3) * 1000 <= left + 1e-6


def test_missing_metric_names_the_rule():
    with pytest.raises(ValueError, match=r"rebalance.rules.math_low.metric: 'category/math' was not logged"):
        propose(rules(), inputs({"category/code": 0.3}))


def test_a_rule_for_one_lr_phase_fires_only_before_a_stage_in_that_phase():
    anneal = RuleConfig(
        name="anneal_math", metric="category/math", below=0.5, phase="decay", raise_sources=["math"], by=0.1
    )
    config = RebalanceConfig(rules=[anneal])
    p = propose(config, inputs({"category/math": 0.3}, next_decay=0.0))
    assert p.weights == pytest.approx(CURRENT)
    assert p.explanation == ["rule anneal_math: s2 holds the LR, the rule is for decay stages; no change"]
    p = propose(config, inputs({"category/math": 0.3}, next_decay=1.0))
    assert p.weights["math"] == pytest.approx(0.2)
    stable = RebalanceConfig(rules=[dataclasses.replace(anneal, name="stable_math", phase="stable")])
    assert propose(stable, inputs({"category/math": 0.3}, next_decay=0.0)).weights["math"] == pytest.approx(0.2)
    p = propose(stable, inputs({"category/math": 0.3}, next_decay=0.2))  # any decay is an anneal
    assert p.explanation == ["rule stable_math: s2 decays the LR, the rule is for stable stages; no change"]
    with pytest.raises(ValueError, match=r"^rebalance.rules.anneal_math.phase: 'decay' needs the next stage's"):
        propose(config, inputs({"category/math": 0.3}))  # inputs recorded without the next stage's decay
    anyway = RebalanceConfig(rules=[dataclasses.replace(anneal, phase="any")])
    assert propose(anyway, inputs({"category/math": 0.3})).weights["math"] == pytest.approx(0.2)


def test_a_rule_may_skip_a_metric_that_was_not_logged():
    code = RuleConfig(name="code_low", metric="category/code", below=0.5, if_missing="skip", raise_sources=["code"])
    p = propose(rules(code), inputs({"category/math": 0.3}))
    assert p.weights["math"] == pytest.approx(0.2) and p.weights["code"] < CURRENT["code"]  # math_low still fires
    assert p.explanation[1] == "rule code_low: category/code was not logged (if_missing: skip); no change"
    strict = dataclasses.replace(code, if_missing="error")
    with pytest.raises(ValueError, match=r"rebalance.rules.code_low.metric: 'category/code' was not logged"):
        propose(rules(strict), inputs({"category/math": 0.3}))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("phase", "warmup", "rebalance.rules[0].phase: 'warmup' is not one of ['any', 'stable', 'decay']"),
        ("if_missing", "ignore", "rebalance.rules[0].if_missing: 'ignore' is not one of ['error', 'skip']"),
    ],
)
def test_a_bad_rule_field_names_the_field_and_the_value(field, value, message):
    rule = {"name": "r", "metric": "category/math", "below": 0.5, "raise_sources": ["math"], field: value}
    with pytest.raises(ConfigError) as err:
        from_dict(RebalanceConfig, {"rules": [rule]}, "rebalance")
    assert str(err.value) == message


def test_infeasible_constraints_say_which():
    with pytest.raises(Infeasible, match=r"lower bounds sum to 1.2000 > 1: .*code >= 0.5000 \(min_weight=0.5\)"):
        propose(rules(), inputs({"category/math": 0.9}, prose={"min_weight": 0.7}, code={"min_weight": 0.5}))
    # math must drop to its epoch cap (0.0) but may only move by max_change 0.05 per stage
    exhausted = {"available_tokens": 1000, "consumed_tokens": 4000}
    with pytest.raises(Infeasible, match=r"infeasible for math: max_change: 0.1000-0.05 .* but epoch cap"):
        propose(rules(max_change=0.05), inputs({"category/math": 0.9}, max_change=0.05, math=exhausted))


def anneal_runs(gains: dict[str, list[float]], category="math"):
    """Members of an annealing sweep: per seed a control and each candidate `gain` above it."""
    runs = []
    for seed in range(max(len(g) for g in gains.values())):
        control = f"anneal-control-seed{seed}"
        base = 0.3 + 0.01 * seed
        runs.append(SweepRun(control, "anneal", (), CURRENT, {category: base, "code": 0.2}, seed=seed))
        for name, per_seed in gains.items():
            runs.append(
                SweepRun(
                    f"anneal-{name}-0.6-seed{seed}",
                    "anneal",
                    (name,),
                    {},
                    {category: base + per_seed[seed], "code": 0.2},
                    control=control,
                    share=0.6,
                    seed=seed,
                )
            )
    return runs


def test_anneal_gain_moves_weight_towards_the_larger_gain():
    config = RebalanceConfig(policy="anneal_gain", anneal_gain=AnnealGainConfig(step=0.2))
    p = propose(config, inputs(runs=anneal_runs({"math": [0.06, 0.07], "code": [0.02, 0.03]})))
    # gains: the mean over the categories (math, code) of the deltas -> math 0.0325, code 0.0125
    assert p.weights["math"] - CURRENT["math"] == pytest.approx(0.2 * 0.0325 / 0.045, abs=1e-6)
    assert p.weights["code"] - CURRENT["code"] == pytest.approx(0.2 * 0.0125 / 0.045, abs=1e-5)
    assert p.weights["prose"] == pytest.approx(1 - 0.1 - 0.3 - 0.2, abs=1e-5)
    assert "math (share 0.6) gains +0.0325 ± 0.0035 over 2 seeds: raise math by 0.1444" in p.explanation[1]
    math_only = RebalanceConfig(policy="anneal_gain", priorities={"math": 1.0})
    p = propose(math_only, inputs(runs=anneal_runs({"math": [0.06, 0.07], "code": [0.02, 0.03]})))
    assert p.weights["math"] - CURRENT["math"] == pytest.approx(0.2 * 0.065 / 0.09, abs=1e-6)


def test_anneal_gain_within_the_seed_noise_does_not_move_the_mixture():
    config = RebalanceConfig(policy="anneal_gain", noise_sigmas=1.0)
    p = propose(config, inputs(runs=anneal_runs({"math": [0.05, -0.03], "code": [0.01, -0.005]})))
    assert p.weights == pytest.approx(CURRENT)
    assert all("within the noise" in line for line in p.explanation)


def test_anneal_gain_without_annealing_runs_keeps_the_mixture():
    p = propose(RebalanceConfig(policy="anneal_gain"), inputs())
    assert p.weights == pytest.approx(CURRENT) and "no annealing runs" in p.explanation[0]


def test_a_proposal_reads_as_markdown_and_the_yaml_has_provenance(tmp_path):
    p = propose(rules(), inputs({"category/math": 0.3}))
    text = p.markdown("Next mixture for s2")
    assert "| math | 0.1000 | 0.2000 | +0.1000 |" in text and "- rule math_low" in text
    conf = tmp_path / "conf"
    (conf / "mixture").mkdir(parents=True)
    (conf / "mixture" / "mine.yaml").write_text("name: mine\nweights: {prose: 1.0}\n")
    gen = tmp_path / "gen"
    path = write_mixture(
        p,
        name="demo-stage2-abc",
        generated_dir=gen,
        hand_written_dir=conf,
        provenance={"policy": "rules", "mlflow_runs": {"stage": "r1"}},
    )
    text = path.read_text()
    assert text.startswith(GENERATED_MARK) and "r1" in text and "math: 0.1000 -> 0.2000 (+0.1000)" in text
    assert "#   rule math_low: category/math=0.3000 < 0.5; +math by 0.1" in text
    assert yaml.safe_load(text) == {"name": "demo-stage2-abc", "weights": p.weights}
    with pytest.raises(ValueError, match="hand-written"):
        write_mixture(p, name="mine", generated_dir=gen, hand_written_dir=conf, provenance={})
    (gen / "mixture" / "user.yaml").write_text("name: user\n")
    with pytest.raises(ValueError, match="not written by smollm"):
        write_mixture(p, name="user", generated_dir=gen, hand_written_dir=conf, provenance={})


def test_same_decision_keeps_the_original_file_and_provenance(tmp_path):
    p = propose(rules(), inputs({"category/math": 0.3}))
    kwargs = {"name": "demo-s2", "generated_dir": tmp_path / "gen", "hand_written_dir": tmp_path / "conf"}
    path = write_mixture(p, provenance={"mlflow_runs": {"stage": "first"}}, **kwargs)
    write_mixture(p, provenance={"mlflow_runs": {"stage": "second"}}, **kwargs)
    assert "first" in path.read_text() and "second" not in path.read_text()
    other = propose(rules(), inputs({"category/math": 0.9}))
    write_mixture(other, provenance={"mlflow_runs": {"stage": "third"}}, **kwargs)
    assert "third" in path.read_text() and yaml.safe_load(path.read_text())["weights"] == other.weights


def test_inputs_round_trip_through_json():
    data = inputs(
        {"category/math": 0.3}, previous={"category/math": 0.2}, runs=anneal_runs({"math": [0.1]}), next_decay=1.0
    )
    assert RebalanceInputs.from_dict(yaml.safe_load(yaml.safe_dump(data.to_dict()))) == data
    recorded_before = {k: v for k, v in data.to_dict().items() if k != "next_decay_fraction"}
    assert RebalanceInputs.from_dict(recorded_before).next_decay_fraction is None
