"""Mixture sampler: proportions follow the weights, determinism, exact resume, stage hand-over."""

import json

import numpy as np
import pytest

from smollm.data.sampler import MixtureSampler
from smollm.data.shards import ShardWriter, TokenizedSource


def make_source(root, name, num_tokens, shard_tokens=1000, offset=0):
    folder = root / name
    folder.mkdir()
    writer = ShardWriter(folder, np.dtype(np.uint16), shard_tokens)
    writer.add((np.arange(num_tokens) + offset).astype(np.uint16))
    manifest = {"source": name, "dtype": "uint16", "num_tokens": num_tokens, "shards": writer.close()}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return TokenizedSource.open(folder, verify=True)


@pytest.fixture
def sources(tmp_path):
    return {
        "a": make_source(tmp_path, "a", 5000),
        "b": make_source(tmp_path, "b", 20000, offset=10000),
        "c": make_source(tmp_path, "c", 3000, offset=40000),
    }


WEIGHTS = {"a": 0.5, "b": 0.3, "c": 0.2}


def test_tokens_per_source_follow_the_weights(sources):
    sampler = MixtureSampler(sources, WEIGHTS, seq_len=16, seed=0)
    for _ in range(50):
        sampler.next_batch(8)
    tokens = sampler.tokens_per_source(stage_only=True)
    total = sum(tokens.values())
    for name, weight in WEIGHTS.items():
        assert tokens[name] / total == pytest.approx(weight, abs=1 / 400)


def test_batches_come_from_their_source_and_are_contiguous(sources):
    sampler = MixtureSampler(sources, {"c": 1.0}, seq_len=16, seed=0)
    batch = sampler.next_batch(4)
    assert batch.shape == (4, 17)
    assert ((batch >= 40000) & (batch < 43000)).all()
    assert (np.diff(batch, axis=1) == 1).all()


def test_same_seed_same_stream_other_seed_other_stream(sources):
    def stream(seed):
        s = MixtureSampler(sources, WEIGHTS, seq_len=16, seed=seed)
        return np.concatenate([s.next_batch(8) for _ in range(5)])

    assert np.array_equal(stream(0), stream(0))
    assert not np.array_equal(stream(0), stream(1))


def test_exact_resume_from_saved_position(sources):
    full = MixtureSampler(sources, WEIGHTS, seq_len=16, seed=0)
    expected = [full.next_batch(8) for _ in range(40)]
    first = MixtureSampler(sources, WEIGHTS, seq_len=16, seed=0)
    for _ in range(17):
        first.next_batch(8)
    state = json.loads(json.dumps(first.state_dict()))
    resumed = MixtureSampler(sources, WEIGHTS, seq_len=16, seed=0)
    resumed.load_state_dict(state)
    for i in range(17, 40):
        assert np.array_equal(resumed.next_batch(8), expected[i])


def test_epochs_wrap_and_a_new_stage_keeps_the_totals(sources):
    sampler = MixtureSampler(sources, {"c": 1.0}, seq_len=16, seed=0)
    # 3 shards of 1000 tokens -> 62 windows of 16 each -> an epoch is 186 distinct windows
    first_epoch = np.stack([sampler.next_batch(1)[0] for _ in range(186)])
    assert len({tuple(r) for r in first_epoch}) == 186
    assert sampler.epochs_per_source()["c"] == pytest.approx(186 * 16 / 3000)
    state = sampler.state_dict()
    nxt = MixtureSampler(sources, {"a": 0.5, "c": 0.5}, seq_len=16, seed=0)
    nxt.load_state_dict(state, new_stage=True)
    nxt.next_batch(2)
    assert nxt.tokens_per_source()["c"] == (186 + 1) * 16
    assert nxt.tokens_per_source(stage_only=True) == {"a": 16, "c": 16}


def test_blend_index_follows_the_weights_at_every_prefix_and_chunks_agree():
    from smollm.data.blend import DENOMINATOR, blend_counts, blend_sources, quantise

    rng = np.random.default_rng(0)
    for _ in range(60):
        weights = np.maximum(rng.dirichlet(np.ones(int(rng.integers(1, 9))) * rng.choice([0.3, 1.0, 5.0])), 1e-4)
        shares = quantise(weights)
        assert shares.sum() == DENOMINATOR and (shares >= 1).all()
        n = 4000
        index = blend_sources(shares, 0, n)
        assert np.array_equal(
            index, np.concatenate([blend_sources(shares, a, min(n, a + 611)) for a in range(0, n, 611)])
        )
        counts = np.stack([np.cumsum(index == i) for i in range(len(shares))])
        share = shares / DENOMINATOR
        # each source's count is its due times rounded: off by <= 1/2, and n by <= S/2 in all
        bound = 0.5 + share * len(shares) / 2 + 1e-6
        assert (np.abs(counts - share[:, None] * np.arange(1, n + 1)).max(axis=1) <= bound).all()
        assert np.array_equal(blend_counts(shares, 2345), counts[:, 2344])


def test_large_blend_index_is_computed_in_threads_and_is_exact():
    from smollm.data.blend import blend_counts, blend_sources, quantise

    shares = quantise(np.array([0.55, 0.3, 0.1, 0.05]))
    n = 3_000_001  # several chunks on several threads
    index = blend_sources(shares, 0, n, threads=2)
    assert np.array_equal(np.bincount(index, minlength=4), blend_counts(shares, n))
    assert np.array_equal(index[1_234_567:1_234_667], blend_sources(shares, 1_234_567, 1_234_667))


def test_a_saved_position_from_another_mixture_is_refused(sources):
    sampler = MixtureSampler(sources, WEIGHTS, seq_len=16, seed=0)
    sampler.next_batch(8)
    other = MixtureSampler(sources, {"a": 0.2, "b": 0.3, "c": 0.5}, seq_len=16, seed=0)
    with pytest.raises(ValueError, match="sampler state: samples per source"):
        other.load_state_dict(sampler.state_dict())


def test_a_batch_handed_out_is_never_overwritten_by_later_reads(sources):
    sampler = MixtureSampler(sources, WEIGHTS, seq_len=16, seed=0)
    kept = sampler.next_batch(8)
    copy = kept.copy()
    for _ in range(1000):  # many read-aheads: their buffers are reused only when no batch points into them
        sampler.next_batch(8)
    assert np.array_equal(kept, copy)
