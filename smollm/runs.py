"""Steps with their MLflow record: each function is what one task of `tasks/` runs.

Every record lives in a run opened by `tracked_run`, which ends it FINISHED, FAILED (an error)
or KILLED (an interrupt). A cached step still gets a record in the current pipeline's runs,
tagged `smollm.cached=true`: a cached training run carries the summary metrics and a
`smollm.trained_in_run` tag naming the run that holds its per-step curves; a cached evaluation
is logged again on the stage run, with its suite fingerprint (`eval.fingerprint`, and per task
`eval/fingerprint.json`). The rebalance decides from what the stage flow holds in memory (its
evaluations and their fingerprint, the previous stage's, its sweeps) and records those inputs on
the stage run (`rebalance/inputs.json`), so `smollm replay` can decide again offline; eval drift
it was told to accept (`rebalance.accept_eval_drift`) is in the proposal's record and provenance.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from smollm.config import RunConfig, StageConfig
from smollm.evaluation.fingerprint import SuiteFingerprint
from smollm.evaluation.result import category_bpb
from smollm.rebalance import (
    Constraints,
    Proposal,
    RebalanceInputs,
    SourceLimits,
    SweepRun,
    propose,
    write_generated_mixture,
)
from smollm.results import MemberJob, MemberResult
from smollm.schema import to_dict
from smollm.stage import TrainOutcome, evaluate, token_label, train
from smollm.steps import StepResult, atomic_write_text, git_commit
from smollm.tracking import Tracker, make_tracker

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


@contextlib.contextmanager
def ending(tracker: Tracker, run_id: str) -> Iterator[str]:
    """End `run_id` when the block ends: FINISHED, KILLED on an interrupt, FAILED on an error."""
    try:
        yield run_id
    except (KeyboardInterrupt, SystemExit):
        tracker.end_run(run_id, "KILLED")
        raise
    except BaseException:
        tracker.end_run(run_id, "FAILED")
        raise
    tracker.end_run(run_id)


@contextlib.contextmanager
def tracked_run(
    tracker: Tracker, cfg: RunConfig, name: str, kind: str, *, parent_run_id: str | None, flow_run_id: str | None
) -> Iterator[str]:
    """`with tracked_run(...) as run_id:` a config run (`start_config_run`) that ends with the block."""
    run_id = start_config_run(tracker, cfg, name, kind, parent_run_id=parent_run_id, flow_run_id=flow_run_id)
    with ending(tracker, run_id):
        yield run_id


def record_training(tracker: Tracker, run_id: str, outcome: TrainOutcome) -> None:
    """The summary metrics, `summary.json` and the step's tags on the run that trained (or reused) it."""
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


def tracked_train(
    cfg: RunConfig,
    stage: StageConfig,
    data: Mapping[str, StepResult],
    init: StepResult | None,
    tracker: Tracker,
    *,
    stage_run_id: str,
    flow_run_id: str | None,
    stop_at_tokens: int | None = None,
    resume_from: StepResult | None = None,
) -> TrainOutcome:
    """Train the stage (or its prefix up to `stop_at_tokens`) from `init` in a child run of the
    stage run; `data` holds the tokenizer (`"tokenizer"`) and the sources."""
    name = f"train/{stage.name}" + (f"@{token_label(stop_at_tokens)}" if stop_at_tokens else "")
    sources = {n: r for n, r in data.items() if n != "tokenizer"}
    with tracked_run(tracker, cfg, name, "train", parent_run_id=stage_run_id, flow_run_id=flow_run_id) as run_id:
        outcome = train(cfg, stage, sources, data["tokenizer"], init, tracker, run_id, stop_at_tokens, resume_from)
        record_training(tracker, run_id, outcome)
    return outcome


def tracked_evaluate(
    cfg: RunConfig,
    checkpoint: StepResult,
    sources: Mapping[str, StepResult],
    tracker: Tracker,
    run_id: str,
    tokens_seen: int,
    *,
    label: str | None = None,
) -> tuple[StepResult, dict[str, float]]:
    """Evaluate (`label` names its progress bar) and log `eval/<task>/<metric>`,
    `eval/category/<name>` and `eval/bpb/<category>` on `run_id` at `tokens_seen`, and the suite fingerprint (param
    `eval.fingerprint`, its digest, and `eval/fingerprint.json`, per task); the evaluation step
    and the metrics."""
    step, result = evaluate(cfg, checkpoint, dict(sources), label=label)
    metrics = {f"{EVAL_PREFIX}{k}": v for k, v in result.metrics.items()}
    metrics.update({f"{EVAL_PREFIX}category/{k}": v for k, v in result.categories.items()})
    metrics.update({f"{EVAL_PREFIX}bpb/{k}": v for k, v in category_bpb(cfg.eval_suite, result.metrics).items()})
    tracker.log_metrics(run_id, metrics, step=tokens_seen)
    tracker.log_artifact(run_id, step.output / "results.json", "eval")
    tracker.log_params(run_id, {"eval.fingerprint": result.fingerprint["digest"]})
    tracker.log_dict(run_id, result.fingerprint, "eval/fingerprint.json")
    tracker.set_tags(
        run_id, {"smollm.eval_identity": step.identity, "smollm.eval_cached": str(not step.computed).lower()}
    )
    tracker.flush()
    return step, metrics


def tracked_member(job: MemberJob, tracker: Tracker, *, flow_run_id: str | None) -> MemberResult:
    """One sweep member in its MLflow run: train from `job.base` (or from scratch), evaluate,
    record the tokens it drew per source; the run ends FINISHED, or FAILED on any error."""
    started = time.perf_counter()
    sources = {name: c.step() for name, c in job.sources.items()}
    base = None if job.base is None else job.base.step()
    with ending(tracker, job.run_id):
        outcome = train(job.cfg, job.stage, sources, job.tokenizer.step(), base, tracker, job.run_id)
        record_training(tracker, job.run_id, outcome)
        summary = outcome.summary
        evaluation, evals = tracked_evaluate(
            job.cfg, outcome.step, sources, tracker, job.run_id, summary["tokens_seen"], label=job.name
        )
        tokens = summary["stage_tokens_per_source"]
        tracker.log_metrics(
            job.run_id, {f"member/tokens/{k}": v for k, v in tokens.items()}, step=summary["tokens_seen"]
        )
    return MemberResult(
        name=job.name,
        overrides=list(job.overrides),
        candidate=job.candidate,
        identity=outcome.step.identity,
        eval_identity=evaluation.identity,
        run_id=job.run_id,
        checkpoint=str(outcome.step.output),
        trained=outcome.step.computed,
        summary=summary,
        evals=evals,
        stage_tokens_per_source=tokens,
        seconds=time.perf_counter() - started,
    )


def member_result_path(job: MemberJob) -> Path:
    """Where a launched member leaves its result on the shared work dir."""
    return Path(job.cfg.workdir) / "sweeps" / "results" / f"{job.run_id}.json"


def run_member_job(job: dict[str, Any], flow_run_id: str | None = None) -> dict[str, Any]:
    """A member from its JSON form, as a remote launcher runs it (a Hydra launcher's job, a work
    pool's flow run); its result (JSON) is returned and left next to the sweep's records."""
    member = MemberJob.from_dict(job)
    tracker = make_tracker(member.cfg.tracking, Path(member.cfg.workdir))
    result = tracked_member(member, tracker, flow_run_id=flow_run_id).to_dict()
    atomic_write_text(member_result_path(member), json.dumps(result))
    return result


def sweep_metrics(kind_rows: Mapping[str, list[dict[str, Any]]]) -> dict[str, float]:
    """Sweep summary rows as `sweep/<member>/score|delta/<category>` (what a rule's `metric` names)."""
    return {
        f"{SWEEP_PREFIX}{row['member']}/{key}": value
        for rows in kind_rows.values()
        for row in rows
        for key, value in row.items()
        if key.startswith(("score/", "delta/"))
    }


def log_sweep_results(tracker: Tracker, run_id: str, kind: str, rows: list[dict[str, Any]], records: list) -> None:
    """A sweep's summary on `run_id` (a stage run): its metrics and `sweeps/<kind>.json`."""
    tracker.log_metrics(run_id, sweep_metrics({kind: rows}), step=0)
    tracker.log_dict(run_id, records, f"sweeps/{kind}.json")
    tracker.flush()


def decision_metrics(evals: Mapping[str, float], sweep_rows: Mapping[str, list[dict[str, Any]]]) -> dict[str, float]:
    """What a rebalance reads of a stage: its evaluations (`eval/` removed) and its sweeps' results."""
    metrics = {k[len(EVAL_PREFIX) :]: v for k, v in evals.items() if k.startswith(EVAL_PREFIX)}
    return {**metrics, **sweep_metrics(sweep_rows)}


def built_token_counts(cfg: RunConfig, sources: Mapping[str, StepResult]) -> dict[str, int]:
    """Tokens available per source: declared, else counted by its build (held-out slice excluded)."""
    out = {}
    for name, result in sources.items():
        declared = cfg.data.sources[name].available_tokens
        out[name] = declared or json.loads((result.output / "manifest.json").read_text())["num_tokens"]
    out.update({n: s.available_tokens for n, s in cfg.data.sources.items() if s.available_tokens})
    return out


def rebalance_sources(cfg: RunConfig, consumed: Mapping[str, int], swept: set[str]) -> set[str]:
    """The sources a rebalance weighs besides the stage's own that need their build for a token
    count: those its rules name, its sweeps trained on, and every source drawn from so far (a
    source a stage left out keeps its consumed tokens under its epoch cap)."""
    named = {s for rule in cfg.rebalance.rules for s in rule.sources}
    drawn = {name for name, tokens in consumed.items() if tokens > 0}
    return {s for s in named | swept | drawn if s in cfg.data.sources and not cfg.data.sources[s].available_tokens}


def rebalance_inputs(
    cfg: RunConfig,
    stage_index: int,
    consumed: Mapping[str, int],
    sources: Mapping[str, StepResult],
    metrics: dict[str, float],
    previous_metrics: dict[str, float] | None,
    sweep_runs: list[dict[str, Any]],
    *,
    fingerprint: SuiteFingerprint | None = None,
    previous_fingerprint: SuiteFingerprint | None = None,
) -> RebalanceInputs:
    """What the policy decides from: the stage's metrics (and the previous stage's), the suite
    fingerprints of both evaluations, its sweeps' members, and the constraints of every source
    it may weigh (built, or declared)."""
    limits = {
        name: SourceLimits(
            min_weight=cfg.data.sources[name].min_weight,
            max_weight=cfg.data.sources[name].max_weight,
            max_epochs=cfg.data.sources[name].max_epochs,
            available_tokens=int(tokens),
            consumed_tokens=int(consumed.get(name, 0)),
        )
        for name, tokens in sorted(built_token_counts(cfg, sources).items())
    }
    return RebalanceInputs(
        stage=cfg.pipeline.stages[stage_index].name,
        next_stage=cfg.pipeline.stages[stage_index + 1].name,
        metrics=metrics,
        previous_metrics=previous_metrics,
        mixture=dict(cfg.mixture.weights),
        constraints=Constraints(
            limits,
            cfg.rebalance.max_change,
            cfg.pipeline.stages[stage_index + 1].train_tokens,
            tuple(stage.train_tokens for stage in cfg.pipeline.stages[stage_index + 2 :]),
        ),
        sweep_runs=[SweepRun.from_dict(r) for r in sweep_runs],
        fingerprint=fingerprint,
        previous_fingerprint=previous_fingerprint,
        previous_stage=cfg.pipeline.stages[stage_index - 1].name if stage_index > 0 else None,
        next_decay_fraction=cfg.pipeline.stages[stage_index + 1].decay_fraction,
    )


def tracked_rebalance(
    cfg: RunConfig,
    inputs: RebalanceInputs,
    tracker: Tracker,
    *,
    stage_run_id: str,
    pipeline_run_id: str | None,
    mixture_name: str,
) -> tuple[Path, Proposal]:
    """Propose the next stage's mixture from `inputs`; write it, and record the inputs
    (replayable), the proposal and its explanation on the stage run. Refused (`EvalDrift`,
    nothing written) when a rule compares drifted evaluations, unless accepted; accepted drift
    is in the provenance, the proposal's record and a `smollm.eval_drift_accepted` tag."""
    proposal = propose(cfg.rebalance, inputs)
    provenance = {
        "policy": cfg.rebalance.policy,
        "pipeline": cfg.pipeline.name,
        "from_stage": inputs.stage,
        "for_stage": inputs.next_stage,
        "previous_mixture": cfg.mixture.name,
        "inputs": {
            k: round(v, 6) for k, v in sorted(inputs.metrics.items()) if k.startswith(("category/", SWEEP_PREFIX))
        },
        "eval_fingerprint": None if inputs.fingerprint is None else inputs.fingerprint.digest,
        "previous_eval_fingerprint": None
        if inputs.previous_fingerprint is None
        else inputs.previous_fingerprint.digest,
        "accepted_eval_drift": proposal.eval_drift,
        "mlflow_runs": {"pipeline": pipeline_run_id, "stage": stage_run_id},
        "tracking_uri": getattr(tracker, "uri", None),
        "git_commit": git_commit(),
    }
    path = write_generated_mixture(proposal, mixture_name, cfg.workdir, provenance)
    record_proposal(tracker, stage_run_id, inputs, proposal, mixture_name, cfg)
    tracker.log_artifact(stage_run_id, path, "rebalance")
    if proposal.eval_drift:
        tracker.set_tags(stage_run_id, {"smollm.eval_drift_accepted": "true"})
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
            "accepted_eval_drift": proposal.eval_drift,
            "diff": proposal.diff(),
            "evidence": proposal.evidence,
        },
        "rebalance/proposal.json",
    )
    title = f"Next mixture for {inputs.next_stage} (after {inputs.stage})"
    tracker.log_text(run_id, proposal.markdown(title), "rebalance/explanation.md")
