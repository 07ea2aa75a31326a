"""Warm a process for sweep members: import what a member runs and open its tracker, once, so that
the members the process runs next start at once.

    from smollm.preload import warm_up
    seconds = warm_up(cfg)   # {"train": 2.4, "evaluation": 8.9, "tracker": 1.8}

A fresh process pays ~11 s before a member trains (torch, transformers, lighteval with its
metrics, datasets, mlflow and its store); a worker of a sweep's process pool runs this first
(`flows/workers.py`). The imports happen as a member's own would: the trainer's as they are, the
evaluation backend's in the context `evaluate_checkpoint` imports them in (HF libraries offline
for a local suite: they read that once, at import; grad mode and the RNGs restored after).
It runs no step and no step's code imports it: identities are untouched. `RECORD` says whether
this process was warmed and how many members it has run (tags on each member's MLflow run).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

from smollm.config import RunConfig
from smollm.evaluation.lighteval_backend import _offline_env, _preserved_global_state
from smollm.tracking import make_tracker

TRAIN_MODULES = ("torch", "transformers", "transformers.models.llama.modeling_llama", "smollm.train")
"""What a member's training imports (`smollm.model.build_model` imports its Llama class lazily)."""
EVAL_MODULES = (
    "smollm.evaluation.lighteval_tasks",
    "smollm.evaluation.lighteval_model",
    "lighteval.logging.evaluation_tracker",
    "lighteval.pipeline",
)
"""What `evaluate_checkpoint` imports (lighteval, its metrics and models, datasets)."""


@dataclass
class ProcessRecord:
    """This process as a runner of sweep members (its members' runs are tagged with it)."""

    warmed_seconds: float | None = None
    """What `warm_up` took here; None: never warmed (its first member imported what it needed)."""
    members: int = 0
    """Members started here so far."""

    def tags(self) -> dict[str, str]:
        return {
            "smollm.worker.pid": str(os.getpid()),
            "smollm.worker.warmed": str(self.warmed_seconds is not None).lower(),
            "smollm.worker.members_before": str(self.members),
        }


RECORD = ProcessRecord()


def idle_cores(cfg: RunConfig) -> int:
    """Cores a stage's training leaves idle (what warming alongside it may use without slowing
    it): on a GPU all but one per training process; on the CPU those past its torch threads
    (`train.num_threads`; 0 is torch's default, every core). CPU-bound imports beside a torch
    loop that holds every core slow it by more than their own CPU time (its threads spin at
    each barrier while one is descheduled)."""
    import torch

    cores, processes = os.cpu_count() or 1, cfg.train.processes
    if torch.cuda.is_available():
        return max(0, cores - processes)
    return max(0, cores - cfg.train.num_threads * processes) if cfg.train.num_threads else 0


def warm_up(cfg: RunConfig) -> dict[str, float]:
    """Import what a member of `cfg` runs and open its tracker (`make_tracker`, cached per
    process); sets torch's threads to `train.num_threads` when given. Seconds per part."""
    seconds = {}
    started = time.perf_counter()
    for name in TRAIN_MODULES:
        importlib.import_module(name)
    if cfg.train.num_threads:
        import torch

        torch.set_num_threads(cfg.train.num_threads)
    seconds["train"] = time.perf_counter() - started

    started = time.perf_counter()
    offline = contextlib.nullcontext() if cfg.eval_suite.needs_hub() else _offline_env()
    with offline, _preserved_global_state():
        for name in EVAL_MODULES:
            importlib.import_module(name)
    seconds["evaluation"] = time.perf_counter() - started

    started = time.perf_counter()
    make_tracker(cfg.tracking, Path(cfg.workdir))
    seconds["tracker"] = time.perf_counter() - started
    RECORD.warmed_seconds = sum(seconds.values())
    return seconds
