"""Every shipped config composes and validates; bad values fail with the field and the value."""

import subprocess
import sys

import pytest

from flows.compose import CONF_DIR, compose
from smollm.config import ConfigError
from smollm.model import count_parameters


def test_default_config_composes_with_cli_style_overrides(tmp_path):
    cfg = compose([f"workdir={tmp_path}", "pipeline=demo", "train.seed=3"])
    assert cfg.train.seed == 3
    assert [s.name for s in cfg.pipeline.stages] == ["stage1", "stage2", "stage3"]
    assert cfg.pipeline.stages[-1].decay_fraction == 1.0
    assert sum(cfg.mixture.weights.values()) == pytest.approx(1.0)
    assert set(cfg.data.sources) == {"stdlib_prose", "stdlib_code", "synthetic_math", "noisy_web"}


@pytest.mark.parametrize(
    "path",
    sorted(
        p.relative_to(CONF_DIR) for p in CONF_DIR.rglob("*.yaml") if p.parent != CONF_DIR and "source" not in p.parts
    ),
)
def test_every_group_option_composes(tmp_path, path):
    """Every shipped option composes and validates: demo options with the embedded default,
    recipe options (hub sources, 2048-token sequences) inside the SmolLM2-1.7B pipeline."""
    group, option = str(path.parent), path.stem
    overrides = [f"workdir={tmp_path}", f"{group}={option}"]
    if group == "model" and option != "debug":
        overrides += ["tokenizer=smollm2", "train.seq_len=256"]
    elif group == "tokenizer" and option == "smollm2":
        overrides += ["model=smollm2_135m"]
    elif group != "pipeline" and option.startswith(("smollm2", "ablation", "anneal")):
        overrides.insert(1, "pipeline=smollm2_1.7b")
    compose(overrides)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.optimizer.lr=-1", "train.optimizer.lr: must be > 0, got -1.0"),
        ("train.seed=abc", "train.seed: expected int, got 'abc'"),
        ("mixture.weights.stdlib_code=0.5", "mixture.weights: must sum to 1, got 1.2"),
        ("model.vocab_size=4096", "model.vocab_size: must equal tokenizer.vocab_size=2048, got 4096"),
        ("model.num_kv_heads=3", "model.num_kv_heads: must divide num_heads=4, got 3"),
        ("pipeline.stages.2.decay_fraction=2", "pipeline.stages[2].decay_fraction: must be in [0, 1], got 2.0"),
        ("+train.colour=red", "train.colour: unknown field"),
        (
            "data.sources.stdlib_code.max_weight=0.01",
            "data.sources.stdlib_code.max_weight: must be in [min_weight=0.05, 1], got 0.01",
        ),
    ],
)
def test_bad_values_name_the_field_and_value(tmp_path, override, message):
    with pytest.raises(ConfigError) as err:
        compose([f"workdir={tmp_path}", override])
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_cli_reports_a_bad_value_in_one_line_before_any_compute(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", f"workdir={tmp_path}", "train.optimizer.lr=-1"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "error: train.optimizer.lr: must be > 0, got -1.0"
    assert not (tmp_path / "tokenizer").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize(
    ("model", "expected"),
    [("smollm2_135m", 134_515_008), ("smollm2_360m", 361_821_120), ("smollm2_1.7b", 1_711_376_384)],
)
def test_smollm2_shapes_have_the_papers_parameter_counts(tmp_path, model, expected):
    cfg = compose([f"workdir={tmp_path}", f"model={model}", "tokenizer=smollm2", "train.seq_len=256"])
    assert count_parameters(cfg.model) == expected
