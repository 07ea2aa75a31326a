"""Deterministic, seeded mixture sampler over tokenized sources, resumable exactly.

Which source the n-th sample of a stage comes from is the blend index (`smollm.data.blend`):
the realised shares follow the weights within a few samples at every point, with no random draw
to replay, computed a chunk at a time in vectorised integer arithmetic. Within a source, samples
are contiguous windows of `seq_len + 1` tokens, visited in a seeded permutation that is redrawn
every epoch; a batch's windows are located together and copied straight into the batch.

The whole state is a few counters per source (windows and tokens drawn in total, samples drawn
this stage), so saving it and loading it resumes at the exact position; the next stage keeps
the totals of every source ever drawn from, those it leaves out included, so a source continues
where it stopped instead of repeating its start, also when it returns after a stage without it.
`stage_tokens` is the same count without a sampler: what `smollm plan` adds up.
"""

from __future__ import annotations

import sys
import zlib
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import cache, lru_cache
from typing import NamedTuple

import numpy as np

from smollm.data.blend import blend_counts, blend_sources, quantise
from smollm.data.shards import TokenizedSource

BLEND_CHUNK = 1 << 16
"""Samples of the blend index computed at a time."""
LOCATE_BLOCK = 4096
"""Windows of a source located at a time."""
PREFETCH_ROWS = 512
"""Samples read ahead at a time (one numpy gather per source and shard, not one per row)."""
POOL_BUFFERS = 4
"""Read-ahead arrays kept for reuse."""


class SourceWindows:
    """The `seq_len + 1`-token windows of one source, in a per-epoch seeded order.

    Each shard is viewed (no copy) as a `[windows, seq_len + 1]` array of overlapping rows, so
    copying a batch's windows out of a shard is one numpy gather; where the next `LOCATE_BLOCK`
    windows lie is worked out a block at a time, not per batch."""

    def __init__(self, source: TokenizedSource, seq_len: int, seed: int) -> None:
        self.source, self.seq_len = source, seq_len
        counts = [max(0, (len(shard) - 1) // seq_len) for shard in source.shards]
        self.offsets = np.cumsum([0, *counts])
        self.num_windows = int(self.offsets[-1])
        if self.num_windows == 0:
            raise ValueError(f"data.sources.{source.name}: fewer tokens than one sequence of {seq_len}")
        self.rows = [
            np.lib.stride_tricks.as_strided(
                shard, (count, seq_len + 1), (seq_len * shard.itemsize, shard.itemsize), writeable=False
            )
            for shard, count in zip(source.shards, counts, strict=True)
        ]
        self.seed = (seed, zlib.crc32(source.name.encode()))
        self._permutation = lru_cache(maxsize=2)(self._draw_permutation)
        self._block: tuple[int, np.ndarray, np.ndarray] = (-1, np.empty(0, np.int64), np.empty(0, np.int64))

    def _draw_permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([*self.seed, epoch]).permutation(self.num_windows)

    def locate(self, first: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Shard and row within it of windows number `first .. first + count - 1` (across epochs)."""
        block_first, shards, rows = self._block
        if not (block_first <= first and first + count <= block_first + len(shards)):
            k = np.arange(first, first + max(count, LOCATE_BLOCK), dtype=np.int64)
            epoch, j = np.divmod(k, self.num_windows)
            index = np.empty_like(k)
            for e in np.unique(epoch).tolist():
                index[epoch == e] = self._permutation(e)[j[epoch == e]]
            shards = np.searchsorted(self.offsets, index, side="right") - 1
            self._block = block_first, shards, rows = first, shards, index - self.offsets[shards]
        at = first - block_first
        return shards[at : at + count], rows[at : at + count]

    def copies(self, first: int, into: np.ndarray) -> list[Copy]:
        """How to copy windows `first, first + 1, ...` into batch rows `into`: one gather per
        shard, in address order (random 4 KiB reads are the cost; in order they are cheaper)."""
        shards, rows = self.locate(first, len(into))
        order = np.lexsort((rows, shards))
        cuts = np.flatnonzero(np.diff(shards[order])) + 1
        groups = np.split(order, cuts) if len(cuts) else [order]
        return [Copy(into[g], self.rows[int(shards[g[0]])], rows[g]) for g in groups]


class Copy(NamedTuple):
    """`out[into] = view[rows]`: one numpy gather (which releases the GIL)."""

    into: np.ndarray
    view: np.ndarray
    rows: np.ndarray

    def halves(self) -> list[Copy]:
        half = len(self.rows) // 2
        return [Copy(self.into[a:b], self.view, self.rows[a:b]) for a, b in ((0, half), (half, len(self.rows)))]


def run_copies(copies: list[Copy], out: np.ndarray, threads: int) -> None:
    """Do the copies on `threads` threads, balanced by rows (largest first)."""
    if threads <= 1:
        for copy in copies:
            out[copy.into] = copy.view[copy.rows]
        return
    lanes: list[list[Copy]] = [[] for _ in range(threads)]
    load = [0] * threads
    for copy in sorted((h for c in copies for h in c.halves() if len(h.rows)), key=lambda c: -len(c.rows)):
        lane = load.index(min(load))
        lanes[lane].append(copy)
        load[lane] += len(copy.rows)
    list(_reader_pool(threads).map(lambda lane: run_copies(lane, out, 1), lanes))


@cache
def _reader_pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads, thread_name_prefix="smollm-read")


def stage_tokens(weights: Mapping[str, float], samples: int, seq_len: int) -> dict[str, int]:
    """Tokens each source gives the first `samples` samples of a stage on `weights` (as the
    sampler draws them: the blend index's counts, `seq_len` tokens a window)."""
    names = [name for name in sorted(weights) if weights[name] > 0]
    shares = quantise(np.array([weights[name] for name in names], dtype=np.float64))
    counts = blend_counts(shares, samples) if samples else np.zeros(len(names), np.int64)
    return {name: int(count) * seq_len for name, count in zip(names, counts.tolist(), strict=True)}


class MixtureSampler:
    """Draws `[batch, seq_len + 1]` token arrays from sources in proportion to their weights.

    The position in the stage is one number, n; samples are read ahead `PREFETCH_ROWS` at a
    time with each source's running count alongside, so a batch costs a slice, and the counters
    (what a checkpoint saves) are derived from n when asked for."""

    def __init__(
        self,
        sources: Mapping[str, TokenizedSource],
        weights: Mapping[str, float],
        *,
        seq_len: int,
        seed: int,
        read_threads: int = 2,
    ) -> None:
        missing = sorted(set(weights) - set(sources))
        if missing:
            raise ValueError(f"mixture.weights.{missing[0]}: no built source of that name")
        self.names = [name for name in sorted(weights) if weights[name] > 0]
        self.weights = np.array([weights[name] for name in self.names], dtype=np.float64)
        self.weights /= self.weights.sum()
        self.shares = quantise(self.weights)
        self.windows = {name: SourceWindows(sources[name], seq_len, seed) for name in sources}
        self.seq_len = seq_len
        self.read_threads = read_threads
        """Threads that copy read-ahead windows (numpy releases the GIL while copying)."""
        self.stage_start = {name: 0 for name in sources}
        """Windows drawn from each source before this stage: every source ever drawn from, also
        those this stage does not open (a source left out for a stage keeps its place)."""
        self.tokens_before = {name: 0 for name in sources}
        """Tokens drawn from each source before this stage (exact across a change of seq_len)."""
        self.source_tokens = {name: source.num_tokens for name, source in sources.items()}
        """Each source's size in tokens, carried for sources this stage does not open."""
        self.position = 0
        """Samples drawn in this stage."""
        self._chunk: tuple[int, np.ndarray] = (-1, np.empty(0, dtype=np.int16))
        self._pool: list[np.ndarray] = []
        self._ahead = _Ahead(0, np.zeros((1, len(self.names)), np.int64), np.empty((0, seq_len + 1), np.int64))

    @property
    def stage_samples(self) -> np.ndarray:
        """Samples drawn from each of `names` in this stage."""
        ahead = self._ahead
        if ahead.first <= self.position <= ahead.first + len(ahead.rows):
            return ahead.counts[self.position - ahead.first]
        return blend_counts(self.shares, self.position)

    @property
    def total_windows(self) -> dict[str, int]:
        """Windows drawn from each source in total (all stages)."""
        total = dict(self.stage_start)
        for name, count in zip(self.names, self.stage_samples.tolist(), strict=True):
            total[name] += count
        return total

    def _sources_at(self, start: int, stop: int) -> np.ndarray:
        """The blend index for stage samples `[start, stop)`, from a cached chunk."""
        chunk = start // BLEND_CHUNK
        if self._chunk[0] != chunk or stop > (chunk + 1) * BLEND_CHUNK:
            first = chunk * BLEND_CHUNK
            self._chunk = (chunk, blend_sources(self.shares, first, max(stop, first + BLEND_CHUNK)))
        offset = start - self._chunk[0] * BLEND_CHUNK
        return self._chunk[1][offset : offset + stop - start]

    def next_batch(self, batch_size: int) -> np.ndarray:
        n, ahead = self.position, self._ahead
        if not (ahead.first <= n and n + batch_size <= ahead.first + len(ahead.rows)):
            ahead = self._ahead = self._prefetch(max(batch_size, PREFETCH_ROWS))
        self.position = n + batch_size
        return ahead.rows[n - ahead.first : n - ahead.first + batch_size]

    def _prefetch(self, count: int) -> _Ahead:
        """The next `count` samples, read in one gather per source and shard, and each source's
        running count."""
        n, totals, samples = self.position, self.total_windows, self.stage_samples
        which = self._sources_at(n, n + count)
        self._ahead = self._ahead._replace(rows=self._ahead.rows[:0])  # its buffer may be reused
        rows = self._buffer(count)
        onehot = np.zeros((count + 1, len(self.names)), dtype=np.int64)
        onehot[np.arange(1, count + 1), which] = 1
        counts = np.cumsum(onehot, axis=0) + samples
        copies = [
            copy
            for i, name in enumerate(self.names)
            if len(into := np.flatnonzero(which == i))
            for copy in self.windows[name].copies(totals[name], into)
        ]
        run_copies(copies, rows, self.read_threads)
        return _Ahead(n, counts, rows)

    def _buffer(self, count: int) -> np.ndarray:
        """A read-ahead array no batch handed out still points into (reused: a fresh 8 MiB array
        each time costs as much in page faults as the reads), else a new one."""
        for buffer in self._pool:
            if len(buffer) == count and sys.getrefcount(buffer) <= 3:  # the pool, `buffer`, the call
                return buffer
        buffer = np.empty((count, self.seq_len + 1), dtype=np.int64)
        self._pool = [buffer, *self._pool[: POOL_BUFFERS - 1]]
        return buffer

    def tokens_per_source(self, *, stage_only: bool = False) -> dict[str, int]:
        """Tokens consumed per source, this stage or in total, every source ever drawn from
        (a window counts `seq_len`)."""
        stage = {n: int(c) * self.seq_len for n, c in zip(self.names, self.stage_samples, strict=True)}
        if stage_only:
            return stage
        return {name: before + stage.get(name, 0) for name, before in self.tokens_before.items()}

    def epochs_per_source(self) -> dict[str, float]:
        sizes = self.source_tokens  # a source left out since a checkpoint older than its size's record: none
        return {name: tokens / sizes[name] for name, tokens in self.tokens_per_source().items() if name in sizes}

    def state_dict(self) -> dict:
        return {
            "total_windows": self.total_windows,
            "stage_samples": dict(zip(self.names, self.stage_samples.tolist(), strict=True)),
            "total_tokens": self.tokens_per_source(),
            "source_tokens": dict(self.source_tokens),
            "seq_len": self.seq_len,
        }

    def load_state_dict(self, state: dict, *, new_stage: bool = False) -> None:
        """Resume at the saved position; `new_stage` keeps the totals of every source (those
        this stage leaves out too) and restarts the blend. A stage with another `seq_len`
        continues each source at the window its tokens so far reach, in the new windows' order."""
        stage = {} if new_stage else state["stage_samples"]
        samples = np.array([stage.get(n, 0) for n in self.names], dtype=np.int64)
        expected = blend_counts(self.shares, int(samples.sum()))
        if not np.array_equal(expected, samples):
            raise ValueError(
                f"sampler state: samples per source {dict(zip(self.names, samples.tolist(), strict=True))} "
                f"are not this mixture's blend at that point {dict(zip(self.names, expected.tolist(), strict=True))}"
            )
        saved_seq_len = state.get("seq_len", self.seq_len)
        windows = {name: int(count) for name, count in state["total_windows"].items()}
        tokens = state.get("total_tokens") or {name: count * saved_seq_len for name, count in windows.items()}
        if saved_seq_len != self.seq_len:
            windows = {name: int(count) // self.seq_len for name, count in tokens.items()}
        for name in windows:
            drawn = int(stage.get(name, 0))
            self.stage_start[name] = windows[name] - drawn
            self.tokens_before[name] = int(tokens[name]) - drawn * self.seq_len
        for name, size in state.get("source_tokens", {}).items():
            self.source_tokens.setdefault(name, int(size))
        self.position = int(samples.sum())
        self._ahead = _Ahead(self.position, samples[None, :], self._ahead.rows[:0])


class _Ahead(NamedTuple):
    """Samples read ahead: they start at stage position `first`; `counts[j]` is each source's
    stage count after `j` of them."""

    first: int
    counts: np.ndarray
    rows: np.ndarray
