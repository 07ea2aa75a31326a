"""The pipeline flow: run a pipeline's stages in order, each rebalanced from the one before.

    python -m flows.pipeline pipeline=demo train.seed=3      # or: smollm run pipeline=demo

Stage k+1 composes the mixture file that stage k's rebalance wrote (after a person approved or
edited it in the Prefect UI, with `rebalance.approval.ask=true`), trains from stage k's
checkpoint (or, with `init_from`/`init_at_tokens`, from an earlier stage's, at a point inside
it), and so on. Completed steps are skipped, so a re-run only re-reads and re-logs.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.runtime import flow_run

from flows.approval import ask, record
from flows.compose import compose
from flows.plan import preflight
from flows.stage import choose_mixture, stage_flow, start_point
from smollm.runs import start_config_run
from smollm.tracking import make_tracker, tracking_uri


@flow(name="smollm-pipeline", log_prints=True)
def pipeline_flow(overrides: list[str] | None = None, through: str | None = None) -> dict[str, Any]:
    """Run every stage of the composed pipeline (or those up to and including the stage named
    `through`); returns each stage flow's result."""
    overrides = list(overrides or [])
    plan = preflight(overrides)  # every stage's config valid, no source past its epoch cap
    for warning in plan.warnings:
        print(f"warning: {warning}")
    cfg = compose(overrides)
    names = [stage.name for stage in cfg.pipeline.stages]
    if through is not None and through not in names:
        raise ValueError(f"through: {through!r} is not a stage of pipeline {cfg.pipeline.name!r} ({', '.join(names)})")
    tracker = make_tracker(cfg.tracking, Path(cfg.workdir))
    run_id = start_config_run(
        tracker, cfg, f"pipeline/{cfg.pipeline.name}", "pipeline", parent_run_id=None, flow_run_id=flow_run.id
    )
    stages: list[dict[str, Any]] = []
    stopped = None
    try:
        for index, stage in enumerate(cfg.pipeline.stages):
            previous = stages[-1] if stages else None
            mixture = choose_mixture(stage.mixture, index, previous)
            if previous is not None and stage.mixture is None and cfg.rebalance.approval.ask:
                decision = ask(cfg, previous, stage.name)
                record(cfg, previous, decision)
                previous["approval"] = {"how": decision.how, "mixture": decision.mixture}
                if decision.mixture is None:
                    stopped = f"before {stage.name}: the proposed mixture was not approved ({decision.how})"
                    print(f"pipeline stopped {stopped}")
                    break
                mixture = decision.mixture
            print(f"stage {index + 1}/{len(cfg.pipeline.stages)}: {stage.name}")
            parent = cfg.pipeline.parent(index)
            start = None if parent is None else start_point(stages[parent], stage.init_at_tokens)
            result = stage_flow(
                overrides=overrides,
                stage_index=index,
                mixture=mixture,
                previous=previous,
                pipeline_run_id=run_id,
                start=start,
            )
            stages.append(result)
            if stage.name == through:
                break
    except BaseException:
        tracker.end_run(run_id, "FAILED")
        raise
    if stopped:
        tracker.set_tags(run_id, {"smollm.stopped": stopped})
    tracker.end_run(run_id)
    return {
        "pipeline": cfg.pipeline.name,
        "pipeline_run_id": run_id,
        "workdir": cfg.workdir,
        "tracking_uri": tracking_uri(cfg.tracking, Path(cfg.workdir)),
        "stages": stages,
        "stopped": stopped,
    }


if __name__ == "__main__":
    pipeline_flow(overrides=sys.argv[1:])
