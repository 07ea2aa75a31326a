"""GPU: the trainer's model FLOPs utilisation for the SmolLM2-135M and -360M shapes in bf16.

    .venv/bin/python bench/mfu.py [--quick]

The trainer's own step (`Trainer.train_step`: the mixture sampler, autocast bf16, SDPA attention,
clipping, fused AdamW) on random tokens at 2048 context, with and without `torch.compile`.
MFU = tokens/s x FLOPs per token / the device's dense bf16 peak, with FLOPs per token =
6 x parameters (the tied LM head counted once, as compute) + 12 x layers x hidden x context
(attention scores and values, PaLM's convention). Without a CUDA device it reports one row
saying so. Run by `make bench`.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from common import ROOT, Row, main

PEAK_BF16 = {"H100 PCIe": 756e12, "H100 NVL": 835e12, "H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12}
"""Dense bf16 tensor-core peak FLOP/s by device name (most specific first)."""
SHAPES = {"smollm2_135m": 16, "smollm2_360m": 8}
"""Shape -> micro-batch (sequences of 2048 tokens) per step."""


def peak(name: str) -> float | None:
    return next((flops for key, flops in PEAK_BF16.items() if key in name), None)


def random_source(root: Path, vocab: int, num_tokens: int) -> Path:
    from smollm.data.shards import ShardWriter

    folder = root / "random"
    folder.mkdir()
    writer = ShardWriter(folder, np.dtype(np.uint16), 1 << 26)
    writer.add(np.random.default_rng(0).integers(0, vocab, num_tokens, dtype=np.uint16))
    manifest = {"source": "random", "dtype": "uint16", "num_tokens": num_tokens, "shards": writer.close()}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def measure(shape: str, micro_batch: int, compile_model: bool, root: Path, steps: int) -> float:
    """Tokens/s of the trainer's step on this shape."""
    import torch

    from smollm.config import MixtureConfig, ModelConfig, StageConfig, TrainConfig
    from smollm.schema import from_dict
    from smollm.train import StageRun, Trainer

    model = from_dict(ModelConfig, yaml.safe_load((ROOT / "conf/model" / f"{shape}.yaml").read_text()))
    train_data = yaml.safe_load((ROOT / "conf/train/smollm2.yaml").read_text())
    train_data.update(micro_batch_size=micro_batch, data_parallel=1, compile=compile_model, progress=False)
    train = from_dict(TrainConfig, train_data)
    source = root / "random"
    if not source.is_dir():
        random_source(root, model.vocab_size, 1 << 27)
    run = StageRun(
        model=model,
        train=train,
        stage=StageConfig(name="bench", train_tokens=(steps + 10) * train.tokens_per_step),
        mixture=MixtureConfig(name="random", weights={"random": 1.0}),
        sources={"random": source},
        tokenizer_dir=root,  # never read: nothing is saved
    )
    trainer = Trainer(run)
    with torch.enable_grad():
        for _ in range(5):  # warm-up (and compilation)
            trainer.train_step()
        torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
        torch.cuda.synchronize()
    return steps * train.tokens_per_step / (time.perf_counter() - started)


def flops_per_token(shape: str) -> float:
    from smollm.config import ModelConfig
    from smollm.model import parameter_count
    from smollm.schema import from_dict

    model = from_dict(ModelConfig, yaml.safe_load((ROOT / "conf/model" / f"{shape}.yaml").read_text()))
    return 6 * parameter_count(model) + 12 * model.num_layers * model.hidden_size * model.max_seq_len


def run(quick: bool) -> list[Row]:
    import torch

    if not torch.cuda.is_available():
        return [Row("gpu: trainer MFU", "-", "-", None, ">= 0.45 on H100", None, "no CUDA device here: not measured")]
    device = torch.cuda.get_device_name()
    top = peak(device)
    rows = []
    with tempfile.TemporaryDirectory(prefix="smollm-bench-mfu-") as tmp:
        for shape, micro_batch in SHAPES.items():
            for compile_model in (False, True):
                tokens = measure(shape, micro_batch, compile_model, Path(tmp), 10 if quick else 30)
                mfu = tokens * flops_per_token(shape) / top if top else None
                rows.append(
                    Row(
                        f"gpu: {shape} bf16{' compiled' if compile_model else ''} MFU",
                        f"{tokens:,.0f} tok/s",
                        f"{top / 1e12:.0f} TFLOP/s peak" if top else "unknown peak",
                        mfu,
                        ">= 0.45 on H100",
                        None if mfu is None else mfu >= 0.45,
                        f"{device}, micro-batch {micro_batch} x 2048, SDPA",
                    )
                )
    return rows


if __name__ == "__main__":
    main(run)
