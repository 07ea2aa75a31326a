"""What the Prefect UI runs: the stage, pipeline and sweep flows behind typed, checked forms.

    python -m flows.served      # registers the three deployments and runs what is triggered

(`make serve` starts it next to a Prefect and an MLflow server; in docker-compose it is the
worker.) Each returns its result's JSON form (`smollm.results`). Each deployment's parameters render as a form whose defaults run the embedded demo
("Quick run"): pipeline and stage names are choices read from `conf/pipeline/`, numbers are
range-checked, and `overrides` is a list of extra Hydra overrides checked against an allow-list
(`flows/untrusted.py`) before anything is composed: a rejected one fails the run, naming it.

A stage after the first continues from the stages before it, so `run-stage` runs the pipeline
through that stage; the steps the earlier stages completed before are read from the cache.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from prefect import flow
from pydantic import Field

from flows.compose import CONF_DIR, compose, compose_dict, compose_lineage, declared_sweep_params, generated_dir
from flows.pipeline import pipeline_flow
from flows.stage import stage_flow
from flows.sweep import sweep_flow
from flows.untrusted import check_overrides
from smollm.schema import ConfigError
from tasks.common import run_logger

DEFAULT_PIPELINE = "demo"


@functools.cache
def pipeline_stages() -> dict[str, tuple[str, ...]]:
    """Every pipeline config in `conf/pipeline/` and the names of its stages, in order."""
    return {
        path.stem: tuple(s["name"] for s in compose_dict([f"pipeline={path.stem}"])["pipeline"]["stages"])
        for path in sorted(CONF_DIR.glob("pipeline/*.yaml"))
    }


def _stage_names() -> tuple[str, ...]:
    return tuple(dict.fromkeys(name for names in pipeline_stages().values() for name in names))


PipelineName = Literal[tuple(pipeline_stages())]  # type: ignore[valid-type]
StageName = Literal[_stage_names()]  # type: ignore[valid-type]
Tokens = Annotated[int, Field(gt=0)]
Seed = Annotated[int, Field(ge=0)]


def _workdir() -> str:
    return os.environ.get("SMOLLM_WORKDIR", "work")


def checked(pipeline: str, overrides: list[str], **values: Any) -> list[str]:
    """The run's overrides: the form's typed values, then the user's (checked against the
    allow-list), composed and validated once, all before any compute."""
    if pipeline not in pipeline_stages():
        raise ConfigError(f"pipeline: no pipeline config named {pipeline!r} (choices: {', '.join(pipeline_stages())})")
    workdir = _workdir()
    user = check_overrides(overrides or [], workdir, (CONF_DIR, generated_dir(workdir)))
    typed = [f"{key}={value}" for key, value in values.items() if value is not None]
    result = [f"pipeline={pipeline}", *typed, *user]
    compose(result)
    run_logger().info(f"overrides: {' '.join(result)}")
    return result


def stage_index(pipeline: str, stage: str) -> int:
    names = pipeline_stages()[pipeline]
    if stage not in names:
        raise ConfigError(f"stage: {stage!r} is not a stage of pipeline {pipeline!r} (its stages: {', '.join(names)})")
    return names.index(stage)


@flow(name="smollm-run-stage")
def run_stage(
    pipeline: PipelineName = DEFAULT_PIPELINE,
    stage: StageName = "stage1",
    seed: Seed = 0,
    train_tokens: Tokens | None = None,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Run one stage of a pipeline: its data, training, evaluation and rebalance (a later stage
    runs the stages before it first, from the cache where they are complete).

    Args:
        pipeline: a pipeline config of `conf/pipeline/`.
        stage: one of that pipeline's stages.
        seed: `train.seed`.
        train_tokens: the stage's training budget in tokens (empty: the pipeline's).
        overrides: extra Hydra overrides, one per item, e.g. `train.optimizer.lr=0.001`
            (allow-listed keys only: flows/untrusted.py).
    """
    index = stage_index(pipeline, stage)
    budget = f"pipeline.stages.{index}.train_tokens"
    run = checked(pipeline, list(overrides or []), **{"train.seed": seed, budget: train_tokens})
    if index == 0:
        return stage_flow(compose_lineage(run).extend()).to_dict()
    result = pipeline_flow(overrides=run, through=stage)
    if result.stopped:
        raise RuntimeError(f"stage: {stage} did not run, the pipeline stopped {result.stopped}")
    return result.stages[-1].to_dict()


@flow(name="smollm-run-pipeline")
def run_pipeline(
    pipeline: PipelineName = DEFAULT_PIPELINE,
    seed: Seed = 0,
    ask_approval: bool = False,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Run every stage of a pipeline, each rebalanced from the one before.

    Args:
        pipeline: a pipeline config of `conf/pipeline/`.
        seed: `train.seed`.
        ask_approval: pause after each rebalance until a person approves or edits the next
            mixture in this UI (else the proposal is used).
        overrides: extra Hydra overrides, one per item, e.g. `train.optimizer.lr=0.001`
            (allow-listed keys only: flows/untrusted.py).
    """
    run = checked(pipeline, list(overrides or []), **{"train.seed": seed, "rebalance.approval.ask": ask_approval})
    return pipeline_flow(overrides=run).to_dict()


@flow(name="smollm-run-sweep")
def run_sweep(
    kind: Literal["anneal", "ablate"] = "anneal",
    pipeline: PipelineName = DEFAULT_PIPELINE,
    candidates: list[str] | None = None,
    shares: list[Annotated[float, Field(gt=0, le=1)]] | None = None,
    seeds: list[Annotated[int, Field(ge=0)]] | None = None,
    base: StageName | None = None,
    train_tokens: Tokens | None = None,
    max_concurrency: Annotated[int, Field(ge=1, le=64)] = 2,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Annealing runs or data ablations, each against a control.

    Args:
        kind: `anneal` (from the `base` stage's checkpoint, LR decayed on candidate sources x
            shares) or `ablate` (from scratch, on candidate mixtures x seeds).
        pipeline: a pipeline config of `conf/pipeline/` (`annealing` and `ablation_web` declare
            the recipe's candidates).
        candidates: sources (anneal) or mixtures (ablate); empty: the config's own.
        shares: the candidates' shares of an annealing run's mixture (empty: `anneal.share`).
        seeds: `train.seed` values (empty: the config's).
        base: the stage whose checkpoint annealing runs start from (empty: `anneal.base`).
        train_tokens: each member's budget in tokens (empty: the config's).
        max_concurrency: members running at once.
        overrides: extra Hydra overrides, one per item, e.g. `train.optimizer.lr=0.001`
            (allow-listed keys only: flows/untrusted.py).
    """
    run = checked(pipeline, list(overrides or []))
    if base is not None:
        stage_index(pipeline, base)
    if not candidates:
        cfg = compose(run)
        swept = declared_sweep_params(run).get(f"{kind}.candidate")
        declared = swept.split(",") if swept else cfg.anneal.candidates if kind == "anneal" else [cfg.ablate.candidate]
        candidates = [str(c).strip() for c in declared if c]
    return sweep_flow(
        kind=kind,
        candidates=candidates,
        shares=shares,
        seeds=seeds,
        base=base,
        train_tokens=train_tokens,
        max_concurrency=max_concurrency,
        overrides=run,
    ).to_dict()


DEPLOYMENTS = {"stage": run_stage, "pipeline": run_pipeline, "sweep": run_sweep}
"""By deployment name: `smollm-run-stage/stage`, `smollm-run-pipeline/pipeline`, `smollm-run-sweep/sweep`."""


def deployments() -> list:
    return [
        served.to_deployment(name=name, description=(served.__doc__ or "").split("\n\n")[0], tags=["smollm"])
        for name, served in DEPLOYMENTS.items()
    ]


def main() -> None:
    from prefect import serve

    Path(_workdir()).mkdir(parents=True, exist_ok=True)
    serve(*deployments(), limit=int(os.environ.get("SMOLLM_SERVE_LIMIT", "2")))


if __name__ == "__main__":
    main()
