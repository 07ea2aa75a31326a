"""Deterministic, seeded mixture sampler over tokenized sources, resumable exactly.

Which source the n-th sample of a stage comes from is decided by the largest deficit
`weight * (n + 1) - drawn`, so the realised shares follow the weights exactly (Megatron's
blended-dataset rule) with no random draw to replay. Within a source, samples are contiguous
windows of `seq_len + 1` tokens, visited in a seeded permutation that is redrawn every epoch.

The whole state is two counters per source (windows drawn in total, samples drawn this stage),
so saving it and loading it resumes at the exact position; the next stage keeps the totals,
so a source continues where it stopped instead of repeating its start.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from functools import lru_cache

import numpy as np

from smollm.data.shards import TokenizedSource


class SourceWindows:
    """The `seq_len + 1`-token windows of one source, in a per-epoch seeded order."""

    def __init__(self, source: TokenizedSource, seq_len: int, seed: int) -> None:
        self.source, self.seq_len = source, seq_len
        counts = [max(0, (len(shard) - 1) // seq_len) for shard in source.shards]
        self.offsets = np.cumsum([0, *counts])
        self.num_windows = int(self.offsets[-1])
        if self.num_windows == 0:
            raise ValueError(f"data.sources.{source.name}: fewer tokens than one sequence of {seq_len}")
        self.seed = (seed, zlib.crc32(source.name.encode()))
        self._permutation = lru_cache(maxsize=2)(self._draw_permutation)

    def _draw_permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([*self.seed, epoch]).permutation(self.num_windows)

    def window(self, k: int) -> np.ndarray:
        """The k-th window drawn from this source (k counts across epochs)."""
        epoch, j = divmod(k, self.num_windows)
        index = int(self._permutation(epoch)[j])
        shard = int(np.searchsorted(self.offsets, index, side="right") - 1)
        start = (index - int(self.offsets[shard])) * self.seq_len
        return np.asarray(self.source.shards[shard][start : start + self.seq_len + 1], dtype=np.int64)


class MixtureSampler:
    """Draws `[batch, seq_len + 1]` token arrays from sources in proportion to their weights."""

    def __init__(
        self,
        sources: Mapping[str, TokenizedSource],
        weights: Mapping[str, float],
        *,
        seq_len: int,
        seed: int,
    ) -> None:
        missing = sorted(set(weights) - set(sources))
        if missing:
            raise ValueError(f"mixture.weights.{missing[0]}: no built source of that name")
        self.names = [name for name in sorted(weights) if weights[name] > 0]
        self.weights = np.array([weights[name] for name in self.names], dtype=np.float64)
        self.weights /= self.weights.sum()
        self.windows = {name: SourceWindows(sources[name], seq_len, seed) for name in sources}
        self.seq_len = seq_len
        self.total_windows = {name: 0 for name in sources}
        self.stage_samples = np.zeros(len(self.names), dtype=np.int64)

    def next_source(self) -> int:
        deficit = self.weights * (self.stage_samples.sum() + 1) - self.stage_samples
        return int(np.argmax(deficit))

    def next_batch(self, batch_size: int) -> np.ndarray:
        rows = []
        for _ in range(batch_size):
            i = self.next_source()
            name = self.names[i]
            rows.append(self.windows[name].window(self.total_windows[name]))
            self.total_windows[name] += 1
            self.stage_samples[i] += 1
        return np.stack(rows)

    def tokens_per_source(self, *, stage_only: bool = False) -> dict[str, int]:
        """Tokens consumed per source, this stage or in total (a window counts `seq_len`)."""
        if stage_only:
            return {n: int(c) * self.seq_len for n, c in zip(self.names, self.stage_samples, strict=True)}
        return {name: count * self.seq_len for name, count in self.total_windows.items()}

    def epochs_per_source(self) -> dict[str, float]:
        return {
            name: tokens / self.windows[name].source.num_tokens for name, tokens in self.tokens_per_source().items()
        }

    def state_dict(self) -> dict:
        return {
            "total_windows": dict(self.total_windows),
            "stage_samples": dict(zip(self.names, self.stage_samples.tolist(), strict=True)),
        }

    def load_state_dict(self, state: dict, *, new_stage: bool = False) -> None:
        """Resume at the saved position; `new_stage` keeps the totals and restarts the blend."""
        for name, count in state["total_windows"].items():
            if name in self.total_windows:
                self.total_windows[name] = int(count)
        if not new_stage:
            stage = state["stage_samples"]
            self.stage_samples = np.array([stage.get(n, 0) for n in self.names], dtype=np.int64)
