"""A stage that continues from the previous stage's checkpoint is the run that never stopped.

Stage 1 trains 6 steps, stage 2 continues 6 more from its checkpoint (weights, AdamW moments,
step, sampler totals); one uninterrupted 12-step stage sees the same tokens (one source, whose
windows continue across the boundary) on the same schedule (constant after warmup). On CPU the
two end bit-identical, weights and moments. The summary's `optimizer_state_loaded` is measured
from what the optimizer holds after loading, so a trainer that dropped the moments at the
boundary fails here twice: in its trajectory and in its own record."""

import dataclasses

import pytest
import torch

from smollm import distributed, train
from smollm.checkpoint import moments_digest
from smollm.train import Trainer, load_checkpoint
from tests.conftest import stage_run


def _train(built, tmp_path, name, steps, init=None):
    cfg, _, _ = built
    single = dataclasses.replace(cfg.mixture, weights={"synthetic_math": 1.0})
    run = stage_run(built, steps, mixture=single, init_checkpoint=init)
    run = dataclasses.replace(run, stage=dataclasses.replace(run.stage, decay_fraction=0.0))
    (tmp_path / name).mkdir()
    summary = Trainer(run).run_to_end(tmp_path / name)
    return summary, *load_checkpoint(tmp_path / name)


def _assert_same(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    for key in a:
        if isinstance(a[key], dict):
            _assert_same(a[key], b[key], f"{what}.{key}")
        else:
            assert torch.equal(torch.as_tensor(a[key]), torch.as_tensor(b[key])), f"{what}.{key}"


@pytest.fixture(scope="module")
def through(built, tmp_path_factory):
    return _train(built, tmp_path_factory.mktemp("through"), "through", 12)


@pytest.fixture(scope="module")
def first(built, tmp_path_factory):
    folder = tmp_path_factory.mktemp("first")
    _train(built, folder, "stage1", 6)
    return folder / "stage1"


def test_continuing_across_a_stage_boundary_is_bit_identical_to_one_run(built, tmp_path, through, first):
    summary, model, state = _train(built, tmp_path, "stage2", 6, init=first)
    _, through_model, through_state = through
    _assert_same(model.state_dict(), through_model.state_dict(), "weights")
    _assert_same(state["optimizer"]["state"], through_state["optimizer"]["state"], "moments")
    assert state["step"] == through_state["step"] == 12
    assert state["sampler"]["total_windows"] == through_state["sampler"]["total_windows"]
    _, saved = load_checkpoint(first)
    loaded = summary["optimizer_state"]
    assert summary["optimizer_state_loaded"] and loaded["checkpoint"] == str(first)
    assert loaded["loaded"] == moments_digest(saved["optimizer"]) and loaded["loaded"]["parameters"] > 0


def test_a_trainer_that_drops_the_moments_at_the_boundary_is_caught(built, tmp_path, through, first, monkeypatch):
    """The check above can fail: with the optimizer state left out of the load, the run diverges
    from the uninterrupted one and its summary says the moments were not loaded."""
    real = distributed.load_states

    def without_optimizer(model, optimizer, weights, state, sharded):
        real(model, optimizer, weights, {"state": {}, "param_groups": state["param_groups"]}, sharded)

    monkeypatch.setattr(train, "load_states", without_optimizer)
    summary, _, state = _train(built, tmp_path, "dropped", 6, init=first)
    assert not summary["optimizer_state_loaded"]
    assert summary["optimizer_state"]["loaded"]["parameters"] == 0
    moments = state["optimizer"]["state"][0]["exp_avg"]
    assert not torch.equal(moments, through[2]["optimizer"]["state"][0]["exp_avg"])
