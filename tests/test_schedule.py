"""WSD learning-rate values at the boundaries of warmup, plateau and decay."""

import pytest

from smollm.schedule import WSD, stage_schedule


def test_warmup_is_linear_to_peak():
    wsd = WSD(peak_lr=1e-3, warmup_steps=10, decay_start=50, decay_end=100)
    assert wsd.lr(0) == pytest.approx(1e-4)
    assert wsd.lr(4) == pytest.approx(5e-4)
    assert wsd.lr(9) == pytest.approx(1e-3)
    assert wsd.lr(10) == 1e-3


def test_plateau_then_linear_decay_reaches_min_at_last_step():
    wsd = WSD(peak_lr=1e-3, warmup_steps=10, decay_start=50, decay_end=100, min_lr=0.0)
    assert wsd.lr(49) == 1e-3
    assert wsd.lr(50) == pytest.approx(1e-3 * (1 - 1 / 50))
    assert wsd.lr(74) == pytest.approx(1e-3 * 0.5)
    assert wsd.lr(99) == 0.0
    lrs = [wsd.lr(s) for s in range(50, 100)]
    assert all(a > b for a, b in zip(lrs, lrs[1:], strict=False))


def test_stable_stage_has_no_decay_and_decay_stage_ends_at_zero():
    stable = stage_schedule(peak_lr=3e-3, warmup_steps=5, min_lr=0, start_step=0, num_steps=100, decay_fraction=0)
    assert [stable.lr(s) for s in (5, 50, 99)] == [3e-3] * 3
    decay = stage_schedule(peak_lr=3e-3, warmup_steps=5, min_lr=0, start_step=100, num_steps=50, decay_fraction=1)
    assert decay.lr(100) == pytest.approx(3e-3 * (1 - 1 / 50))
    assert decay.lr(149) == 0.0
    partial = stage_schedule(peak_lr=1.0, warmup_steps=0, min_lr=0.1, start_step=0, num_steps=100, decay_fraction=0.2)
    assert partial.decay_start == 80
    assert partial.lr(79) == 1.0
    assert partial.lr(99) == pytest.approx(0.1)
