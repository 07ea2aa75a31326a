"""The tiny size the tests and `bench/loop_bench.py --quick` share: a 2-layer model, small
sources and short sequences, as Hydra overrides of the embedded default. Both build the same
data steps (the same identities) from it, so the quick benchmark in the suite reuses the
session's built tokenizer and sources instead of building its own."""

SHAPE = [
    "tokenizer.vocab_size=512",
    "tokenizer.train_bytes_per_source=300000",
    "model.vocab_size=512",
    "model.hidden_size=64",
    "model.num_layers=2",
    "model.num_heads=4",
    "model.num_kv_heads=2",
    "model.intermediate_size=128",
    "model.max_seq_len=512",
    "data.sources.stdlib_code.num_docs=60",
    "data.sources.stdlib_code.heldout_docs=10",
    "data.sources.synthetic_math.num_docs=4000",
    "data.sources.synthetic_math.heldout_docs=100",
    "data.sources.stdlib_prose.heldout_docs=20",
    "data.sources.noisy_web.num_docs=400",
    "data.sources.noisy_web.heldout_docs=20",
    "train.seq_len=64",
    "train.micro_batch_size=8",
    "train.schedule.warmup_steps=5",
    "train.checkpoint_every_steps=0",
]
