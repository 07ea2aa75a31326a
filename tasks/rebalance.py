"""Task: read the stage's evaluations and sweeps from MLflow, propose the next stage's mixture, write it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task

from smollm.config import RunConfig
from smollm.rebalance import Proposal
from smollm.runs import tracked_rebalance
from smollm.steps import StepResult
from tasks.common import TASK_OPTIONS, tracker_for


@task(name="rebalance", **TASK_OPTIONS)
def rebalance(
    cfg: RunConfig,
    stage_index: int,
    summary: dict[str, Any],
    sources: dict[str, StepResult],
    *,
    stage_run_id: str,
    previous_stage_run_id: str | None,
    pipeline_run_id: str | None,
    mixture_name: str,
    generated_dir: Path,
    conf_dir: Path,
) -> tuple[Path, Proposal]:
    return tracked_rebalance(
        cfg,
        stage_index,
        summary,
        sources,
        tracker_for(cfg),
        stage_run_id=stage_run_id,
        previous_stage_run_id=previous_stage_run_id,
        pipeline_run_id=pipeline_run_id,
        mixture_name=mixture_name,
        generated_dir=generated_dir,
        conf_dir=conf_dir,
    )
