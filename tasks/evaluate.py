"""Task: evaluate a stage's checkpoint with lighteval, log the metrics on the stage run, publish them."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_table_artifact

from smollm.lineage import StageNode
from smollm.runs import tracked_evaluate
from smollm.steps import StepResult
from smollm.tracking import Tracker
from tasks.common import TASK_OPTIONS, artifact_key


@task(name="evaluate", task_run_name="evaluate-{node.name}", **TASK_OPTIONS)
def evaluate_task(
    node: StageNode,
    checkpoint: StepResult,
    sources: dict[str, StepResult],
    tracker: Tracker,
    stage_run_id: str,
    tokens_seen: int,
) -> tuple[StepResult, dict[str, float]]:
    """The evaluation step and its `eval/...` metrics (at `tokens_seen`); a table artifact of
    the category scores."""
    step, metrics = tracked_evaluate(node.cfg, checkpoint, sources, tracker, stage_run_id, tokens_seen, label=node.name)
    rows = [
        {"category": k.split("/", 2)[-1], "score": round(v, 4)}
        for k, v in sorted(metrics.items())
        if k.startswith("eval/category/")
    ]
    create_table_artifact(
        key=artifact_key(node.cfg.pipeline.name, node.name, "evals"),
        table=rows,
        description=f"Evaluations per category after {node.name}",
    )
    return step, metrics
