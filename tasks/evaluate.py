"""Task: evaluate a checkpoint with lighteval and log the metrics on the stage run."""

from __future__ import annotations

from prefect import task

from smollm.config import RunConfig
from smollm.runs import tracked_evaluate
from smollm.steps import StepResult
from tasks.common import TASK_OPTIONS, tracker_for


@task(name="evaluate", **TASK_OPTIONS)
def evaluate(
    cfg: RunConfig, checkpoint: StepResult, sources: dict[str, StepResult], stage_run_id: str, tokens_seen: int
) -> dict[str, float]:
    return tracked_evaluate(
        cfg, checkpoint, sources, tracker_for(cfg), stage_run_id=stage_run_id, tokens_seen=tokens_seen
    )
