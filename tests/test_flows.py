"""Flow wiring that needs no compute: override handling, CLI errors, stage preconditions."""

import json

import pytest

from flows.cli import main
from flows.compose import normalise_override
from flows.stage import stage_flow


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.seed=3", "++train.seed=3"),
        ("model=smollm2_135m", "model=smollm2_135m"),
        ("+train.extra=1", "+train.extra=1"),
        ("~eval", "~eval"),
        ("workdir=/tmp/x", "workdir=/tmp/x"),
    ],
)
def test_dotted_overrides_may_set_any_schema_field(override, expected):
    assert normalise_override(override) == expected


def test_config_command_prints_the_resolved_config(tmp_path, capsys):
    assert main(["config", f"workdir={tmp_path}", "train.seed=7"]) == 0
    config = json.loads(capsys.readouterr().out)
    assert config["train"]["seed"] == 7 and config["workdir"] == str(tmp_path)


def test_unknown_config_choice_is_one_line(tmp_path, capsys):
    assert main(["config", f"workdir={tmp_path}", "model=nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "nope" in err and "\n" not in err


def test_a_later_stage_needs_its_predecessor(tmp_path):
    from flows.compose import compose_lineage

    second = compose_lineage([f"workdir={tmp_path}"]).walk()[1]
    with pytest.raises(ValueError, match="previous: stage_index=1 continues from the previous stage"):
        stage_flow.fn(second)
    assert not (tmp_path / "mlflow.db").exists()


def test_composition_is_memoised_but_sees_edited_and_new_config_files(tmp_path):
    from flows.compose import compose, generated_dir

    overrides = [f"workdir={tmp_path}", "mixture=later"]
    mixture_dir = generated_dir(tmp_path) / "mixture"
    mixture_dir.mkdir(parents=True)
    path = mixture_dir / "later.yaml"
    path.write_text("name: later\nweights: {stdlib_prose: 1.0}\n")
    assert compose(overrides).mixture.weights == {"stdlib_prose": 1.0}
    path.write_text("name: later\nweights: {stdlib_prose: 0.5, synthetic_math: 0.5}\n")
    assert compose(overrides).mixture.weights == {"stdlib_prose": 0.5, "synthetic_math": 0.5}
    first = compose([f"workdir={tmp_path}"])
    second = compose([f"workdir={tmp_path}"])
    assert first == second and first is not second


def test_a_stage_uses_its_declared_mixture_else_the_previous_rebalance(tmp_path):
    """One rule (`smollm.lineage`): declared, else what this run decided, else the written file,
    else pending (planned on the previous stage's mixture)."""
    from flows.compose import compose_lineage, generated_dir

    lineage = compose_lineage([f"workdir={tmp_path}"])
    first, second = lineage.walk(1)
    assert (first.mixture.name, first.mixture.how) == ("demo_stage1", "declared")
    assert (second.mixture.name, second.mixture.how) == ("demo_stage1", "pending")
    written = generated_dir(tmp_path) / "mixture" / f"{first.next_mixture()}.yaml"
    written.parent.mkdir(parents=True)
    written.write_text(f"name: {first.next_mixture()}\nweights: {{stdlib_prose: 0.5, synthetic_math: 0.5}}\n")
    again = compose_lineage([f"workdir={tmp_path}"]).walk(1)[1]
    assert (again.mixture.name, again.mixture.how) == (first.next_mixture(), "written")
    assert again.cfg.mixture.weights == {"stdlib_prose": 0.5, "synthetic_math": 0.5}
    decided = lineage.decide(1, first.next_mixture())
    assert decided.mixture.how == "decided" and decided.steps.train.identity == again.steps.train.identity
    assert decided.start.parent == 0 and decided.steps.train.upstream[-1] == first.steps.train.identity


def test_a_stage_trains_on_what_this_run_decided_when_it_rewrote_an_earlier_runs_file(tmp_path):
    """The walk (the pipeline's preflight) reads the file an earlier run's rebalance wrote; this
    run's rebalance rewrites it under the same name (other code or caps: another decision from
    the same model). The stage must train on the rewritten weights, not on the walk's: the loop
    bench's hand_rules arm trained stage 2 on the earlier run's 0.2186 of synthetic_math (a cache
    hit of that run's training) after its rebalance had decided 0.2112."""
    from flows.compose import compose_lineage, generated_dir

    lineage = compose_lineage([f"workdir={tmp_path}"])
    first = lineage.walk(0)[0]
    name = first.next_mixture()
    written = generated_dir(tmp_path) / "mixture" / f"{name}.yaml"
    written.parent.mkdir(parents=True)
    written.write_text(f"name: {name}\nweights: {{stdlib_prose: 0.5, synthetic_math: 0.5}}\n")
    walked = lineage.walk(2)[1]
    assert walked.mixture.how == "written" and walked.cfg.mixture.weights["synthetic_math"] == 0.5
    written.write_text(f"name: {name}\nweights: {{stdlib_prose: 0.75, synthetic_math: 0.25}}\n")  # this run's decision
    decided = lineage.decide(1, name)
    assert decided.cfg.mixture.weights == {"stdlib_prose": 0.75, "synthetic_math": 0.25}
    assert decided.steps.train.identity != walked.steps.train.identity
    assert lineage.nodes[1] is decided and len(lineage.nodes) == 2  # the stages after it are composed again
    assert lineage.decide(1, name) is decided  # the same weights: the same node


def test_a_tracked_run_ends_finished_failed_or_killed_with_its_block():
    from flows.compose import compose
    from smollm.runs import tracked_run
    from smollm.tracking import NullTracker

    tracker, cfg = NullTracker(), compose([])
    outcomes = {}
    for name, error in (("ok", None), ("bug", RuntimeError("boom")), ("interrupted", KeyboardInterrupt())):
        try:
            with tracked_run(tracker, cfg, name, "stage", parent_run_id=None, flow_run_id=None) as run_id:
                if error is not None:
                    raise error
        except (RuntimeError, KeyboardInterrupt) as raised:
            assert raised is error  # re-raised as it was, traceback and all
        outcomes[name] = tracker.runs[run_id]
    assert {name: run["status"] for name, run in outcomes.items()} == {
        "ok": "FINISHED",
        "bug": "FAILED",
        "interrupted": "KILLED",
    }
    assert all("config.json" in run["artifacts"] for run in outcomes.values())
