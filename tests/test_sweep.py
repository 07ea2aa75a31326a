"""Sweeps without training: members, controls, mixtures, the CLI's multirun parsing, the summary."""

from __future__ import annotations

import json

import pytest

from smollm.schema import ConfigError
from smollm.sweep import (
    anneal_weights,
    format_table,
    make_member,
    plot_deltas,
    summary_rows,
    typed_member_overrides,
    with_controls,
)


def test_members_have_one_canonical_form_and_a_control_per_group():
    members = with_controls(
        "anneal",
        [
            ["anneal.candidate=math", "++anneal.share=0.60"],
            ["anneal.share=0.6", "anneal.candidate=math"],  # the same member, spelled otherwise
            ["anneal.candidate=code", "anneal.share=0.3"],
        ],
    )
    names = [m.name for m in members]
    assert names == ["anneal-control", "anneal-math-0.6", "anneal-code-0.3"]
    control = members[0]
    assert control.is_control and control.overrides == ("anneal.candidate=null",)
    assert all(m.group == () for m in members)


def test_each_seed_gets_its_own_control():
    members = with_controls("ablate", typed_member_overrides("ablate", ["mix_a", "mix_b"], seeds=[0, 1]))
    controls = [m for m in members if m.is_control]
    assert [c.overrides for c in controls] == [
        ("ablate.candidate=null", "train.seed=0"),
        ("ablate.candidate=null", "train.seed=1"),
    ]
    assert len(members) == 6
    assert {m.name for m in members} == {
        "ablate-control-seed0",
        "ablate-control-seed1",
        "ablate-mix_a-seed0",
        "ablate-mix_a-seed1",
        "ablate-mix_b-seed0",
        "ablate-mix_b-seed1",
    }


def test_typed_parameters_and_the_cli_multirun_give_the_same_members(tmp_path):
    from flows.compose import split_multirun

    workdir = f"workdir={tmp_path}"
    common, members = split_multirun(
        [workdir, "anneal.candidate=synthetic_math,stdlib_code", "anneal.share=0.3,0.6", "train.seed=1"],
        multirun=True,
        kind="anneal",
    )
    assert common == [workdir]
    typed = typed_member_overrides("anneal", ["synthetic_math", "stdlib_code"], [0.3, 0.6], [1])
    assert with_controls("anneal", members) == with_controls("anneal", typed)
    assert len(with_controls("anneal", members)) == 5  # 2 x 2 + one control


def test_multirun_reads_the_sweep_a_protocol_declares(tmp_path):
    from flows.compose import split_multirun

    _, members = split_multirun([f"workdir={tmp_path}", "pipeline=annealing"], multirun=True, kind="anneal")
    candidates = {make_member("anneal", m).candidate for m in members}
    assert {"finemath_4plus", "stack_edu", "python_edu"} <= candidates


def test_a_sweep_without_multirun_is_refused(tmp_path):
    from flows.compose import split_multirun

    with pytest.raises(ConfigError, match=r"^anneal.candidate=a,b: sweeps several values; add -m"):
        split_multirun([f"workdir={tmp_path}", "anneal.candidate=a,b"], multirun=False, kind="anneal")
    common, members = split_multirun([f"workdir={tmp_path}", "anneal.candidate=a"], multirun=False, kind="anneal")
    assert members == [["anneal.candidate=a"]] and common == [f"workdir={tmp_path}"]


def test_anneal_mixture_is_share_candidate_plus_the_rest_previous():
    previous = {"prose": 0.6, "code": 0.3, "math": 0.1}
    weights = anneal_weights(previous, ["math"], 0.6)
    assert weights == pytest.approx({"prose": 0.24, "code": 0.12, "math": 0.64})
    assert sum(weights.values()) == pytest.approx(1.0)
    two = anneal_weights(previous, ["math", "new"], 0.5)
    assert two == pytest.approx({"prose": 0.3, "code": 0.15, "math": 0.3, "new": 0.25})
    assert anneal_weights(previous, [], 0.6) == previous


def test_member_configs_anneal_from_the_base_stage_and_decay_to_zero(overrides):
    from flows.sweep import member_specs

    common = [*overrides, "anneal.train_tokens=51200", "train.schedule.min_lr=1e-4"]
    control, math = member_specs("anneal", common, [["anneal.candidate=synthetic_math", "anneal.share=0.5"]])
    stage1 = {"stdlib_prose": 0.45, "stdlib_code": 0.25, "noisy_web": 0.2, "synthetic_math": 0.1}  # demo_stage1
    assert control.cfg.mixture.weights == stage1
    assert math.cfg.mixture.weights == pytest.approx(anneal_weights(stage1, ["synthetic_math"], 0.5))
    for spec in (control, math):
        assert spec.stage.decay_fraction == 1.0 and spec.stage.train_tokens == 51200
        assert spec.cfg.train.schedule.min_lr == 0.0  # annealing decays to 0, whatever the pipeline's floor


@pytest.mark.parametrize(
    ("kind", "member", "extra", "message"),
    [
        ("anneal", ["anneal.candidate=nope"], [], r"^anneal.candidate: is not a declared source .*got 'nope'$"),
        ("anneal", ["anneal.candidate=stdlib_code", "anneal.share=1.5"], [], r"^anneal.share: must be in \(0, 1\]"),
        ("anneal", ["anneal.candidate=stdlib_code"], ["anneal.train_tokens=10"], r"^anneal.train_tokens: must be >="),
        ("anneal", ["anneal.candidate=stdlib_code"], ["anneal.base=stage9"], r"^anneal.base: must name a stage"),
        ("ablate", ["ablate.candidate=no_such_mix"], [], r"^ablate.candidate: no mixture config named 'no_such_mix'"),
    ],
)
def test_a_bad_member_is_one_line_naming_the_field(overrides, kind, member, extra, message):
    from flows.sweep import member_specs

    with pytest.raises(ConfigError, match=message):
        member_specs(kind, [*overrides, *extra], [member])


def test_an_anneal_base_on_a_mixture_not_written_yet_is_refused_before_compute(overrides):
    from flows.sweep import member_specs

    with pytest.raises(ConfigError, match=r"^anneal.base: stage2 trains on the mixture the rebalance after stage1"):
        member_specs("anneal", [*overrides, "anneal.base=stage2"], [["anneal.candidate=stdlib_code"]])


def test_the_cli_refuses_a_bad_sweep_with_exit_2(overrides, capsys):
    from flows.cli import main

    assert main(["anneal", "-m", *overrides, "anneal.candidate=stdlib_code,nope"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: anneal.candidate: is not a declared source")


def test_a_bug_inside_a_sweep_keeps_its_traceback_and_bad_input_stays_one_line(overrides, monkeypatch, capsys):
    from contextlib import nullcontext

    import flows.runtime
    import flows.sweep
    from flows.cli import main

    def buggy_sweep(**kwargs):
        raise ValueError("an internal error, not the user's input")

    def refused_sweep(**kwargs):
        raise ConfigError("anneal.train_tokens: must be >= tokens per step 512, got 10")

    monkeypatch.setattr(flows.runtime, "embedded_settings", nullcontext)
    args = ["anneal", "-m", *overrides, "anneal.candidate=synthetic_math"]
    monkeypatch.setattr(flows.sweep, "sweep_flow", buggy_sweep)
    with pytest.raises(ValueError, match="an internal error"):  # the traceback reaches the user
        main(args)
    monkeypatch.setattr(flows.sweep, "sweep_flow", refused_sweep)
    assert main(args) == 2
    assert capsys.readouterr().err == "error: anneal.train_tokens: must be >= tokens per step 512, got 10\n"


def test_summary_deltas_are_against_the_group_control(tmp_path):
    members = with_controls("ablate", typed_member_overrides("ablate", ["a"], seeds=[0, 1]))
    scores = {
        "ablate-control-seed0": {"eval/category/math": 0.30, "eval/category/code": 0.50, "train/loss": 2.0},
        "ablate-control-seed1": {"eval/category/math": 0.20, "eval/category/code": 0.40},
        "ablate-a-seed0": {"eval/category/math": 0.35, "eval/category/code": 0.45},
        "ablate-a-seed1": {"eval/category/math": 0.30, "eval/category/code": 0.40},
    }
    tokens = {name: {"x": 10} for name in scores}
    rows = {r["member"]: r for r in summary_rows(members, scores, tokens)}
    assert rows["ablate-a-seed0"]["delta/math"] == pytest.approx(0.05)
    assert rows["ablate-a-seed0"]["delta/code"] == pytest.approx(-0.05)
    assert rows["ablate-a-seed1"]["delta/math"] == pytest.approx(0.10)
    assert rows["ablate-control-seed1"]["delta/code"] == 0.0
    assert rows["ablate-a-seed1"]["tokens/x"] == 10
    table = format_table(list(rows.values()))
    assert "| ablate-a-seed1 | a | 0.4000 | 0.3000 | +0.0000 | +0.1000 | 10 |" in table
    chart = plot_deltas(list(rows.values()), tmp_path / "deltas.png", "test")
    assert chart is not None and chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    json.dumps(list(rows.values()))  # the summary is plain JSON for MLflow and Prefect
