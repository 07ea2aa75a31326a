"""The blend index: which source the n-th sample of a stage comes from, for any range of n at once.

Each source's weight is quantised to an integer share `q_i` of `DENOMINATOR`; its k-th sample
is due at time `(2k + 1) / (2 q_i)` (Sainte-Laguë's divisors: a source with weight w is drawn
every 1/w samples, half a period in), and the samples of a stage are all sources' samples in
order of due time, ties to the lower source index. After any n samples source i has been drawn
within `1/2 + w_i * S / 2` samples of `w_i * n` (S sources; Megatron's blended dataset: within
one, by a sequential greedy loop), and a sample's position is a closed form — the count of
other sources' samples due before it — so the index of any range `[start, stop)` is computed
with a few vectorised integer operations per source and no loop over samples: 10^8 samples in
about a second, and resuming at sample n costs nothing.
Integer arithmetic keeps it exact and the same on every machine.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

DENOMINATOR = 1 << 20
"""Weights are quantised to multiples of 2^-20 (exact integer comparisons up to ~4e12 samples)."""
CHUNK = 1 << 20
"""Samples per chunk of a large index: its int64 temporaries stay in cache."""


def quantise(weights: np.ndarray) -> np.ndarray:
    """Integer shares of `DENOMINATOR` summing to it exactly (largest remainders), each >= 1."""
    weights = np.asarray(weights, dtype=np.float64)
    if len(weights) == 0 or (weights <= 0).any() or not np.isfinite(weights).all():
        raise ValueError(f"mixture.weights: blend weights must be positive and finite, got {weights.tolist()}")
    exact = weights / weights.sum() * DENOMINATOR
    shares = np.maximum(np.floor(exact).astype(np.int64), 1)
    short = DENOMINATOR - int(shares.sum())
    order = np.argsort(-(exact - np.floor(exact)), kind="stable")
    for i in (order if short > 0 else order[::-1])[: abs(short)]:
        shares[i] += 1 if short > 0 else -1
    return shares


def _add_count_before(
    position: np.ndarray, odd: np.ndarray, q_i: int, q_j: int, inclusive: bool, tmp: np.ndarray
) -> None:
    """Add to `position` how many samples of a source with share `q_j` are due before (or at,
    if `inclusive`) the samples `odd = 2k + 1` of a source with share `q_i`:
    #{m >= 0 : (2m + 1) q_i <(=) (2k + 1) q_j}. In place: these arrays are large."""
    np.multiply(odd, q_j, out=tmp)
    tmp -= q_i
    if inclusive:  # floor(excess / 2q_i) + 1
        np.floor_divide(tmp, 2 * q_i, out=tmp)
        tmp += 1
    else:  # ceil(excess / 2q_i)
        np.negative(tmp, out=tmp)
        np.floor_divide(tmp, 2 * q_i, out=tmp)
        np.negative(tmp, out=tmp)
    np.maximum(tmp, 0, out=tmp)
    position += tmp


def positions(shares: np.ndarray, i: int, k: np.ndarray) -> np.ndarray:
    """The stage positions of source i's samples number `k` (int64 array)."""
    k = np.asarray(k, dtype=np.int64)
    position, odd, tmp = k.copy(), 2 * k + 1, np.empty_like(k)
    for j, q_j in enumerate(shares.tolist()):
        if j != i:
            _add_count_before(position, odd, int(shares[i]), q_j, j < i, tmp)
    return position


def _fill(shares: np.ndarray, start: int, out: np.ndarray) -> None:
    """Write the source of samples `[start, start + len(out))` into `out`. The source with the
    largest share fills what the others leave: its positions need not be computed."""
    stop, fill, margin = start + len(out), int(np.argmax(shares)), len(shares) + 2
    out[:] = fill
    for i, q_i in enumerate(shares.tolist()):
        if i == fill:
            continue
        # position(i, k) is within len(shares) of (2k + 1) * DENOMINATOR / (2 q_i)
        lo = max(0, (start * q_i) // DENOMINATOR - margin)
        hi = (stop * q_i) // DENOMINATOR + margin
        where = positions(shares, i, np.arange(lo, hi, dtype=np.int64))
        where = where[(where >= start) & (where < stop)]
        out[where - start] = i


def blend_sources(shares: np.ndarray, start: int, stop: int, *, threads: int | None = None) -> np.ndarray:
    """The source index (int16) of every stage sample in `[start, stop)`; large ranges are
    computed in cache-sized chunks on `threads` threads (numpy releases the GIL)."""
    out = np.empty(stop - start, dtype=np.int16)
    chunks = [(a, out[a - start : min(stop, a + CHUNK) - start]) for a in range(start, stop, CHUNK)]
    if len(chunks) <= 1:
        for a, part in chunks:
            _fill(shares, a, part)
        return out
    with ThreadPoolExecutor(threads or os.cpu_count() or 1) as pool:
        list(pool.map(lambda chunk: _fill(shares, *chunk), chunks))
    return out


def blend_counts(shares: np.ndarray, n: int) -> np.ndarray:
    """How many of the first n samples each source gets (no index built)."""
    counts = np.zeros(len(shares), dtype=np.int64)
    for i in range(len(shares)):
        # the number of source i's samples with position < n: binary search over k
        lo, hi = 0, n
        while lo < hi:
            mid = (lo + hi) // 2
            if positions(shares, i, np.array([mid]))[0] < n:
                lo = mid + 1
            else:
                hi = mid
        counts[i] = lo
    return counts
