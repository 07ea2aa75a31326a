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
    with pytest.raises(ValueError, match="previous: stage_index=1 continues from the previous stage"):
        stage_flow.fn(overrides=[f"workdir={tmp_path}"], stage_index=1)
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


def test_a_stage_uses_its_declared_mixture_else_the_previous_rebalance():
    from flows.stage import choose_mixture

    assert choose_mixture("demo_stage1", 0, None) == "demo_stage1"
    assert choose_mixture(None, 1, {"next_mixture": "demo-stage2-ab12"}) == "demo-stage2-ab12"
    with pytest.raises(ValueError, match=r"pipeline.stages\[1\].mixture: is null"):
        choose_mixture(None, 1, {"next_mixture": None})
