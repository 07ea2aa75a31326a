"""torch.distributed primitives the trainer runs on: this process's place among the training
processes, the model wrapper (DDP or FSDP2), whole-model/one-process optimizer states, and
torch's launcher.

With `train.processes: N` (N > 1) `smollm.train.train_stage` writes the stage run to a job file
and `launch` runs

    python -m torch.distributed.run --standalone --nproc-per-node N -m smollm.torchrun <job.json>

(torch's own launcher; on a cluster, run the same module under `torchrun --nnodes ...` or
Slurm's `srun torchrun ...`). With one process every helper is the plain single-process
operation. The backend is gloo on CPU and NCCL on GPUs. Nothing here knows the trainer:
`smollm.train` builds on this module, and the torchrun entry `smollm.torchrun` (above both)
builds the trainer in each process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smollm.config import TrackingConfig
from smollm.schema import to_dict

STAGE_RUN_PATHS = ("init_checkpoint", "resume_dir", "resume_from")
"""The optional paths of a `smollm.train.StageRun`."""


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (torchrun's environment variables)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def current(cls) -> World:
        env = os.environ
        return cls(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))

    def init(self) -> None:
        """Join the process group (once)."""
        import torch
        import torch.distributed as dist

        if self.size > 1 and not dist.is_initialized():
            if torch.cuda.is_available():
                torch.cuda.set_device(self.local_rank)
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")

    def close(self) -> None:
        """Leave the process group (the counterpart of `init`)."""
        if self.size > 1:
            import torch.distributed as dist

            dist.destroy_process_group()

    def device(self):
        """This process's GPU (by local rank) if there is one, else the CPU."""
        import torch

        return torch.device("cuda", self.local_rank) if torch.cuda.is_available() else torch.device("cpu")

    def barrier(self) -> None:
        if self.size > 1:
            import torch.distributed as dist

            dist.barrier()

    def mean(self, value: float) -> float:
        """The mean of `value` over the processes."""
        if self.size == 1:
            return value
        import torch
        import torch.distributed as dist

        tensor = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(tensor)  # SUM: gloo has no AVG
        return float(tensor.item()) / self.size


def wrap(model, world: World, parallelism: str):
    """The module the processes run forward/backward through (the model itself with one process)."""
    if world.size == 1:
        return model
    if parallelism == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for layer in model.model.layers:
            fully_shard(layer)
        return fully_shard(model)
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model)


def _parameter_names(model) -> list[str]:
    """Parameter names in the optimizer's order (`make_optimizer`: matrices, then vectors)."""
    named = list(model.named_parameters())
    return [n for n, p in named if p.ndim >= 2] + [n for n, p in named if p.ndim < 2]


def model_state(model, sharded: bool) -> dict[str, Any]:
    """The full weights (every process takes part when `sharded`; rank 0 gets them, on CPU)."""
    if not sharded:
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def optimizer_state(model, optimizer, sharded: bool) -> dict[str, Any]:
    """The optimizer state as one process holds it (parameters numbered in optimizer order), so
    a checkpoint is the same file however many processes or shards wrote it."""
    if not sharded:
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    full: Any = get_optimizer_state_dict(model, optimizer, options=options)
    if not full:  # ranks other than 0
        return {}
    index = {name: i for i, name in enumerate(_parameter_names(model))}
    return {
        "state": {index[name]: value for name, value in full["state"].items()},
        "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in full["param_groups"]],
    }


def load_states(model, optimizer, weights: dict[str, Any] | None, state: dict[str, Any], sharded: bool) -> None:
    """Load full `weights` (if given) and a one-process optimizer `state` into a (sharded) model."""
    if not sharded:
        if weights is not None:
            model.load_state_dict(weights)
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True)
    if weights is not None:
        set_model_state_dict(model, weights, options=options)
    names = _parameter_names(model)
    by_name: Any = {
        "state": {names[i]: value for i, value in state["state"].items()},
        "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]],
    }
    set_optimizer_state_dict(model, optimizer, by_name, options=options)


def job(run: Any, output: Path, tracking: TrackingConfig | None, workdir: Path, run_id: str | None) -> dict[str, Any]:
    """What the torchrun processes are told: the stage run (a `smollm.train.StageRun`), where it
    goes, where rank 0 logs."""
    return {
        "run": {
            "model": to_dict(run.model),
            "train": to_dict(run.train),
            "stage": to_dict(run.stage),
            "mixture": to_dict(run.mixture),
            "sources": {name: str(path) for name, path in run.sources.items()},
            "tokenizer_dir": str(run.tokenizer_dir),
            **{key: None if getattr(run, key) is None else str(getattr(run, key)) for key in STAGE_RUN_PATHS},
            "stop_at_tokens": run.stop_at_tokens,
        },
        "output": str(output),
        "tracking": None if tracking is None else to_dict(tracking),
        "workdir": str(workdir),
        "run_id": run_id,
    }


def torchrun_command(processes: int, job_file: Path) -> list[str]:
    """torch's launcher (`torchrun`) on this node, running the torchrun entry on `job_file`."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={processes}",
        "-m",
        "smollm.torchrun",
        str(job_file),
    ]


def launch(
    run: Any, output: Path, tracking: TrackingConfig | None, workdir: Path, run_id: str | None
) -> dict[str, Any]:
    """Train `run` into `output` with `run.train.processes` processes under torchrun; its summary."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="smollm-job-", delete=False) as handle:
        json.dump(job(run, output, tracking, workdir, run_id), handle)
    try:
        command = torchrun_command(run.train.processes, Path(handle.name))
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    finally:
        os.unlink(handle.name)
    if done.returncode != 0:
        tail = "\n".join(done.stdout.splitlines()[-30:])
        raise RuntimeError(f"train.processes={run.train.processes}: torchrun exited {done.returncode}:\n{tail}")
    return json.loads((output / "summary.json").read_text())
