"""The stage flow: build data -> train from the stage's start -> evaluate -> its sweeps -> rebalance.

It runs one `smollm.lineage.StageNode` (composed once by the pipeline flow, which hands it the
parent stage's training and the previous stage's result). Run the first stage on its own:

    python -m flows.stage pipeline=demo
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from pathlib import Path

from prefect import flow
from prefect.runtime import flow_run

from flows.compose import compose_lineage
from flows.sweep import declared_members, sweep_flow
from flows.workers import prewarm, warm_workers
from smollm.lineage import StageNode
from smollm.results import Checkpoint, ProposedMixture, StageResult, StartPoint, SweepResult, TrainedStage
from smollm.runs import decision_metrics, log_sweep_results, rebalance_inputs, rebalance_sources, tracked_run
from smollm.stage import TrainOutcome, stable_tokens, workdir
from smollm.steps import StepResult, is_complete
from smollm.sweep import KINDS, category_scores, with_controls
from smollm.tracking import Tracker, make_tracker
from tasks.common import run_logger
from tasks.data import build_data, build_sources, computed, sources_of
from tasks.evaluate import evaluate_task
from tasks.rebalance import rebalance_task
from tasks.train import start_checkpoint, train_task


@flow(name="smollm-stage")
def stage_flow(
    node: StageNode,
    origin: StageNode | None = None,
    trained: TrainedStage | None = None,
    previous: StageResult | None = None,
    pipeline_run_id: str | None = None,
) -> StageResult:
    """One stage of a pipeline. `origin` is the stage it starts from (its parent in the lineage)
    and `trained` that stage's training; `previous` is the stage before it (its evaluations
    are the baseline of rules on a metric's change)."""
    if node.start.parent is not None and trained is None:
        raise ValueError(f"previous: stage_index={node.index} continues from the previous stage's result, got None")
    if node.mixture.how == "pending":
        raise ValueError(f"pipeline.stages[{node.index}].mixture: {node.mixture.note}")
    cfg = node.cfg
    tracker = make_tracker(cfg.tracking, Path(cfg.workdir))
    name, kind = f"stage/{node.name}", "stage"
    with (
        sweep_workers(node),
        tracked_run(tracker, cfg, name, kind, parent_run_id=pipeline_run_id, flow_run_id=flow_run.id) as run_id,
    ):
        data = build_data(cfg)
        init = start_checkpoint(node, origin, trained, tracker, run_id)
        outcome, prefixes = train_through(node, data, init, tracker, run_id)
        tokens = outcome.summary["tokens_seen"]
        evaluation, evals = evaluate(node, outcome.step, data, tracker, run_id, tokens)
        ran = [*data.values(), *prefixes.values(), outcome.step, evaluation]
        check_walk(node, ran)
        stable = prefixes.get(stable_tokens(cfg, node.stage), outcome.step)  # where its annealing runs branch
        sweeps = run_declared_sweeps(node, stable, tracker, run_id)
        proposal = propose_next(node, outcome, data, evals, sweeps, previous, tracker, run_id, pipeline_run_id)
    return StageResult(
        stage=node.name,
        stage_index=node.index,
        mixture=cfg.mixture.name,
        init=None if init is None else Checkpoint.of(init),
        checkpoint=str(outcome.step.output),
        identity=outcome.step.identity,
        trained=outcome.step.computed,
        data_built=computed(data),
        tokens_seen=tokens,
        summary=outcome.summary,
        evals=evals,
        next_mixture=None if proposal is None else proposal.name,
        proposal=proposal,
        stage_run_id=run_id,
        sweeps=sweeps,
        steps=[step.identity for step in ran],
        eval_fingerprint=node.eval_fingerprint,
    )


@contextlib.contextmanager
def sweep_workers(node: StageNode) -> Iterator[None]:
    """The run's warm workers (`flows/workers.py`), started now when the stage will train before
    its sweeps and the training leaves them idle cores: their imports overlap it (otherwise the
    first sweep with members to run starts them)."""
    with warm_workers():
        if not is_complete(node.steps.train.output_dir(workdir(node.cfg))):
            for kind in KINDS:
                if getattr(node.stage, kind) is not None:
                    control = kind == "anneal" or node.cfg.ablate.control is not None
                    members = len(with_controls(kind, declared_members(node.stage, kind), control=control))
                    prewarm(node.cfg, members, beside_training=True)
        yield


def train_through(
    node: StageNode, data: dict[str, StepResult], init: StepResult | None, tracker: Tracker, run_id: str
) -> tuple[TrainOutcome, dict[int, StepResult]]:
    """Train the stage, keeping on the way the prefixes later stages or its annealing runs
    branch from (each continues the one before: no token is trained twice)."""
    resume = None
    prefixes: dict[int, StepResult] = {}
    for at_tokens in node.steps.prefixes:
        outcome = train_task(node, data, init, tracker, run_id, stop_at_tokens=at_tokens, resume_from=resume)
        resume = prefixes[at_tokens] = outcome.step
    return train_task(node, data, init, tracker, run_id, resume_from=resume), prefixes


def evaluate(
    node: StageNode, checkpoint: StepResult, data: dict[str, StepResult], tracker: Tracker, run_id: str, tokens: int
) -> tuple[StepResult, dict[str, float]]:
    """The stage's evaluation (a task); its category scores are logged."""
    evaluation, evals = evaluate_task(node, checkpoint, sources_of(data), tracker, run_id, tokens)
    scores = ", ".join(f"{name} {value:.3f}" for name, value in sorted(category_scores(evals).items()))
    run_logger().info(f"{node.name} evaluated at {tokens} tokens: {scores}")
    return evaluation, evals


def check_walk(node: StageNode, ran: list[StepResult]) -> None:
    """The stage ran exactly the steps its lineage node lists, in order."""
    planned = [step.identity for step in node.steps.all()]
    if [step.identity for step in ran] != planned:
        raise RuntimeError(f"lineage: {node.name} ran {[s.output.name for s in ran]}, not the planned steps")


def run_declared_sweeps(
    node: StageNode, stable: StepResult, tracker: Tracker, stage_run_id: str
) -> dict[str, SweepResult]:
    """The annealing runs (from the stage's last stable checkpoint) and data ablations the stage
    declares, as sweep subflows under the stage run; their results are logged on it too."""
    results = {}
    for kind in ("anneal", "ablate"):
        declared = getattr(node.stage, kind)
        if declared is None:
            continue
        common = [*node.overrides, f"anneal.base={node.name}"]
        if declared.train_tokens is not None:
            common.append(f"{kind}.train_tokens={declared.train_tokens}")
        kinds = node.cfg.rebalance.member_eval_kinds if kind == "anneal" and node.rebalances else ()
        if kinds:  # members evaluate what the decision reads of them
            common.append(f"++eval.only_kinds=[{','.join(kinds)}]")
        start = StartPoint(stage_index=node.index, mixture=node.mixture.name, checkpoint=Checkpoint.of(stable))
        result = sweep_flow(
            kind=kind,
            overrides=common,
            members=declared_members(node.stage, kind),
            start=start if kind == "anneal" else None,
            parent_run_id=stage_run_id,
        )
        log_sweep_results(tracker, stage_run_id, kind, result.rows, result.runs)
        results[kind] = result
    return results


def propose_next(
    node: StageNode,
    outcome: TrainOutcome,
    data: dict[str, StepResult],
    evals: dict[str, float],
    sweeps: dict[str, SweepResult],
    previous: StageResult | None,
    tracker: Tracker,
    stage_run_id: str,
    pipeline_run_id: str | None,
) -> ProposedMixture | None:
    """The rebalance after the stage, when the next stage's mixture is not declared. It weighs
    the stage's sources and those its rules name, its sweeps trained on or an earlier stage drew
    from (built here unless their token counts are declared); the two stages' suite fingerprints
    go with their metrics (a rule comparing across drifted evaluations is refused)."""
    if not node.rebalances:
        return None
    cfg = node.cfg
    swept = {s for result in sweeps.values() for run in result.runs for s in run["weights"]}
    extra = rebalance_sources(cfg, outcome.summary["tokens_per_source"], swept) - set(data)
    weighed = {**sources_of(data), **build_sources(cfg, extra, data["tokenizer"])}
    before = None if previous is None else decision_metrics(previous.evals, _rows(previous.sweeps))
    inputs = rebalance_inputs(
        cfg,
        node.index,
        outcome.summary["tokens_per_source"],
        weighed,
        decision_metrics(evals, _rows(sweeps)),
        before,
        [run for kind in ("anneal", "ablate") if kind in sweeps for run in sweeps[kind].runs],
        fingerprint=node.eval_fingerprint,
        previous_fingerprint=None if previous is None else previous.eval_fingerprint,
    )
    proposal = rebalance_task(node, inputs, tracker, stage_run_id, pipeline_run_id)
    run_logger().info(decision(node, proposal))
    return proposal


def decision(node: StageNode, proposal: ProposedMixture) -> str:
    """The rebalance's decision for the log: the next mixture, each weight's change, the reasons."""
    names = sorted(set(proposal.weights) | set(proposal.previous))
    changes = ", ".join(f"{n} {proposal.previous.get(n, 0.0):.3f} -> {proposal.weights.get(n, 0.0):.3f}" for n in names)
    lines = [f"rebalance after {node.name} proposes {proposal.name}: {changes}", *proposal.reasons]
    return "\n  ".join(lines)


def _rows(sweeps: dict[str, SweepResult]) -> dict[str, list]:
    return {kind: result.rows for kind, result in sweeps.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    stage_flow(compose_lineage(args.overrides).extend())


if __name__ == "__main__":
    main()
