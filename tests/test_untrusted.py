"""Overrides from the UI: the allow-list, and every way around it refused with the override named."""

from __future__ import annotations

import pytest

from flows.compose import CONF_DIR
from flows.untrusted import check_overrides
from smollm.schema import ConfigError
from tests.conftest import tiny_overrides

REJECTED = {
    "model._target_=os.system": "_target_ may not be set",
    "+model._target_=builtins.exec": "_target_ may not be set",
    "train.optimizer={_target_: os.system}": "_target_ may not be set",
    "rebalance.rules=[{_target_: os.system}]": "_target_ may not be set",
    "hydra.run.dir=/etc": "hydra.* may not be set",
    "hydra/launcher=submitit_local": "hydra.* may not be set",
    "model@hydra=debug": "hydra.* may not be set",
    "~train.seed": "deleting a key",
    "train.seed=1,2": "a sweep",
    "train.seed=choice(1,2)": "a sweep",
    "train.seed=${oc.env:HOME}": "interpolations",
    "train.schedule.warmup_steps=${oc.env:AWS_SECRET_ACCESS_KEY,0}": "interpolations",
    "eval.output_dir=/etc": "a path outside the work directory",
    "eval.tasks=[/etc/passwd]": "a path outside the work directory",
    "train.name=../../etc": "a path outside the work directory",
    "train.name='~/.ssh'": "a path outside the work directory",
    "train.name=file:///etc/passwd": "a path outside the work directory",
    "workdir=/tmp/elsewhere": "a path outside the work directory",
    "workdir=work2": "'workdir' is not a config group a run may choose",
    "tracking.uri=http://attacker:5000": "not on the allow-list",
    "sweep.launcher=work_pool": "not on the allow-list",
    "data.sources.stdlib_code.path=/etc": "a path outside the work directory",
    "data.sources.stdlib_code.loader=hf": "not on the allow-list",
    "tokenizer.path=gpt2": "not on the allow-list",
    "pipeline.stages.0.overrides=['train.seed=1']": "not on the allow-list",
    "pipeline.name=x": "not on the allow-list",
    "data=smollm2": "not a config group a run may choose",
    "mixture=../../etc/passwd": "a path outside the work directory",
    "mixture=demo stage1": "not a config name",
    "model=does_not_exist": "there is no model config named 'does_not_exist'",
    "train.seed=": None,  # allowed key, empty value: the schema judges it
}


@pytest.mark.parametrize("override", [o for o, why in REJECTED.items() if why])
def test_a_rejected_override_is_named_with_its_reason(override, tmp_path):
    with pytest.raises(ConfigError) as err:
        check_overrides(["train.seed=1", override], tmp_path / "work", [CONF_DIR])
    message = str(err.value)
    assert message.startswith(f"overrides[1]: {override!r} is rejected: ")
    assert REJECTED[override] in message and "\n" not in message


def test_the_tiny_test_overrides_and_group_choices_are_allowed(tmp_path):
    work = tmp_path / "work"
    allowed = [o for o in tiny_overrides(work) if not o.startswith(("workdir=", "tracking."))]
    allowed += [
        "model=smollm2_135m",
        "++train.seed=3",
        "rebalance=anneal_gain",
        "rebalance.rules.0.below=0.2",
        "mixture.weights.stdlib_code=0.5",
        f"eval.output_dir={work}/evals",  # a path inside the work dir
        "pipeline.stages.1.decay_fraction=0.5",
        "train.seed=",
    ]
    assert check_overrides(allowed, work, [CONF_DIR]) == allowed


def test_a_generated_mixture_in_the_work_dir_may_be_chosen(tmp_path):
    generated = tmp_path / "work" / "generated_conf"
    (generated / "mixture").mkdir(parents=True)
    (generated / "mixture" / "demo_stage2_abc.yaml").write_text("name: demo_stage2_abc\nweights: {}\n")
    assert check_overrides(["mixture=demo_stage2_abc"], tmp_path / "work", [CONF_DIR, generated])
    with pytest.raises(ConfigError, match="no mixture config named 'demo_stage2_abd'"):
        check_overrides(["mixture=demo_stage2_abd"], tmp_path / "work", [CONF_DIR, generated])


def test_something_that_is_not_an_override_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"^overrides\[0\]: 'train.seed=\[' is not a Hydra override"):
        check_overrides(["train.seed=["], tmp_path, [CONF_DIR])
    with pytest.raises(ConfigError, match=r"^overrides\[0\]: must be a string"):
        check_overrides([{"train.seed": 1}], tmp_path, [CONF_DIR])  # type: ignore[list-item]
