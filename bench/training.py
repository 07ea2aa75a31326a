"""Training: the trainer's tokens/s against a bare PyTorch loop with the same model, batch and optimizer.

    .venv/bin/python bench/training.py [--quick]

The demo's model and batch shape (conf/model/debug.yaml, conf/train/demo.yaml) on small built
sources. The bare loop trains on batches drawn beforehand (no data path): forward, loss,
backward, clipping, AdamW with the schedule's learning rate. The trainer runs as a stage does:
the mixture sampler, the spike guard, per-step metrics into a real MLflow store, resume points
every `EVERY` steps (written in the background); its tokens/s is its training loop's (the final checkpoint is
not counted). Run by `make bench`.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

from common import ROOT, Row, floor_row, main

SOURCES = [
    "data.sources.stdlib_code.num_docs=100",
    "data.sources.synthetic_math.num_docs=5000",
    "data.sources.stdlib_prose.num_docs=300",
    "tokenizer.train_bytes_per_source=100000",
]
EVERY = 40
"""Steps between resume points (the demo's 100, scaled to the shorter run)."""


def built_demo(work: Path):
    """The demo config with its tokenizer and (smaller) sources built."""
    from flows.compose import compose
    from smollm import stage

    cfg = compose([f"workdir={work}", *SOURCES])
    tokenizer = stage.prepare_tokenizer(cfg)
    sources = {name: stage.build_source(cfg, name, tokenizer) for name in cfg.mixture.weights}
    return cfg, tokenizer, sources


def stage_run(cfg, tokenizer, sources, steps: int, work: Path):
    from smollm.train import StageRun

    train = dataclasses.replace(cfg.train, progress=False, checkpoint_every_steps=EVERY)
    stage = dataclasses.replace(cfg.pipeline.stages[0], train_tokens=steps * train.tokens_per_step)
    return StageRun(
        model=cfg.model,
        train=train,
        stage=stage,
        mixture=cfg.mixture,
        sources={n: r.output for n, r in sources.items()},
        tokenizer_dir=tokenizer.output,
        resume_dir=work / "resume",
    )


def bare_loop(run, steps: int) -> float:
    """Tokens/s of the plain loop: same model, optimizer, schedule and batches, nothing else."""
    import torch
    import torch.nn.functional as F

    from smollm.data.sampler import MixtureSampler
    from smollm.data.shards import TokenizedSource
    from smollm.model import build_model
    from smollm.schedule import stage_schedule
    from smollm.train import make_optimizer

    train = run.train
    torch.set_num_threads(train.num_threads or torch.get_num_threads())
    sampler = MixtureSampler(
        {n: TokenizedSource.open(p) for n, p in run.sources.items()},
        run.mixture.weights,
        seq_len=train.seq_len,
        seed=0,
    )
    batches = [torch.from_numpy(sampler.next_batch(train.micro_batch_size).copy()) for _ in range(steps)]
    model = build_model(run.model, seed=train.seed)
    optimizer = make_optimizer(model, train)
    schedule = stage_schedule(
        peak_lr=train.optimizer.lr,
        warmup_steps=train.schedule.warmup_steps,
        min_lr=train.schedule.min_lr,
        start_step=0,
        num_steps=steps,
        decay_fraction=run.stage.decay_fraction,
    )
    model.train()
    started = time.perf_counter()
    with torch.enable_grad():
        for step, batch in enumerate(batches):
            for group in optimizer.param_groups:
                group["lr"] = schedule.lr(step)
            logits = model(input_ids=batch[:, :-1]).logits
            loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), train.optimizer.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss.item()
    return steps * train.tokens_per_step / (time.perf_counter() - started)


def trainer(run, work: Path, out: Path) -> dict:
    from smollm.tracking import make_tracker
    from smollm.train import Trainer

    cfg_tracking = dataclasses.replace(built_config(work).tracking, experiment="smollm-bench")
    tracker = make_tracker(cfg_tracking, work)
    run_id = tracker.start_run("bench/train")
    out.mkdir(parents=True)
    summary = Trainer(run, tracker, run_id).run_to_end(out)
    tracker.end_run(run_id)
    return summary


def built_config(work: Path):
    from flows.compose import compose

    return compose([f"workdir={work}", *SOURCES])


def run(quick: bool) -> list[Row]:
    import sys

    sys.path.insert(0, str(ROOT))
    steps = 40 if quick else 3 * EVERY
    with tempfile.TemporaryDirectory(prefix="smollm-bench-train-") as tmp:
        work = Path(tmp) / "work"
        cfg, tokenizer, sources = built_demo(work)
        bare, ours = [], []
        for attempt in range(2):  # alternate, keep the best of each: the least disturbed
            bare.append(bare_loop(stage_run(cfg, tokenizer, sources, steps, work / f"b{attempt}"), steps))
            run_ = stage_run(cfg, tokenizer, sources, steps, work / f"t{attempt}")
            ours.append(trainer(run_, work, work / f"t{attempt}" / "out")["tokens_per_second"])
    note = f"demo shape, {steps} steps, a resume point every {EVERY}, MLflow logging"
    return [floor_row("training: trainer / bare PyTorch loop", max(ours), max(bare), 0.95, "tok/s", note)]


if __name__ == "__main__":
    main(run)
