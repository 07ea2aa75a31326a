"""Task: train one stage (or its prefix, for a branch) from its starting checkpoint, tracked in MLflow."""

from __future__ import annotations

from prefect import task
from prefect.runtime import flow_run

from smollm.config import RunConfig
from smollm.runs import tracked_train
from smollm.stage import TrainOutcome
from smollm.steps import StepResult
from tasks.common import TASK_OPTIONS, tracker_for


@task(name="train-stage", task_run_name="train-{stage_index}", **TASK_OPTIONS)
def train_stage(
    cfg: RunConfig,
    stage_index: int,
    sources: dict[str, StepResult],
    tokenizer: StepResult,
    previous: StepResult | None,
    stage_run_id: str,
    stop_at_tokens: int | None = None,
    resume_from: StepResult | None = None,
) -> TrainOutcome:
    return tracked_train(
        cfg,
        cfg.pipeline.stages[stage_index],
        sources,
        tokenizer,
        previous,
        tracker_for(cfg),
        stage_run_id=stage_run_id,
        flow_run_id=flow_run.id,
        stop_at_tokens=stop_at_tokens,
        resume_from=resume_from,
    )
