"""Steps with their MLflow record: each function is what one Prefect task calls.

A cached step still gets a record in the current pipeline's runs, tagged `smollm.cached=true`:
a cached training run carries the summary metrics and a `smollm.trained_in_run` tag naming the
run that holds its per-step curves; a cached evaluation is logged again on the stage run, so
rebalancing always reads the stage's evaluations back from MLflow.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from smollm.config import RunConfig, StageConfig
from smollm.rebalance import Constraints, Proposal, RebalanceInputs, SourceLimits, SweepRun, propose, write_mixture
from smollm.schema import to_dict
from smollm.stage import TrainOutcome, evaluate, token_label, train
from smollm.steps import StepResult, git_commit
from smollm.tracking import Tracker

EVAL_PREFIX = "eval/"
SWEEP_PREFIX = "sweep/"


def base_tags(kind: str, flow_run_id: str | None) -> dict[str, str]:
    tags = {"smollm.kind": kind, "mlflow.source.git.commit": git_commit()}
    if flow_run_id:
        tags["prefect.flow_run_id"] = flow_run_id
    return tags


def start_config_run(
    tracker: Tracker, cfg: RunConfig, name: str, kind: str, *, parent_run_id: str | None, flow_run_id: str | None
) -> str:
    """An MLflow run with the resolved config as an artifact and as flattened params."""
    run_id = tracker.start_run(name, parent_run_id=parent_run_id, tags=base_tags(kind, flow_run_id))
    config = to_dict(cfg)
    tracker.log_dict(run_id, config, "config.json")
    tracker.log_params(run_id, {k: v for k, v in config.items() if k != "eval"})
    return run_id


def tracked_train(
    cfg: RunConfig,
    stage: StageConfig,
    sources: dict[str, StepResult],
    tokenizer: StepResult,
    previous: StepResult | None,
    tracker: Tracker,
    *,
    stage_run_id: str,
    flow_run_id: str | None,
    stop_at_tokens: int | None = None,
    resume_from: StepResult | None = None,
    run_id: str | None = None,
) -> TrainOutcome:
    """Train the stage (or its prefix up to `stop_at_tokens`) in a child MLflow run of the stage run,
    or in `run_id` (left open: a sweep member logs its evaluation there too)."""
    own_run = run_id is None
    if run_id is None:
        name = f"train/{stage.name}" + (f"@{token_label(stop_at_tokens)}" if stop_at_tokens else "")
        run_id = start_config_run(tracker, cfg, name, "train", parent_run_id=stage_run_id, flow_run_id=flow_run_id)
    try:
        outcome = train(cfg, stage, sources, tokenizer, previous, tracker, run_id, stop_at_tokens, resume_from)
        summary = outcome.summary
        if not outcome.step.computed:  # the per-step curves live in the run that trained it
            tracker.set_tags(run_id, {"smollm.trained_in_run": str(summary.get("mlflow_run_id"))})
        tracker.log_metrics(
            run_id,
            {
                "summary/first_loss": summary["first_loss"],
                "summary/last_loss": summary["last_loss"],
                "summary/tokens_per_second": summary["tokens_per_second"],
                "summary/skipped_steps": summary["skipped_steps"],
                "summary/spike_skips": summary.get("spike_skips", 0),
                "summary/nonfinite_skips": summary.get("nonfinite_skips", 0),
                "summary/rewinds": summary.get("rewinds", 0),
                **{f"epochs/{k}": v for k, v in summary["epochs_per_source"].items()},
            },
            step=summary["tokens_seen"],
        )
        tracker.log_dict(run_id, summary, "summary.json")
        tracker.set_tags(
            run_id,
            {
                "smollm.identity": outcome.step.identity,
                "smollm.cached": str(not outcome.step.computed).lower(),
                "smollm.checkpoint": str(outcome.step.output),
            },
        )
    except BaseException:
        tracker.end_run(run_id, "FAILED")
        raise
    if own_run:
        tracker.end_run(run_id)
    return outcome


def tracked_member(
    cfg: RunConfig,
    stage: StageConfig,
    sources: dict[str, StepResult],
    tokenizer: StepResult,
    base: StepResult | None,
    tracker: Tracker,
    *,
    run_id: str,
    flow_run_id: str | None,
) -> dict[str, Any]:
    """One sweep member in its MLflow run: train from `base` (or from scratch), evaluate, record
    the tokens it drew per source; the run ends FINISHED, or FAILED on any error."""
    started = time.perf_counter()
    try:
        outcome = tracked_train(
            cfg, stage, sources, tokenizer, base, tracker, stage_run_id=run_id, flow_run_id=flow_run_id, run_id=run_id
        )
        summary = outcome.summary
        evals = tracked_evaluate(
            cfg, outcome.step, sources, tracker, stage_run_id=run_id, tokens_seen=summary["tokens_seen"]
        )
        tokens = summary["stage_tokens_per_source"]
        tracker.log_metrics(run_id, {f"member/tokens/{k}": v for k, v in tokens.items()}, step=summary["tokens_seen"])
    except BaseException:
        tracker.end_run(run_id, "FAILED")
        raise
    tracker.end_run(run_id)
    return {
        "run_id": run_id,
        "checkpoint": str(outcome.step.output),
        "trained": outcome.step.computed,
        "summary": summary,
        "evals": evals,
        "stage_tokens_per_source": tokens,
        "seconds": time.perf_counter() - started,
    }


def tracked_evaluate(
    cfg: RunConfig,
    checkpoint: StepResult,
    sources: dict[str, StepResult],
    tracker: Tracker,
    *,
    stage_run_id: str,
    tokens_seen: int,
) -> dict[str, float]:
    """Evaluate and log `eval/<task>/<metric>` and `eval/category/<name>` on the stage run."""
    step, result = evaluate(cfg, checkpoint, sources)
    metrics = {f"{EVAL_PREFIX}{k}": v for k, v in result.metrics.items()}
    metrics.update({f"{EVAL_PREFIX}category/{k}": v for k, v in result.categories.items()})
    tracker.log_metrics(stage_run_id, metrics, step=tokens_seen)
    tracker.log_artifact(stage_run_id, step.output / "results.json", "eval")
    tracker.set_tags(
        stage_run_id, {"smollm.eval_identity": step.identity, "smollm.eval_cached": str(not step.computed).lower()}
    )
    tracker.flush()
    return metrics


def stage_evals(tracker: Tracker, stage_run_id: str) -> dict[str, float]:
    """The stage's evaluation metrics, read back from the tracking store (`eval/` removed), and
    the results of the sweeps it ran (`sweep/<member>/score|delta/<category>`)."""
    metrics = tracker.latest_metrics(stage_run_id)
    evals = {k[len(EVAL_PREFIX) :]: v for k, v in metrics.items() if k.startswith(EVAL_PREFIX)}
    evals.update({k: v for k, v in metrics.items() if k.startswith(SWEEP_PREFIX)})
    return evals


def log_sweep_results(
    tracker: Tracker, run_id: str, kind: str, rows: list[dict[str, Any]], records: list[dict[str, Any]]
) -> None:
    """A sweep's summary rows as `sweep/<member>/score|delta/<category>` metrics on `run_id` (a
    stage run), and its members (`smollm.rebalance.SweepRun`) as `sweeps/<kind>.json`: what the
    stage's rebalance reads."""
    metrics = {
        f"{SWEEP_PREFIX}{row['member']}/{key}": value
        for row in rows
        for key, value in row.items()
        if key.startswith(("score/", "delta/"))
    }
    tracker.log_metrics(run_id, metrics, step=0)
    tracker.log_dict(run_id, records, f"sweeps/{kind}.json")
    tracker.flush()


def available_tokens(cfg: RunConfig, sources: Mapping[str, StepResult]) -> dict[str, int]:
    """Declared available tokens, else the built count (the held-out slice excluded)."""
    out = {}
    for name, result in sources.items():
        declared = cfg.data.sources[name].available_tokens
        out[name] = declared or json.loads((result.output / "manifest.json").read_text())["num_tokens"]
    return out


def rebalance_inputs(
    cfg: RunConfig,
    stage_index: int,
    summary: Mapping[str, Any],
    sources: Mapping[str, StepResult],
    tracker: Tracker,
    *,
    stage_run_id: str,
    previous_stage_run_id: str | None,
) -> RebalanceInputs:
    """What the policy reads, from the tracking store: the stage's (and the previous stage's)
    evaluations, the sweeps the stage ran; and the constraints of every source it may weigh
    (built here, or with declared token counts)."""
    available = available_tokens(cfg, sources)
    available.update({n: s.available_tokens for n, s in cfg.data.sources.items() if s.available_tokens})
    consumed = summary["tokens_per_source"]
    limits = {
        name: SourceLimits(
            min_weight=cfg.data.sources[name].min_weight,
            max_weight=cfg.data.sources[name].max_weight,
            max_epochs=cfg.data.sources[name].max_epochs,
            available_tokens=int(tokens),
            consumed_tokens=int(consumed.get(name, 0)),
        )
        for name, tokens in sorted(available.items())
    }
    runs = [r for kind in ("anneal", "ablate") for r in tracker.load_dict(stage_run_id, f"sweeps/{kind}.json") or []]
    return RebalanceInputs(
        stage=cfg.pipeline.stages[stage_index].name,
        next_stage=cfg.pipeline.stages[stage_index + 1].name,
        metrics=stage_evals(tracker, stage_run_id),
        previous_metrics=None if previous_stage_run_id is None else stage_evals(tracker, previous_stage_run_id),
        mixture=dict(cfg.mixture.weights),
        constraints=Constraints(limits, cfg.rebalance.max_change, cfg.pipeline.stages[stage_index + 1].train_tokens),
        sweep_runs=[SweepRun.from_dict(r) for r in runs],
    )


def tracked_rebalance(
    cfg: RunConfig,
    stage_index: int,
    summary: Mapping[str, Any],
    sources: Mapping[str, StepResult],
    tracker: Tracker,
    *,
    stage_run_id: str,
    previous_stage_run_id: str | None,
    pipeline_run_id: str | None,
    mixture_name: str,
    generated_dir: Path,
    conf_dir: Path,
) -> tuple[Path, Proposal]:
    """Propose the next stage's mixture from what MLflow recorded of the stage; write it, and
    record the inputs (replayable), the proposal and its explanation on the stage run."""
    stage, next_stage = cfg.pipeline.stages[stage_index], cfg.pipeline.stages[stage_index + 1]
    inputs = rebalance_inputs(
        cfg,
        stage_index,
        summary,
        sources,
        tracker,
        stage_run_id=stage_run_id,
        previous_stage_run_id=previous_stage_run_id,
    )
    proposal = propose(cfg.rebalance, inputs)
    provenance = {
        "policy": cfg.rebalance.policy,
        "pipeline": cfg.pipeline.name,
        "from_stage": stage.name,
        "for_stage": next_stage.name,
        "previous_mixture": cfg.mixture.name,
        "inputs": {
            k: round(v, 6) for k, v in sorted(inputs.metrics.items()) if k.startswith(("category/", SWEEP_PREFIX))
        },
        "mlflow_runs": {"pipeline": pipeline_run_id, "stage": stage_run_id},
        "tracking_uri": getattr(tracker, "uri", None),
        "git_commit": git_commit(),
    }
    path = write_mixture(
        proposal, name=mixture_name, generated_dir=generated_dir, hand_written_dir=conf_dir, provenance=provenance
    )
    record_proposal(tracker, stage_run_id, inputs, proposal, mixture_name, cfg)
    tracker.log_artifact(stage_run_id, path, "rebalance")
    return path, proposal


def record_proposal(
    tracker: Tracker, run_id: str, inputs: RebalanceInputs, proposal: Proposal, mixture_name: str, cfg: RunConfig
) -> None:
    """`rebalance/inputs.json` (what `smollm replay` re-decides from), `rebalance/proposal.json`
    and `rebalance/explanation.md` on the stage run."""
    tracker.log_dict(run_id, inputs.to_dict(), "rebalance/inputs.json")
    tracker.log_dict(
        run_id,
        {
            "policy": to_dict(cfg.rebalance),
            "mixture_name": mixture_name,
            "weights": proposal.weights,
            "previous": proposal.previous,
            "explanation": proposal.explanation,
            "diff": proposal.diff(),
        },
        "rebalance/proposal.json",
    )
    title = f"Next mixture for {inputs.next_stage} (after {inputs.stage})"
    tracker.log_text(run_id, proposal.markdown(title), "rebalance/explanation.md")
