"""Loss spikes and NaN: the guard's verdicts, and a real training run with injected NaN batches,
an isolated spike and a persistent one (which rewinds to the last checkpoint and skips its data).

Faults are injected with a torch forward hook on the real model, keyed on the batches drawn (the
data), so a rewound run does not meet the same poisoned window again.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from smollm.config import SpikeConfig
from smollm.schema import ConfigError, from_dict
from smollm.spikes import SpikeGuard
from tests.conftest import stage_run


def test_the_guard_skips_non_finite_and_spiking_steps_and_keeps_them_out_of_its_window():
    guard = SpikeGuard(SpikeConfig(window=8, min_history=4, threshold=6.0, rewind_after=2))
    for loss, norm in ((5.0, 1.0), (5.1, 1.1), (4.9, 0.9), (5.0, 1.0)):
        assert guard.verdict(loss, norm) is None
    assert guard.verdict(float("nan"), 1.0) == "non-finite loss nan"
    assert guard.verdict(5.0, float("inf")) == "non-finite grad_norm inf"
    assert guard.should_rewind  # two skips in a row
    assert guard.verdict(5.05, 1.0) is None and not guard.should_rewind
    spike = guard.verdict(9.0, 1.0)
    assert spike is not None and spike.startswith("loss spike 9 (z=")
    assert 9.0 not in guard.history["loss"]  # a spike does not raise the bar for the next one
    assert guard.verdict(5.0, 1.0) is None
    assert guard.verdict(5.0, 50.0).startswith("grad_norm spike 50")
    restored = SpikeGuard(guard.config)
    restored.load_state_dict(json.loads(json.dumps(guard.state_dict())))
    assert restored.state_dict() == guard.state_dict()


def test_a_new_baseline_accepts_a_moved_level_once_the_guard_cannot_rewind():
    guard = SpikeGuard(SpikeConfig(window=8, min_history=4, threshold=6.0, rewind_after=3))
    for norm in (1.0, 1.1, 0.9, 1.0, 1.05):
        assert guard.verdict(5.0, norm) is None
    moved = [guard.verdict(5.0, 2.5) for _ in range(3)]  # the gradient norm's level moved up
    assert all(v is not None and v.startswith("grad_norm spike 2.5") for v in moved) and guard.should_rewind
    guard.new_baseline()  # what the trainer does when no rewind is left
    assert not guard.should_rewind
    assert [guard.verdict(5.0, n) for n in (2.5, 2.6, 2.4, 2.5, 2.55)] == [None] * 5  # the new level trains
    assert guard.verdict(5.0, 40.0).startswith("grad_norm spike 40")  # and spikes above it are still caught


def test_a_disabled_guard_still_skips_non_finite_steps():
    guard = SpikeGuard(SpikeConfig(enabled=False, min_history=2))
    for loss in (5.0, 5.0, 5.1, 500.0):
        assert guard.verdict(loss, 1.0) is None
    assert guard.verdict(float("nan"), 1.0) is not None and not guard.should_rewind


@pytest.mark.parametrize(
    ("bad", "field"),
    [({"window": 1}, "window"), ({"threshold": 0}, "threshold"), ({"min_history": 500}, "min_history")],
)
def test_spike_settings_are_checked(bad, field):
    with pytest.raises(ConfigError, match=f"^train.spikes.{field}: "):
        from_dict(SpikeConfig, bad, "train.spikes")


@pytest.mark.slow
def test_injected_nan_batches_and_spikes_never_reach_the_weights_and_a_persistent_spike_rewinds(built, tmp_path):
    import torch

    from smollm.tracking import make_tracker
    from smollm.train import Trainer

    cfg = built[0]
    steps = 80
    train = dataclasses.replace(cfg.train, checkpoint_every_steps=10)
    run = stage_run(built, steps, train=train, resume_dir=tmp_path / "resume")
    tracker = make_tracker(cfg.tracking, tmp_path / "work")
    run_id = tracker.start_run("train/spikes")
    trainer = Trainer(run, tracker, run_id)

    # batch number (1-based, as drawn) -> what it does to the logits
    nan_batches, spike_batches, persistent = {25, 26}, {40}, {61, 62, 63}
    drawn = {"n": 0}

    def poison(module, inputs, output):
        if not module.training:
            return output
        drawn["n"] += 1
        if drawn["n"] in nan_batches:
            output.logits = output.logits * float("nan")
        elif drawn["n"] in spike_batches | persistent:
            output.logits = output.logits * 40.0
        return output

    trainer.model.register_forward_hook(poison)
    summary = trainer.run_to_end(tmp_path / "out")
    tracker.end_run(run_id)

    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    skipped = [e for e in summary["events"] if "skipped" in e]
    assert [e["step"] for e in skipped] == [25, 26, 40, 61, 62, 63]  # only the injected ones
    assert summary["nonfinite_skips"] == 2 and summary["spike_skips"] == 4
    (rewind,) = [e for e in summary["events"] if e.get("rewind")]
    assert rewind["step"] == 63 and rewind["rewind"]["to_step"] == 60  # the last checkpoint
    assert rewind["skipped_window"]["steps"] == [61, 63]
    assert summary["rewinds"] == 1 and summary["end_step"] == steps  # the stage's budget still trained
    # the rewound steps drew fresh batches (64 on): the poisoned window was not trained on again
    assert drawn["n"] == steps + 3
    records = [json.loads(line) for line in (tmp_path / "out" / "losses.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, steps + 1))  # the rewound window left the record
    assert all(math.isfinite(r["loss"]) for r in records if not r["skipped"])

    client = tracker.client
    assert [m.value for m in client.get_metric_history(run_id, "train/rewinds")][-1] == 1
    assert max(m.value for m in client.get_metric_history(run_id, "train/skipped_steps")) == 6


@pytest.mark.slow
def test_a_level_shift_past_the_last_rewind_becomes_the_new_baseline_and_the_stage_trains_on(built, tmp_path):
    from smollm.train import Trainer

    cfg = built[0]
    steps = 60
    spikes = dataclasses.replace(cfg.train.spikes, max_rewinds=0)
    train = dataclasses.replace(cfg.train, checkpoint_every_steps=10, spikes=spikes)
    trainer = Trainer(stage_run(built, steps, train=train, resume_dir=tmp_path / "resume"))
    drawn = {"n": 0}

    def shift(module, inputs, output):  # from batch 41 on, every loss sits on a higher level
        if module.training:
            drawn["n"] += 1
            if drawn["n"] > 40:
                output.logits = output.logits * 4.0
        return output

    trainer.model.register_forward_hook(shift)
    summary = trainer.run_to_end(tmp_path / "out")
    skipped = [e["step"] for e in summary["events"] if "skipped" in e]
    assert skipped == [41, 42, 43]  # only until the guard saw it could not rewind
    (gave_up,) = [e for e in summary["events"] if "reason" in e]
    assert gave_up["step"] == 43 and gave_up["reason"] == "max_rewinds=0 reached: the level moved, a new baseline"
    assert summary["skipped_steps"] == 3 and summary["end_step"] == steps
