"""Train one stage of a pipeline: a `LlamaForCausalLM`, AdamW, WSD, the mixture sampler.

A stage starts from scratch (the first stage, or a data ablation) or continues from an earlier
stage's checkpoint with its optimizer state, step, tokens seen and sampler totals; the weights
load into the stage's own model shape, so a stage may change RoPE θ or the context length.
`stop_at_tokens` ends a stage early on its own schedule (the checkpoint a branch starts from).
Its output is a checkpoint folder:
    model/               save_pretrained weights + config + the tokenizer (AutoModel/lighteval load it)
    trainer_state.pt     optimizer, step, tokens seen, sampler position, RNG states
    summary.json         step range, tokens (per source, epochs), first/last loss, skipped steps
    losses.jsonl         one line per optimizer step: step, tokens, loss, lr, grad_norm
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from smollm.checkpoint import (  # noqa: F401 - re-exported: callers load checkpoints from here
    STATE_FILE,
    BackgroundWriter,
    latest_resume_point,
    load_checkpoint,
    moments_digest,
    save_checkpoint,
    save_resume_point,
    snapshot,
)
from smollm.config import MixtureConfig, ModelConfig, StageConfig, TrackingConfig, TrainConfig
from smollm.data.sampler import MixtureSampler
from smollm.data.shards import TokenizedSource
from smollm.distributed import World, load_states, model_state, optimizer_state, wrap
from smollm.model import build_model
from smollm.schedule import stage_schedule
from smollm.spikes import SpikeGuard
from smollm.tracking import NullTracker, Tracker


@dataclass(frozen=True, kw_only=True)
class StageRun:
    """Everything one stage's training needs, resolved to paths."""

    model: ModelConfig
    train: TrainConfig
    stage: StageConfig
    mixture: MixtureConfig
    sources: dict[str, Path]
    """Built token folders per source."""
    tokenizer_dir: Path
    init_checkpoint: Path | None = None
    resume_dir: Path | None = None
    """Where intermediate checkpoints go, so a killed run resumes."""
    stop_at_tokens: int | None = None
    """Stop this many tokens into the stage (its LR schedule still spans the whole stage)."""
    resume_from: Path | None = None
    """A complete prefix of this same stage (`stop_at_tokens` output) to continue from: the
    result is bit-identical to training through it, so a branch point costs no extra compute."""


def _rng_state() -> dict[str, Any]:
    import torch

    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_state(state: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def make_optimizer(model, train: TrainConfig):
    """AdamW; no weight decay on norms (1-D parameters)."""
    import torch

    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = train.optimizer
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": opt.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=opt.lr,
        betas=(opt.betas[0], opt.betas[1]),
        eps=opt.eps,
        fused=decay[0].is_cuda or None,  # one kernel for all parameters on GPUs
    )


class Trainer:
    """Runs one stage; `run()` trains to the stage's end and writes the checkpoint."""

    def __init__(self, run: StageRun, tracker: Tracker | None = None, run_id: str | None = None) -> None:
        import torch

        self.world = World.current()
        if run.train.micro_batches_per_step % self.world.size:
            raise ValueError(
                f"train.processes: {self.world.size} processes do not divide the "
                f"{run.train.micro_batches_per_step} micro-batches of a step (grad_accum_steps x data_parallel)"
            )
        self.world.init()
        if not self.world.main:  # rank 0 alone logs
            tracker, run_id = None, None
        self.run, self.tracker, self.run_id = run, tracker or NullTracker(), run_id
        if run.train.num_threads:
            torch.set_num_threads(run.train.num_threads)
        sources = {name: TokenizedSource.open(path) for name, path in run.sources.items()}
        self.sampler = MixtureSampler(sources, run.mixture.weights, seq_len=run.train.seq_len, seed=run.train.seed)
        self.step, self.tokens_seen, self.skipped_steps = 0, 0, 0
        self.guard, self.rewinds = SpikeGuard(run.train.spikes), 0
        self.writer = BackgroundWriter()
        self.events: list[dict[str, Any]] = []
        """Skipped steps and rewinds, in order (summary.json; MLflow)."""
        self.model, state = self._initial_model()
        self.device = self.world.device()
        self.sharded = self.world.size > 1 and run.train.parallelism == "fsdp"
        self.model.to(self.device)
        self.module = wrap(self.model, self.world, run.train.parallelism)
        """What forward/backward run through: the model, or its DDP/FSDP wrapper (compiled if asked)."""
        if run.train.compile:
            self.module = torch.compile(self.module)
        self.optimizer = make_optimizer(self.model, run.train)
        self.optimizer_loaded: dict[str, Any] | None = None
        """What the optimizer holds after loading the start checkpoint, measured against what the
        checkpoint saved (`moments_digest`); None when the stage starts from scratch."""
        if state is not None:
            load_states(self.model, self.optimizer, None, state["optimizer"], self.sharded)
            self.optimizer_loaded = self._measure_loaded(state["optimizer"])
            self.step, self.tokens_seen = state["step"], state["tokens_seen"]
            self.sampler.load_state_dict(state["sampler"], new_stage=True)
        self.start_step = self.step
        self.start_tokens = self.tokens_seen
        self.num_steps = run.stage.train_tokens // run.train.tokens_per_step
        stop = run.stop_at_tokens
        self.end_step = self.start_step + (self.num_steps if stop is None else stop // run.train.tokens_per_step)
        self.schedule = stage_schedule(
            peak_lr=run.train.optimizer.lr,
            warmup_steps=run.train.schedule.warmup_steps,
            min_lr=run.train.schedule.min_lr,
            start_step=self.start_step,
            num_steps=self.num_steps,
            decay_fraction=run.stage.decay_fraction,
        )
        self.losses: list[dict[str, float]] = []
        self.resumed_from = self._resume()

    def _initial_model(self):
        import torch

        torch.manual_seed(self.run.train.seed)
        if self.run.init_checkpoint is None:
            return build_model(self.run.model, seed=self.run.train.seed), None
        try:  # the stage's own shape (e.g. a new RoPE θ or context length) with the trained weights
            return load_checkpoint(self.run.init_checkpoint, self.run.model)
        except RuntimeError:  # transformers has logged which weights differ
            raise ValueError(
                f"model: does not fit the checkpoint {self.run.init_checkpoint}: size mismatch of its weights"
            ) from None

    def _measure_loaded(self, saved: dict[str, Any]) -> dict[str, Any]:
        """The live optimizer's moments against the checkpoint's (every process gathers when sharded)."""
        live = moments_digest(optimizer_state(self.model, self.optimizer, self.sharded))
        expected = moments_digest(saved)
        return {"checkpoint": str(self.run.init_checkpoint), "expected": expected, "loaded": live}

    def _resume(self) -> Path | None:
        point = latest_resume_point(self.run.resume_dir) or self.run.resume_from
        if point is None:
            return None
        state = self._load_point(point)
        self.skipped_steps = state.get("skipped_steps", 0)
        self.sampler.load_state_dict(state["sampler"])
        if "guard" in state:
            self.guard.load_state_dict(state["guard"])
            self.events, self.rewinds = state["events"], state["rewinds"]
        return point

    def _load_point(self, point: Path) -> dict[str, Any]:
        """Weights, optimizer, counters, loss record and RNG from a checkpoint (not the sampler)."""
        model, state = load_checkpoint(point)
        load_states(self.model, self.optimizer, model.state_dict(), state["optimizer"], self.sharded)
        self.step, self.tokens_seen = state["step"], state["tokens_seen"]
        self.losses = state.get("losses", [])
        _set_rng_state(state["rng"])
        return state

    def _rewind(self) -> None:
        """Back to the last checkpoint, keeping the sampler where it is: the data window drawn
        since then (which kept producing spikes) is skipped, as the SmolLM2 authors did by hand."""
        self.writer.wait()  # the last resume point is on disk (rank 0) ...
        self.world.barrier()  # ... before any process looks for it
        point = latest_resume_point(self.run.resume_dir)
        spikes = self.run.train.spikes
        if point is None or self.rewinds >= spikes.max_rewinds:
            why = "no checkpoint to rewind to" if point is None else f"max_rewinds={spikes.max_rewinds} reached"
            why += ": the level moved, a new baseline"
            self.events.append({"step": self.step, "tokens": self.tokens_seen, "rewind": None, "reason": why})
            self.guard.new_baseline()
            return
        sampler, at_step, at_tokens = self.sampler.state_dict(), self.step, self.tokens_seen
        drawn = self.sampler.tokens_per_source()
        self._load_point(point)
        self.sampler.load_state_dict(sampler)
        self.rewinds += 1
        self.guard.in_a_row = 0
        self.events.append(
            {
                "step": at_step,
                "tokens": at_tokens,
                "rewind": {"to_step": self.step, "to_tokens": self.tokens_seen, "checkpoint": str(point)},
                "skipped_window": {"steps": [self.step + 1, at_step], "drawn_tokens_per_source_at_end": drawn},
            }
        )

    def _optimizer_state_loaded(self) -> bool:
        """Whether the start checkpoint's AdamW moments are what the optimizer held after loading."""
        loaded = self.optimizer_loaded
        return bool(loaded and loaded["expected"]["parameters"] and loaded["loaded"] == loaded["expected"])

    def state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "optimizer": optimizer_state(self.model, self.optimizer, self.sharded),
            "sampler": self.sampler.state_dict(),
            "rng": _rng_state(),
            "skipped_steps": self.skipped_steps,
            "guard": self.guard.state_dict(),
            "events": self.events,
            "rewinds": self.rewinds,
            "stage": self.run.stage.name,
            "mixture": dict(self.run.mixture.weights),
            "losses": self.losses,
        }

    def train_step(self) -> dict[str, float]:
        import torch
        import torch.nn.functional as F

        train = self.run.train
        lr = self.schedule.lr(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        # Each process runs its share of the step's micro-batches: all draw the same global ones
        # (process r trains on every world.size-th), and DDP averages the gradients.
        world, size = self.world, train.micro_batch_size
        total, micro_batches = 0.0, train.micro_batches_per_step // world.size
        for index in range(micro_batches):
            rows = self.sampler.next_batch(size * world.size)[world.rank * size : (world.rank + 1) * size]
            batch = torch.from_numpy(rows).to(self.device, non_blocking=True)
            with self._gradient_sync(index == micro_batches - 1):
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=train.precision == "bf16"):
                    logits = self.module(input_ids=batch[:, :-1]).logits
                loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1))
                (loss / micro_batches).backward()
            total += loss.item() / micro_batches
        total = world.mean(total)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), train.optimizer.grad_clip))
        skip = self.guard.verdict(total, grad_norm)
        if skip is None:
            self.optimizer.step()
        else:  # a non-finite or spiking loss or gradient never reaches the weights
            self.skipped_steps += 1
            self.events.append({"step": self.step + 1, "tokens": self.tokens_seen, "skipped": skip})
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens_seen += train.tokens_per_step
        return {"loss": total, "lr": lr, "grad_norm": grad_norm, "skipped": float(skip is not None)}

    @contextlib.contextmanager
    def _gradient_sync(self, last: bool) -> Iterator[None]:
        """Processes average gradients on a step's last micro-batch only."""
        if self.world.size == 1 or last:
            yield
        elif hasattr(self.module, "no_sync"):  # DDP
            with self.module.no_sync():
                yield
        else:  # FSDP2
            self.module.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                self.module.set_requires_gradient_sync(True)

    def _log(self, record: dict[str, float]) -> None:
        metrics = {f"train/{k}": v for k, v in record.items()}
        metrics.update({f"tokens/{k}": v for k, v in self.sampler.tokens_per_source().items()})
        metrics["train/step"] = self.step
        metrics["train/skipped_steps"] = self.skipped_steps
        metrics["train/rewinds"] = self.rewinds
        if self.run_id:
            self.tracker.log_metrics(self.run_id, metrics, step=self.tokens_seen)

    def _save_resume_point(self, resume_dir: Path) -> None:
        """A resume point, written in the background from a snapshot taken now (rank 0 writes)."""
        state, weights = self.state(), model_state(self.model, self.sharded)  # all processes (shards)
        if self.world.main:
            state, weights, step = snapshot(state), snapshot(weights), self.step
            model, tokenizer = self.model, self.run.tokenizer_dir
            self.writer.submit(lambda: save_resume_point(resume_dir, step, model, tokenizer, state, weights))

    def run_to_end(self, output: Path) -> dict[str, Any]:
        import torch

        # Grad mode is thread-local and other libraries flip it (lighteval disables it at import,
        # in whichever thread imports it first): training states it explicitly.
        try:
            with torch.enable_grad():
                return self._run_to_end(output)
        except BaseException:
            self.writer.wait(raise_errors=False)  # a resume point being written is finished
            raise

    def _run_to_end(self, output: Path) -> dict[str, Any]:
        from tqdm.auto import tqdm

        train, end = self.run.train, self.end_step
        self.model.train()
        started = time.perf_counter()
        bar = tqdm(
            total=end - self.start_step,
            initial=self.step - self.start_step,
            desc=f"train {self.run.stage.name}",
            unit="step",
            disable=not train.progress or not self.world.main,
            dynamic_ncols=True,
        )
        while self.step < end:
            record = self.train_step()
            self.losses.append({"step": self.step, "tokens": self.tokens_seen, **record})
            self._log(record)
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}")
            if self.guard.should_rewind:
                self._rewind()
                continue
            every = train.checkpoint_every_steps
            if every and self.run.resume_dir and (self.step - self.start_step) % every == 0 and self.step < end:
                self._save_resume_point(self.run.resume_dir)
        bar.close()
        self.writer.wait()
        elapsed = time.perf_counter() - started
        summary = self.summary(elapsed)
        state, weights = self.state(), model_state(self.model, self.sharded)
        if self.world.main:
            save_checkpoint(output, self.model, self.run.tokenizer_dir, state, weights)
            (output / "summary.json").write_text(json.dumps(summary, indent=2))
            with open(output / "losses.jsonl", "w") as handle:
                for record in self.losses:
                    handle.write(json.dumps(record) + "\n")
        self.world.barrier()
        return summary

    def summary(self, elapsed: float) -> dict[str, Any]:
        stage_losses = [r["loss"] for r in self.losses if r["step"] > self.start_step]
        return {
            "stage": self.run.stage.name,
            "stop_at_tokens": self.run.stop_at_tokens,
            "start_step": self.start_step,
            "end_step": self.step,
            "start_tokens": self.start_tokens,
            "tokens_seen": self.tokens_seen,
            "mixture": dict(self.run.mixture.weights),
            "stage_tokens_per_source": self.sampler.tokens_per_source(stage_only=True),
            "tokens_per_source": self.sampler.tokens_per_source(),
            "epochs_per_source": self.sampler.epochs_per_source(),
            "first_loss": stage_losses[0] if stage_losses else None,
            "last_loss": float(np.mean(stage_losses[-10:])) if stage_losses else None,
            "final_lr": self.losses[-1]["lr"] if self.losses else None,
            "skipped_steps": self.skipped_steps,
            "spike_skips": sum(1 for e in self.events if "spike" in e.get("skipped", "")),
            "nonfinite_skips": sum(1 for e in self.events if "non-finite" in e.get("skipped", "")),
            "rewinds": self.rewinds,
            "events": self.events,
            "resumed_from": str(self.resumed_from) if self.resumed_from else None,
            "mlflow_run_id": self.run_id,
            "optimizer_state_loaded": self._optimizer_state_loaded(),
            "optimizer_state": self.optimizer_loaded,
            "seconds": elapsed,
            "tokens_per_second": (self.step - self.start_step) * self.run.train.tokens_per_step / max(elapsed, 1e-9),
        }


def train_stage(
    run: StageRun,
    output: Path,
    tracker: Tracker | None = None,
    run_id: str | None = None,
    *,
    tracking: TrackingConfig | None = None,
    workdir: Path | None = None,
) -> dict:
    """Train the stage to its end and write the checkpoint into `output`; with
    `train.processes > 1` (and not already under torchrun), in that many processes under
    torchrun, rank 0 logging to `run_id` in the store of `tracking` (relative to `workdir`)."""
    if run.train.processes > 1 and World.current().size == 1:
        from smollm.distributed import launch

        return launch(run, output, tracking, workdir or output.parent, run_id)
    return Trainer(run, tracker, run_id).run_to_end(output)
