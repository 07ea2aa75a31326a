"""Loss-spike and NaN guard for the trainer: which steps to skip, and when to rewind.

A step is skipped when its loss or gradient norm is not finite, or (once `min_history` steps
were accepted) when either is more than `threshold` standard deviations above the mean of the
last `window` accepted steps. Only accepted steps enter the window, so a spike does not raise the
bar for the next one. `rewind_after` skips in a row mean the data, not one bad batch, is the
problem: the trainer rewinds to its last checkpoint and skips that data window. When it cannot
(no checkpoint, or `max_rewinds` spent), the level itself has moved (a gradient norm that grows
as training leaves warm-up does): the guard starts a new baseline instead of skipping every step
that follows, and the stage goes on training.

    >>> guard = SpikeGuard(SpikeConfig(min_history=2))
    >>> [guard.verdict(x, 1.0) for x in (2.0, 2.1, 2.0)], guard.verdict(float("nan"), 1.0)
    ([None, None, None], 'non-finite loss nan')
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

from smollm.config import SpikeConfig


class SpikeGuard:
    def __init__(self, config: SpikeConfig) -> None:
        self.config = config
        self.history: dict[str, deque[float]] = {name: deque(maxlen=config.window) for name in ("loss", "grad_norm")}
        self.in_a_row = 0

    def verdict(self, loss: float, grad_norm: float) -> str | None:
        """None to apply the step (and remember it); else why it is skipped."""
        values = {"loss": loss, "grad_norm": grad_norm}
        for name, value in values.items():
            if not math.isfinite(value):
                return self._skip(f"non-finite {name} {value}")
        if self.config.enabled:
            for name, value in values.items():
                z = self.z_score(name, value)
                if z is not None and z > self.config.threshold:
                    return self._skip(f"{name} spike {value:.4g} (z={z:.1f} > {self.config.threshold:g})")
        for name, value in values.items():
            self.history[name].append(value)
        self.in_a_row = 0
        return None

    def z_score(self, name: str, value: float) -> float | None:
        history = self.history[name]
        if len(history) < self.config.min_history:
            return None
        mean = sum(history) / len(history)
        std = math.sqrt(sum((x - mean) ** 2 for x in history) / len(history))
        return (value - mean) / std if std > 0 else None

    def _skip(self, reason: str) -> str:
        self.in_a_row += 1
        return reason

    def new_baseline(self) -> None:
        """Forget the window: the next `min_history` finite steps are accepted and become the bar."""
        for values in self.history.values():
            values.clear()
        self.in_a_row = 0

    @property
    def should_rewind(self) -> bool:
        return self.config.enabled and self.in_a_row >= self.config.rewind_after

    def state_dict(self) -> dict[str, Any]:
        return {"history": {k: list(v) for k, v in self.history.items()}, "in_a_row": self.in_a_row}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, values in state["history"].items():
            self.history[name] = deque(values, maxlen=self.config.window)
        self.in_a_row = state["in_a_row"]
