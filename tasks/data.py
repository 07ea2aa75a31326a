"""Tasks that build data: the tokenizer, then each source's token shards (once per tokenizer)."""

from __future__ import annotations

from prefect import task

from smollm import stage
from smollm.config import RunConfig
from smollm.steps import StepResult
from tasks.common import TASK_OPTIONS


@task(name="build-tokenizer", **TASK_OPTIONS)
def build_tokenizer(cfg: RunConfig) -> StepResult:
    return stage.build_tokenizer(cfg)


@task(name="build-source", task_run_name="build-source-{name}", **TASK_OPTIONS)
def build_source(cfg: RunConfig, name: str, tokenizer: StepResult) -> StepResult:
    return stage.build_source(cfg, name, tokenizer)
