"""The stage flow: build data -> train (from the previous stage, or a branch point) -> evaluate -> rebalance.

Run the first stage on its own (later stages run inside the pipeline flow, which hands each
one the previous stage's checkpoint and generated mixture):

    python -m flows.stage --stage-index 0 pipeline=demo
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run

from flows.compose import CONF_DIR, compose, compose_stage, generated_dir
from smollm.config import RunConfig
from smollm.rebalance import generated_mixture_name
from smollm.runs import log_sweep_results, start_config_run
from smollm.stage import branch_points, needed_sources, stable_tokens
from smollm.steps import StepResult
from smollm.tracking import make_tracker
from tasks.data import build_source, build_tokenizer
from tasks.evaluate import evaluate
from tasks.rebalance import rebalance
from tasks.train import train_stage


def choose_mixture(declared: str | None, stage_index: int, previous: dict[str, Any] | None) -> str:
    """The stage's mixture: the one it declares, else the one the previous stage's rebalance wrote."""
    if declared is not None:
        return declared
    if previous is None or not previous.get("next_mixture"):
        raise ValueError(
            f"pipeline.stages[{stage_index}].mixture: is null (use the previous stage's rebalance), "
            "but no previous stage result was given"
        )
    return previous["next_mixture"]


def start_point(result: dict[str, Any], at_tokens: int | None = None) -> dict[str, Any]:
    """What a stage starts from: stage `result` (a stage flow's return value), at its end or
    `at_tokens` into it (then the prefix is trained from the same start as that stage)."""
    return {
        "stage_index": result["stage_index"],
        "mixture": result["mixture"],
        "checkpoint": result["checkpoint"],
        "identity": result["identity"],
        "init": result["init"],
        "at_tokens": at_tokens,
    }


def _checkpoint(start: dict[str, Any] | None) -> StepResult | None:
    return StepResult(Path(start["checkpoint"]), start["identity"], False) if start else None


def resolve_start(overrides: list[str], start: dict[str, Any] | None, stage_run_id: str) -> StepResult | None:
    """The checkpoint a stage trains from. A branch point inside a stage is that stage's prefix,
    which its own flow kept on the way through; if it is missing (e.g. the branch was added
    after that stage ran), it is trained here."""
    if start is None or start.get("at_tokens") is None:
        return _checkpoint(start)
    index = start["stage_index"]
    cfg = compose_stage(overrides, index, start["mixture"])
    tokenizer, sources = build_data(cfg)
    prefix = train_stage(
        cfg, index, sources, tokenizer, _checkpoint(start["init"]), stage_run_id, stop_at_tokens=start["at_tokens"]
    )
    return prefix.step


def build_data(cfg: RunConfig) -> tuple[StepResult, dict[str, StepResult]]:
    tokenizer = build_tokenizer(cfg)
    return tokenizer, build_sources(cfg, set(needed_sources(cfg)), tokenizer)


def build_sources(cfg: RunConfig, names: set[str], tokenizer: StepResult) -> dict[str, StepResult]:
    futures = {name: build_source.submit(cfg, name, tokenizer) for name in sorted(names)}
    return {name: future.result() for name, future in futures.items()}


def rebalance_sources(cfg: RunConfig, sweeps: dict[str, dict[str, Any]]) -> set[str]:
    """Sources the rebalance may weigh besides the stage's own: those its rules name, and those
    the stage's sweeps trained on: their token counts bound their weights (built here unless
    declared, as the hub sources' are)."""
    named = {s for rule in cfg.rebalance.rules for s in rule.sources}
    swept = {s for result in sweeps.values() for run in result["runs"] for s in run["weights"]}
    return {s for s in named | swept if not cfg.data.sources[s].available_tokens}


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow only lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower())


def publish(cfg: RunConfig, stage_index: int, evals: dict[str, float], explanation: str | None) -> None:
    stage = cfg.pipeline.stages[stage_index]
    rows = [
        {"category": k.split("/", 2)[-1], "score": round(v, 4)}
        for k, v in sorted(evals.items())
        if k.startswith("eval/category/")
    ]
    create_table_artifact(
        key=artifact_key(cfg.pipeline.name, stage.name, "evals"),
        table=rows,
        description=f"Evaluations per category after {stage.name}",
    )
    if explanation is not None:
        create_markdown_artifact(
            key=artifact_key(cfg.pipeline.name, stage.name, "rebalance"),
            markdown=explanation,
            description="The proposed next mixture, the current one, the diff and the reasons",
        )


@flow(name="smollm-stage", log_prints=True)
def stage_flow(
    overrides: list[str] | None = None,
    stage_index: int = 0,
    mixture: str | None = None,
    previous: dict[str, Any] | None = None,
    pipeline_run_id: str | None = None,
    start: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One stage of a pipeline; `previous` is the previous stage flow's return value.

    `mixture` names the stage's mixture config; by default the stage's declared one, or the one
    the previous stage's rebalance wrote. `start` (see `start_point`) is where training starts;
    by default the end of `previous`.
    """
    overrides = list(overrides or [])
    if stage_index > 0 and previous is None:
        raise ValueError(f"previous: stage_index={stage_index} continues from the previous stage's result, got None")
    if start is None and previous is not None:
        start = start_point(previous)
    if mixture is None:
        mixture = choose_mixture(compose(overrides).pipeline.stages[stage_index].mixture, stage_index, previous)
    cfg = compose_stage(overrides, stage_index, mixture)
    stage = cfg.pipeline.stages[stage_index]
    tracker = make_tracker(cfg.tracking, Path(cfg.workdir))
    stage_run_id = start_config_run(
        tracker, cfg, f"stage/{stage.name}", "stage", parent_run_id=pipeline_run_id, flow_run_id=flow_run.id
    )
    try:
        tokenizer, sources = build_data(cfg)
        init = resolve_start(overrides, start, stage_run_id)
        resume = None  # later stages (or annealing runs) branch off here: train through, keep each
        prefixes: dict[int, StepResult] = {}
        for at_tokens in branch_points(cfg, stage_index):
            resume = prefixes[at_tokens] = train_stage(
                cfg, stage_index, sources, tokenizer, init, stage_run_id, stop_at_tokens=at_tokens, resume_from=resume
            ).step
        outcome = train_stage(cfg, stage_index, sources, tokenizer, init, stage_run_id, resume_from=resume)
        tokens = outcome.summary["tokens_seen"]
        evals = evaluate(cfg, outcome.step, sources, stage_run_id, tokens)
        stable_at = stable_tokens(cfg, stage)
        stable = prefixes[stable_at] if stable_at in prefixes else outcome.step
        sweeps = run_declared_sweeps(overrides, cfg, stage_index, stable, stage_run_id)
        next_mixture, explanation, proposed = None, None, None
        if stage_index + 1 < len(cfg.pipeline.stages) and cfg.pipeline.stages[stage_index + 1].mixture is None:
            next_mixture = generated_mixture_name(cfg, stage_index, outcome.step.identity)
            weighed = {**sources, **build_sources(cfg, rebalance_sources(cfg, sweeps) - set(sources), tokenizer)}
            _, proposal = rebalance(
                cfg,
                stage_index,
                outcome.summary,
                weighed,
                stage_run_id=stage_run_id,
                previous_stage_run_id=None if previous is None else previous.get("stage_run_id"),
                pipeline_run_id=pipeline_run_id,
                mixture_name=next_mixture,
                generated_dir=generated_dir(cfg.workdir),
                conf_dir=CONF_DIR,
            )
            explanation = proposal.markdown(f"Next mixture for {cfg.pipeline.stages[stage_index + 1].name}")
            proposed = {"weights": proposal.weights, "previous": proposal.previous, "explanation": explanation}
            print("\n".join(proposal.explanation))
        publish(cfg, stage_index, evals, explanation)
    except BaseException:
        tracker.end_run(stage_run_id, "FAILED")
        raise
    tracker.end_run(stage_run_id)
    return {
        "stage": stage.name,
        "stage_index": stage_index,
        "init": None if init is None else {"checkpoint": str(init.output), "identity": init.identity},
        "checkpoint": str(outcome.step.output),
        "identity": outcome.step.identity,
        "trained": outcome.step.computed,
        "data_built": [name for name, r in {"tokenizer": tokenizer, **sources}.items() if r.computed],
        "tokens_seen": tokens,
        "summary": outcome.summary,
        "evals": evals,
        "mixture": cfg.mixture.name,
        "next_mixture": next_mixture,
        "proposal": proposed,
        "stage_run_id": stage_run_id,
        "sweeps": sweeps,
    }


def run_declared_sweeps(
    overrides: list[str], cfg: RunConfig, stage_index: int, stable: StepResult, stage_run_id: str
) -> dict[str, dict[str, Any]]:
    """The annealing runs (from the stage's last stable checkpoint) and data ablations the stage
    declares, as sweep subflows under the stage run; their scores and deltas vs control are
    logged on the stage run, where the rebalance reads them (`sweep/<member>/delta/<category>`)."""
    from flows.sweep import declared_members, sweep_flow

    stage = cfg.pipeline.stages[stage_index]
    tracker = make_tracker(cfg.tracking, Path(cfg.workdir))
    base = {
        "stage_index": stage_index,
        "mixture": cfg.mixture.name,
        "checkpoint": str(stable.output),
        "identity": stable.identity,
    }
    results = {}
    for kind in ("anneal", "ablate"):
        declared = getattr(stage, kind)
        if declared is None:
            continue
        common = [*overrides, f"anneal.base={stage.name}"]
        if declared.train_tokens is not None:
            common.append(f"{kind}.train_tokens={declared.train_tokens}")
        result = sweep_flow(
            kind=kind,
            overrides=common,
            members=declared_members(stage, kind),
            base_checkpoint=base if kind == "anneal" else None,
            parent_run_id=stage_run_id,
        )
        log_sweep_results(tracker, stage_run_id, kind, result["rows"], result["runs"])
        results[kind] = result
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage-index", type=int, default=0)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    stage_flow(overrides=args.overrides, stage_index=args.stage_index)


if __name__ == "__main__":
    main()
