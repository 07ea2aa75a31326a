"""The rules policy: which rule fires, bounded moves, constraints, and the written YAML."""

import pytest
import yaml

from smollm.config import RebalanceConfig, RuleConfig, SourceConfig
from smollm.rebalance import GENERATED_MARK, Bounds, project, propose, write_mixture

SOURCES = {
    "prose": SourceConfig(name="prose", loader="builtin", builtin="stdlib_prose", min_weight=0.1),
    "code": SourceConfig(name="code", loader="builtin", builtin="stdlib_code"),
    "math": SourceConfig(name="math", loader="builtin", builtin="synthetic_math", max_weight=0.5, max_epochs=4),
}
CURRENT = {"prose": 0.6, "code": 0.3, "math": 0.1}
PLENTY = {"prose": 10**9, "code": 10**9, "math": 10**9}


def rules(**kw):
    rule = RuleConfig(name="math_low", metric="category/math", below=0.5, raise_sources=["math"], by=0.1)
    return RebalanceConfig(policy="rules", rules=[rule], **kw)


def run(config, metrics, available=PLENTY, consumed=None, next_tokens=1000):
    return propose(
        config,
        metrics,
        CURRENT,
        SOURCES,
        consumed_tokens=consumed or {},
        available_tokens=available,
        next_stage_tokens=next_tokens,
    )


def test_rule_fires_below_threshold_and_others_shrink_in_proportion():
    p = run(rules(), {"category/math": 0.3})
    assert p.weights["math"] == pytest.approx(0.2)
    assert p.weights["prose"] == pytest.approx(0.8 * 0.6 / 0.9, abs=1e-6)
    assert p.weights["code"] == pytest.approx(0.8 * 0.3 / 0.9, abs=1e-6)
    assert sum(p.weights.values()) == pytest.approx(1.0)
    assert any("math_low" in line and "+math" in line for line in p.explanation)


def test_rule_does_not_fire_above_threshold():
    p = run(rules(), {"category/math": 0.7})
    assert p.weights == pytest.approx(CURRENT)
    assert "no change" in p.explanation[0]


def test_max_change_bounds_the_move():
    config = RebalanceConfig(
        rules=[RuleConfig(name="r", metric="m", below=1, raise_sources=["math"], by=0.5)], max_change=0.15
    )
    p = run(config, {"m": 0})
    assert p.weights["math"] == pytest.approx(0.25, abs=1e-6)


def test_epoch_cap_limits_a_source_given_tokens_left():
    # math: 4 epochs of 1000 tokens, 3700 consumed -> 300 left for a 1000-token stage -> weight <= 0.3
    p = run(rules(max_change=1.0), {"category/math": 0.0}, available={**PLENTY, "math": 1000}, consumed={"math": 3700})
    assert p.weights["math"] == pytest.approx(0.2)
    p = run(rules(max_change=1.0), {"category/math": 0.0}, available={**PLENTY, "math": 1000}, consumed={"math": 3900})
    assert p.weights["math"] == pytest.approx(0.1, abs=1e-6)
    assert any("epoch cap" in line for line in p.explanation)


def test_missing_metric_names_the_rule():
    with pytest.raises(ValueError, match=r"rebalance.rules.math_low.metric: 'category/math' was not logged"):
        run(rules(), {"category/code": 0.3})


def test_infeasible_constraints_say_which():
    bounds = {"a": Bounds(0.7, 1.0), "b": Bounds(0.5, 1.0)}
    with pytest.raises(ValueError, match="minimum weights sum to 1.2000"):
        project({"a": 0.5, "b": 0.5}, bounds)


def test_written_mixture_has_provenance_and_never_replaces_hand_written(tmp_path):
    p = run(rules(), {"category/math": 0.3})
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
    assert yaml.safe_load(text) == {"name": "demo-stage2-abc", "weights": p.weights}
    with pytest.raises(ValueError, match="hand-written"):
        write_mixture(p, name="mine", generated_dir=gen, hand_written_dir=conf, provenance={})
    (gen / "mixture" / "user.yaml").write_text("name: user\n")
    with pytest.raises(ValueError, match="not written by smollm"):
        write_mixture(p, name="user", generated_dir=gen, hand_written_dir=conf, provenance={})


def test_same_decision_keeps_the_original_file_and_provenance(tmp_path):
    p = run(rules(), {"category/math": 0.3})
    kwargs = {"name": "demo-s2", "generated_dir": tmp_path / "gen", "hand_written_dir": tmp_path / "conf"}
    path = write_mixture(p, provenance={"mlflow_runs": {"stage": "first"}}, **kwargs)
    write_mixture(p, provenance={"mlflow_runs": {"stage": "second"}}, **kwargs)
    assert "first" in path.read_text() and "second" not in path.read_text()
    other = run(rules(), {"category/math": 0.9})
    write_mixture(other, provenance={"mlflow_runs": {"stage": "third"}}, **kwargs)
    assert "third" in path.read_text() and yaml.safe_load(path.read_text())["weights"] == other.weights
