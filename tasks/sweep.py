"""Task: one member of a sweep (an annealing run or a data ablation): train, evaluate, record.

It may run in a process of Prefect's process pool: everything it needs arrives as arguments,
and it sets its own torch thread count so concurrent members share the cores.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from prefect import task
from prefect.runtime import flow_run

from smollm.config import RunConfig, StageConfig
from smollm.runs import tracked_member
from smollm.steps import StepResult
from tasks.common import TASK_OPTIONS, tracker_for


@task(name="sweep-member", task_run_name="member-{stage.name}", **TASK_OPTIONS)
def run_member(
    cfg: RunConfig,
    stage: StageConfig,
    sources: dict[str, StepResult],
    tokenizer: StepResult,
    base: StepResult | None,
    run_id: str,
    threads: int,
    progress: bool = True,
) -> dict[str, Any]:
    cfg = replace(cfg, train=replace(cfg.train, num_threads=threads, progress=cfg.train.progress and progress))
    return tracked_member(
        cfg, stage, sources, tokenizer, base, tracker_for(cfg), run_id=run_id, flow_run_id=flow_run.id
    )
