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
"""

from __future__ import annotations

import json
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


def main() -> None:
    """One torchrun process: train the job's stage (rank 0 logs to the job's MLflow run)."""
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
