"""The torchrun entry: one training process of a stage run under `torchrun`.

    python -m torch.distributed.run --standalone --nproc-per-node N -m smollm.torchrun <job.json>

`smollm.distributed.launch` runs it when `train.processes > 1` (it writes the job file); on a
cluster, run the same module under `torchrun --nnodes ...` or Slurm's `srun torchrun ...`. Each
process builds the trainer from the job. Every process opens the same sources and draws the
same micro-batches, in the same order as one process would; process r trains on micro-batches
r, r + N, r + 2N, ... of each step and DDP (or FSDP2) averages the gradients, so a step is the
one-process step up to float reduction order. Only rank 0 writes checkpoints, the summary and
the loss record, and logs to MLflow; the others wait at a barrier where it writes. It sits above
the trainer (`smollm.train`) and the primitives (`smollm.distributed`), which never import it.

torchrun starts each process in a session of its own, so a launcher killed outright (SIGKILL, the
OOM killer) would leave its processes training on, writing into the same resume points as the
run that replaces it. Each process therefore asks the kernel to kill it when its launcher dies.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from smollm.config import MixtureConfig, ModelConfig, StageConfig, TrackingConfig, TrainConfig
from smollm.distributed import STAGE_RUN_PATHS, World
from smollm.schema import from_dict
from smollm.tracking import NullTracker, Tracker, make_tracker
from smollm.train import StageRun, Trainer


def stage_run(data: dict[str, Any]) -> StageRun:
    """The inverse of `smollm.distributed.job(...)["run"]`."""
    paths = {key: None if data[key] is None else Path(data[key]) for key in STAGE_RUN_PATHS}
    return StageRun(
        model=from_dict(ModelConfig, data["model"]),
        train=from_dict(TrainConfig, data["train"]),
        stage=from_dict(StageConfig, data["stage"]),
        mixture=from_dict(MixtureConfig, data["mixture"]),
        sources={name: Path(path) for name, path in data["sources"].items()},
        tokenizer_dir=Path(data["tokenizer_dir"]),
        stop_at_tokens=data["stop_at_tokens"],
        **paths,
    )


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_launcher() -> None:
    """SIGKILL this process when its parent (the torchrun agent) dies (Linux; a no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    launcher = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != launcher:  # it died before the request took effect
        os._exit(1)


def main() -> None:
    """One torchrun process: train the job's stage (rank 0 logs to the job's MLflow run)."""
    die_with_launcher()
    job = json.loads(Path(sys.argv[1]).read_text())
    world = World.current()
    world.init()
    tracker: Tracker = NullTracker()
    if world.main and job["tracking"] is not None:
        tracker = make_tracker(from_dict(TrackingConfig, job["tracking"]), Path(job["workdir"]))
    try:
        Trainer(stage_run(job["run"]), tracker, job["run_id"] if world.main else None).run_to_end(Path(job["output"]))
        tracker.flush()  # the run itself is ended by the process that launched torchrun
    finally:
        world.close()


if __name__ == "__main__":
    main()
