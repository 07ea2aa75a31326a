"""The pipeline flow: run a pipeline's stages in order, each rebalanced from the one before.

    python -m flows.pipeline pipeline=demo train.seed=3      # or: smollm run pipeline=demo

It composes the pipeline's lineage once (`smollm.lineage`), plans it (every stage valid, no
source past its epoch cap), then walks it: stage k+1 trains on the mixture stage k's rebalance
wrote (after a person approved or edited it in the Prefect UI, with
`rebalance.approval.ask=true`), from stage k's checkpoint (or, with `init_from`/
`init_at_tokens`, from an earlier stage's, at a point inside it). Completed steps are skipped,
so a re-run only re-reads and re-logs.
"""

from __future__ import annotations

import sys
from pathlib import Path

from prefect import flow
from prefect.runtime import flow_run

from flows.approval import approve_next
from flows.compose import compose_lineage
from flows.plan import preflight
from flows.stage import stage_flow
from flows.workers import warm_workers
from smollm.lineage import Lineage, StageNode
from smollm.results import PipelineResult, StageResult
from smollm.runs import tracked_run
from smollm.tracking import Tracker, make_tracker
from smollm.tracking_mlflow import tracking_uri
from tasks.common import run_logger


@flow(name="smollm-pipeline")
def pipeline_flow(overrides: list[str] | None = None, through: str | None = None) -> PipelineResult:
    """Run every stage of the composed pipeline (or those up to and including the stage named
    `through`); returns each stage flow's result."""
    lineage = compose_lineage(list(overrides or []))
    plan = preflight(lineage)
    for warning in plan.warnings:
        run_logger().warning(warning)
    top = lineage.top
    last = lineage.num_stages - 1 if through is None else lineage.index(through)
    tracker = make_tracker(top.tracking, Path(top.workdir))
    stages: list[StageResult] = []
    stopped = None
    name = f"pipeline/{top.pipeline.name}"
    with (
        warm_workers(),  # kept for every sweep of the run, closed when it ends
        tracked_run(tracker, top, name, "pipeline", parent_run_id=None, flow_run_id=flow_run.id) as run_id,
    ):
        for index in range(last + 1):
            node = next_node(lineage, index, stages, tracker)
            if node is None:
                how = (stages[-1].approval or {}).get("how")
                stopped = f"before {top.pipeline.stages[index].name}: the proposed mixture was not approved ({how})"
                run_logger().warning(f"pipeline stopped {stopped}")
                break
            run_logger().info(f"stage {index + 1}/{lineage.num_stages}: {node.name} on mixture {node.mixture.name}")
            parent = node.start.parent
            origin, trained = (None, None) if parent is None else (lineage.nodes[parent], stages[parent])
            stages.append(stage_flow(node, origin, trained, stages[-1] if stages else None, run_id))
        if stopped:
            tracker.set_tags(run_id, {"smollm.stopped": stopped})
    return PipelineResult(
        pipeline=top.pipeline.name,
        pipeline_run_id=run_id,
        workdir=top.workdir,
        tracking_uri=tracking_uri(top.tracking, Path(top.workdir)),
        stages=stages,
        stopped=stopped,
    )


def next_node(lineage: Lineage, index: int, stages: list[StageResult], tracker: Tracker) -> StageNode | None:
    """Stage `index` of the lineage: on its declared mixture, or on the one the rebalance after the
    stage before proposed (approved or edited by a person, recorded in `stages[-1]`); None when
    the proposal was not approved."""
    stage = lineage.top.pipeline.stages[index]
    if stage.mixture is not None:
        return lineage.extend() if index == len(lineage.nodes) else lineage.nodes[index]
    mixture, stages[-1] = approve_next(lineage.top, stages[-1], stage.name, tracker)
    return None if mixture is None else lineage.decide(index, mixture)


if __name__ == "__main__":
    pipeline_flow(overrides=sys.argv[1:])
