"""The warmup-stable-decay (WSD) learning-rate schedule of SmolLM2.

Linear warmup from 0 to the peak over `warmup_steps`, constant, then linear decay to `min_lr`
between `decay_start` and `decay_end` (global optimizer steps). Stages share one schedule: a
stable stage has no decay window; a decay stage places it over its last steps.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WSD:
    peak_lr: float
    warmup_steps: int
    decay_start: int
    """First step of the decay; `decay_end` for no decay."""
    decay_end: int
    """The step at which the LR reaches `min_lr` (the run's last step + 1)."""
    min_lr: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.decay_start <= self.decay_end:
            raise ValueError(f"decay_start: must be in [0, decay_end={self.decay_end}], got {self.decay_start}")

    def lr(self, step: int) -> float:
        """LR used by optimizer step `step` (0-based)."""
        if step < self.warmup_steps:
            return self.peak_lr * (step + 1) / self.warmup_steps
        if step < self.decay_start or self.decay_start == self.decay_end:
            return self.peak_lr
        # linear to min_lr, reached exactly at the last step (decay_end - 1)
        progress = min(1.0, (step - self.decay_start + 1) / (self.decay_end - self.decay_start))
        return self.min_lr + (self.peak_lr - self.min_lr) * (1 - progress)


def stage_schedule(
    *, peak_lr: float, warmup_steps: int, min_lr: float, start_step: int, num_steps: int, decay_fraction: float
) -> WSD:
    """The WSD of a stage spanning steps `[start_step, start_step + num_steps)`."""
    end = start_step + num_steps
    decay_steps = round(num_steps * decay_fraction)
    return WSD(peak_lr, warmup_steps, end - decay_steps if decay_steps else end, end, min_lr)
