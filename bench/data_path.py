"""Data path: the mixture sampler against a raw sequential read of the same memory-mapped
shards, and the time to build a blend index for 10^8 samples.

    .venv/bin/python bench/data_path.py [--quick]

Three sources of random uint16 tokens (shards of 2^22 tokens) are written to a temp dir and
read once (page cache warm); both sides then produce `[batch, seq_len + 1]` int64 arrays: the
baseline slices consecutive windows straight off the shards, the sampler blends the sources by
weight and draws windows in its per-epoch permutation. Run by `make bench`.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
from common import Row, best_of, floor_row, main

from smollm.data.blend import blend_sources, quantise
from smollm.data.sampler import MixtureSampler
from smollm.data.shards import ShardWriter, TokenizedSource

SEQ_LEN, BATCH = 2048, 16
WEIGHTS = {"web": 0.6, "code": 0.3, "math": 0.1}


def write_source(root: Path, name: str, num_tokens: int, seed: int) -> TokenizedSource:
    folder = root / name
    folder.mkdir()
    writer = ShardWriter(folder, np.dtype(np.uint16), 1 << 22)
    rng = np.random.default_rng(seed)
    for start in range(0, num_tokens, 1 << 22):
        writer.add(rng.integers(0, 49152, size=min(1 << 22, num_tokens - start), dtype=np.uint16))
    manifest = {"source": name, "dtype": "uint16", "num_tokens": num_tokens, "shards": writer.close()}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    source = TokenizedSource.open(folder)
    for shard in source.shards:  # warm the page cache: both sides read from memory
        np.asarray(shard).sum()
    return source


def raw_read(sources: dict[str, TokenizedSource], num_batches: int) -> None:
    """Consecutive `BATCH * (SEQ_LEN + 1)`-token slices, shard after shard, as int64 batches."""
    shards = [shard for source in sources.values() for shard in source.shards]
    size, done, s, at = BATCH * (SEQ_LEN + 1), 0, 0, 0
    while done < num_batches:
        if at + size > len(shards[s]):
            s, at = (s + 1) % len(shards), 0
            continue
        np.asarray(shards[s][at : at + size], dtype=np.int64).reshape(BATCH, SEQ_LEN + 1)
        at, done = at + size, done + 1


def sampled(sources: dict[str, TokenizedSource], num_batches: int, sampler_class=MixtureSampler) -> None:
    sampler = sampler_class(sources, WEIGHTS, seq_len=SEQ_LEN, seed=0)
    for _ in range(num_batches):
        sampler.next_batch(BATCH)


def run(quick: bool) -> list[Row]:
    tokens_each, num_batches = (1 << 23, 300) if quick else (1 << 25, 2000)
    with tempfile.TemporaryDirectory(prefix="smollm-bench-data-") as tmp:
        sources = {name: write_source(Path(tmp), name, tokens_each, i) for i, name in enumerate(WEIGHTS)}
        tokens = num_batches * BATCH * SEQ_LEN
        raw = tokens / best_of(lambda: raw_read(sources, num_batches), 3)
        mixed = tokens / best_of(lambda: sampled(sources, num_batches), 3)
    samples = 10**7 if quick else 10**8
    shares = quantise(np.array([0.5, 0.3, 0.15, 0.05]))
    started = time.perf_counter()
    blend_sources(shares, 0, samples)
    index_seconds = time.perf_counter() - started
    shape = f"{BATCH}x{SEQ_LEN + 1}, 3 sources"
    return [
        floor_row("data: sampler / raw sequential memmap read", mixed, raw, 0.5, "tok/s", shape),
        Row(
            f"data: blend index for {samples:.0e} samples",
            f"{index_seconds:.2f} s",
            "-",
            None,
            "< 5 s",
            index_seconds < 5,
            "4 sources, 2 threads",
        ),
    ]


if __name__ == "__main__":
    main(run)
