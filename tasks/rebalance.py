"""Task: propose the next stage's mixture from what the stage measured, write it, publish the reasons."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact

from smollm.lineage import StageNode
from smollm.rebalance import RebalanceInputs
from smollm.results import ProposedMixture
from smollm.runs import tracked_rebalance
from smollm.tracking import Tracker
from tasks.common import TASK_OPTIONS, artifact_key


@task(name="rebalance", task_run_name="rebalance-{node.name}", **TASK_OPTIONS)
def rebalance_task(
    node: StageNode, inputs: RebalanceInputs, tracker: Tracker, stage_run_id: str, pipeline_run_id: str | None
) -> ProposedMixture:
    """The proposal after `node`, written as the generated mixture the lineage names
    (`StageNode.next_mixture`); its explanation as a markdown artifact."""
    name = node.next_mixture()
    _, proposal = tracked_rebalance(
        node.cfg, inputs, tracker, stage_run_id=stage_run_id, pipeline_run_id=pipeline_run_id, mixture_name=name
    )
    explanation = proposal.markdown(f"Next mixture for {inputs.next_stage}")
    create_markdown_artifact(
        key=artifact_key(node.cfg.pipeline.name, node.name, "rebalance"),
        markdown=explanation,
        description="The proposed next mixture, the current one, the diff and the reasons",
    )
    return ProposedMixture(
        name=name,
        weights=proposal.weights,
        previous=proposal.previous,
        explanation=explanation,
        constraints=inputs.constraints,
        reasons=list(proposal.explanation),
        evidence=list(proposal.evidence),
    )
