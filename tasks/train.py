"""Task: train a stage of the lineage (or its prefix, for a branch) from its start, tracked in MLflow.

The step it runs must be the one the lineage planned (`smollm.lineage.StageSteps`): a mismatch
is a bug in the walk, and fails here instead of training something no plan shows.
"""

from __future__ import annotations

from prefect import task
from prefect.runtime import flow_run

from smollm.lineage import StageNode
from smollm.results import TrainedStage
from smollm.runs import tracked_train
from smollm.stage import TrainOutcome
from smollm.steps import StepResult
from smollm.tracking import Tracker
from tasks.common import TASK_OPTIONS
from tasks.data import build_data


@task(name="train", task_run_name="train-{node.name}", **TASK_OPTIONS)
def train_task(
    node: StageNode,
    data: dict[str, StepResult],
    init: StepResult | None,
    tracker: Tracker,
    stage_run_id: str,
    stop_at_tokens: int | None = None,
    resume_from: StepResult | None = None,
) -> TrainOutcome:
    """Train `node`'s stage from `init` (its prefix up to `stop_at_tokens`; continuing the
    complete prefix `resume_from`) on `data`."""
    outcome = tracked_train(
        node.cfg,
        node.stage,
        data,
        init,
        tracker,
        stage_run_id=stage_run_id,
        flow_run_id=flow_run.id,
        stop_at_tokens=stop_at_tokens,
        resume_from=resume_from,
    )
    planned = node.steps.train if stop_at_tokens is None else node.steps.prefixes.get(stop_at_tokens)
    if planned is not None and planned.identity != outcome.step.identity:
        raise RuntimeError(
            f"lineage: {node.name} trained {outcome.step.output.name}, but the lineage planned {planned.name} "
            f"{planned.identity[:12]}"
        )
    return outcome


def start_checkpoint(
    node: StageNode, origin: StageNode | None, trained: TrainedStage | None, tracker: Tracker, run_id: str
) -> StepResult | None:
    """The checkpoint `node` starts from: nothing, the end of its parent stage (`origin`, whose
    training is `trained`), or a prefix of it — which the parent kept on its way through and is
    found complete, or (a branch added after the parent ran) is trained here."""
    start = node.start
    if start.parent is None:
        return None
    assert origin is not None and trained is not None  # the stage flow refuses a start it was not given
    if start.at_tokens is None:
        return trained.end()
    init = None if trained.init is None else trained.init.step()
    return train_task(origin, build_data(origin.cfg), init, tracker, run_id, stop_at_tokens=start.at_tokens).step
