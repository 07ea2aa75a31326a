"""Tasks that build data: the tokenizer, then each source's token shards (once per tokenizer)."""

from __future__ import annotations

from collections.abc import Iterable

from prefect import task

from smollm import stage
from smollm.config import RunConfig
from smollm.steps import StepResult
from tasks.common import TASK_OPTIONS


@task(name="build-tokenizer", **TASK_OPTIONS)
def tokenizer_task(cfg: RunConfig) -> StepResult:
    return stage.prepare_tokenizer(cfg)


@task(name="build-source", task_run_name="build-source-{name}", **TASK_OPTIONS)
def source_task(cfg: RunConfig, name: str, tokenizer: StepResult) -> StepResult:
    return stage.build_source(cfg, name, tokenizer)


def build_sources(cfg: RunConfig, names: Iterable[str], tokenizer: StepResult) -> dict[str, StepResult]:
    """The sources `names`, built side by side."""
    futures = {name: source_task.submit(cfg, name, tokenizer) for name in sorted(names)}
    return {name: future.result() for name, future in futures.items()}


def build_data(cfg: RunConfig) -> dict[str, StepResult]:
    """The tokenizer (`"tokenizer"`) and every source the config needs (`smollm.stage.needed_sources`)."""
    tokenizer = tokenizer_task(cfg)
    return {"tokenizer": tokenizer, **build_sources(cfg, stage.needed_sources(cfg), tokenizer)}


def sources_of(data: dict[str, StepResult]) -> dict[str, StepResult]:
    return {name: result for name, result in data.items() if name != "tokenizer"}


def computed(data: dict[str, StepResult]) -> list[str]:
    """What this call built (the rest was complete)."""
    return [name for name, result in data.items() if result.computed]
