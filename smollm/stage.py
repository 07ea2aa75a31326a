"""The steps of a stage: their definitions (`tokenizer_step`, `source_step`, `training_step`,
`eval_step`) and the functions that run them (`prepare_tokenizer`, `build_source`, `train`,
`evaluate`).

Each definition is a `Step` (config slice + upstream identities + code); `smollm.lineage`
builds a pipeline's DAG from them, and each runner goes through `steps.run_step`, so a complete
output is reused across processes and flow runs. The tasks of `tasks/` run these (with their
MLflow records from `smollm.runs`); benchmarks and tests call them directly.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smollm.config import RunConfig, SourceConfig, StageConfig
from smollm.data.sources import environment_fingerprint, hub_commit
from smollm.evaluation.fingerprint import SuiteFingerprint, suite_fingerprint
from smollm.schema import to_dict
from smollm.steps import Step, StepResult, run_step
from smollm.tracking import NullTracker, Tracker

# Source fields that change the tokens; constraints (epochs, weights) are applied later.
SOURCE_CONTENT_FIELDS = (
    "loader",
    "builtin",
    "path",
    "subset",
    "data_dir",
    "data_files",
    "revision",
    "split",
    "text_field",
    "text_join",
    "content_url",
    "content_compression",
    "num_docs",
    "min_chars",
    "heldout_docs",
    "seed",
)
# The module of each step's function: its closure of project modules and the libraries they
# import are the step's code (`smollm.step_code`).
TOKENIZER_CODE = ("smollm.data.tokenizer",)
TOKENS_CODE = ("smollm.data.shards",)
TRAIN_CODE = ("smollm.train",)
EVAL_CODE = ("smollm.evaluation.lighteval_backend",)
# Train fields that do not change the result.
TRAIN_BOOKKEEPING_FIELDS = (
    "progress",
    "log_every_steps",
    "num_threads",
    "checkpoint_every_steps",
    "processes",
    "parallelism",
    "compile",
)


def workdir(cfg: RunConfig) -> Path:
    return Path(cfg.workdir).resolve()


def source_slice(source: SourceConfig) -> dict[str, Any]:
    content = {k: getattr(source, k) for k in SOURCE_CONTENT_FIELDS}
    return {**content, "environment": environment_fingerprint(source)}


def needed_sources(cfg: RunConfig) -> list[str]:
    """The sources a stage builds: its mixture's, the eval suite's held-out ones, the rebalancer's."""
    names = {name for name, weight in cfg.mixture.weights.items() if weight > 0}
    names.update(s for s in cfg.eval_suite.sources() if s in cfg.data.sources)
    for rule in cfg.rebalance.rules:
        names.update((*rule.raise_sources, *rule.lower_sources))
    return sorted(names)


def tokenizer_step(cfg: RunConfig) -> Step:
    config: dict[str, Any] = {"tokenizer": to_dict(cfg.tokenizer)}
    if cfg.tokenizer.kind == "train_bpe":
        config["sources"] = {name: source_slice(s) for name, s in sorted(cfg.data.sources.items())}
    return Step("tokenizer", cfg.tokenizer.name, config, code=TOKENIZER_CODE)


def prepare_tokenizer(cfg: RunConfig) -> StepResult:
    from smollm.data.tokenizer import build_tokenizer as build

    sources = [cfg.data.sources[name] for name in sorted(cfg.data.sources)]
    return run_step(tokenizer_step(cfg), workdir(cfg), lambda out: build(cfg.tokenizer, sources, out))


def source_step(cfg: RunConfig, name: str, tokenizer: StepResult) -> Step:
    # data.executor (and its module) is left out: every executor writes the same bytes.
    config = {"source": source_slice(cfg.data.sources[name]), "shard_tokens": cfg.data.shard_tokens}
    return Step(
        "tokens",
        name,
        config,
        upstream=(tokenizer.identity,),
        code=TOKENS_CODE,
    )


def build_source(cfg: RunConfig, name: str, tokenizer: StepResult) -> StepResult:
    """Tokenize a source inline or on datatrove's executors (`data.executor`): the same bytes either
    way, so the executor is not part of the step (tests/test_datatrove_tokenize.py checks both)."""
    from smollm.data.shards import TokenizedSource, tokenize_source

    source, executor = cfg.data.sources[name], cfg.data.executor

    def build(out: Path) -> dict:
        # the declared revision is the identity; the commit it names now is what is read (and
        # recorded), asked only when building: a complete output never needs the hub
        commit = hub_commit(source)
        read = source if commit is None else dataclasses.replace(source, revision=commit)
        if executor.kind == "inline":
            return tokenize_source(read, tokenizer.output, out, cfg.data.shard_tokens)
        from smollm.data.datatrove_tokenize import tokenize_source_datatrove

        return tokenize_source_datatrove(read, tokenizer.output, out, cfg.data.shard_tokens, executor)

    return run_step(
        source_step(cfg, name, tokenizer),
        workdir(cfg),
        build,
        check=lambda out: TokenizedSource.problem(out, checksum=cfg.data.verify == "checksum"),
    )


def training_step(
    cfg: RunConfig,
    stage: StageConfig,
    sources: dict[str, StepResult],
    tokenizer: StepResult,
    previous: StepResult | None,
    stop_at_tokens: int | None = None,
) -> Step:
    """The training step of `stage`; with `stop_at_tokens`, its prefix up to that many tokens."""
    train = {k: v for k, v in to_dict(cfg.train).items() if k not in TRAIN_BOOKKEEPING_FIELDS}
    weights = {k: v for k, v in sorted(cfg.mixture.weights.items()) if v > 0}
    config: dict[str, Any] = {
        "model": to_dict(cfg.model),
        "train": train,
        "stage": {"train_tokens": stage.train_tokens, "decay_fraction": stage.decay_fraction},
        "mixture": weights,
    }
    upstream = [tokenizer.identity, *(sources[name].identity for name in weights)]
    if previous is not None:
        upstream.append(previous.identity)
    name = f"{cfg.pipeline.name}-{stage.name}"
    if stop_at_tokens is not None:
        config["stop_at_tokens"] = stop_at_tokens
        name += f"@{token_label(stop_at_tokens)}"
    return Step(
        "train",
        name,
        config,
        upstream=tuple(upstream),
        code=TRAIN_CODE,
    )


def branch_points(cfg: RunConfig, stage_index: int) -> list[int]:
    """Tokens into stage `stage_index` at which later stages, or the stage's own annealing runs,
    branch off (its prefixes), sorted."""
    pipeline = cfg.pipeline
    points = {
        s.init_at_tokens
        for i, s in enumerate(pipeline.stages)
        if s.init_at_tokens is not None and pipeline.parent(i) == stage_index
    }
    stable = stable_tokens(cfg, pipeline.stages[stage_index])
    if pipeline.stages[stage_index].anneal is not None and stable is not None:
        points.add(stable)
    return sorted(points)


def stable_tokens(cfg: RunConfig, stage: StageConfig) -> int | None:
    """Tokens into `stage` where its LR decay starts (its last stable checkpoint); None if the
    stage does not decay, or decays from its first step."""
    steps = stage.train_tokens // cfg.train.tokens_per_step
    decay = round(steps * stage.decay_fraction)
    if decay == 0 or decay >= steps:
        return None
    return (steps - decay) * cfg.train.tokens_per_step


def token_label(tokens: int) -> str:
    """`925000000000` -> `925B`: short, exact where it can be."""
    for unit, size in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if tokens >= size and tokens % (size // 1000) == 0:
            return f"{tokens / size:g}{unit}"
    return str(tokens)


@dataclass(frozen=True)
class TrainOutcome:
    step: StepResult
    summary: dict[str, Any]


def train(
    cfg: RunConfig,
    stage: StageConfig,
    sources: dict[str, StepResult],
    tokenizer: StepResult,
    previous: StepResult | None,
    tracker: Tracker | None = None,
    run_id: str | None = None,
    stop_at_tokens: int | None = None,
    resume_from: StepResult | None = None,
) -> TrainOutcome:
    """Train `stage` (from `previous`'s checkpoint if given); reuse a complete output.

    `resume_from`, a complete prefix of the same stage, is continued instead of retraining its
    tokens; it does not enter the identity (the result is the same either way)."""
    from smollm.train import StageRun, train_stage

    step = training_step(cfg, stage, sources, tokenizer, previous, stop_at_tokens)
    output = step.output_dir(workdir(cfg))
    resume_dir = output.with_name(f".resume-{output.name}")
    run = StageRun(
        model=cfg.model,
        train=cfg.train,
        stage=stage,
        mixture=cfg.mixture,
        sources={name: result.output for name, result in sources.items()},
        tokenizer_dir=tokenizer.output,
        init_checkpoint=previous.output if previous else None,
        resume_dir=resume_dir,
        stop_at_tokens=stop_at_tokens,
        resume_from=resume_from.output if resume_from else None,
    )
    tracking = cfg.tracking if tracker is not None and not isinstance(tracker, NullTracker) else None

    def trained(out: Path) -> dict:
        return train_stage(run, out, tracker, run_id, tracking=tracking, workdir=workdir(cfg))

    result = run_step(step, workdir(cfg), trained)
    shutil.rmtree(resume_dir, ignore_errors=True)  # the committed checkpoint supersedes it
    summary = json.loads((result.output / "summary.json").read_text())
    return TrainOutcome(result, summary)


def eval_step(cfg: RunConfig, checkpoint: StepResult, sources: dict[str, StepResult]) -> Step:
    # the suite fingerprint (lighteval's version, the task definitions) is part of the identity;
    # a held-out source's data identity stands for the revision of its documents
    upstream = (checkpoint.identity, *(sources[n].identity for n in sorted(sources)))
    fingerprint = suite_fingerprint(cfg.eval_suite, {n: r.identity[:16] for n, r in sources.items()})
    return Step(
        "eval",
        checkpoint.output.name,
        {"suite": cfg.eval, "fingerprint": fingerprint.to_dict()},
        upstream=upstream,
        code=EVAL_CODE,
    )


def evaluate(
    cfg: RunConfig, checkpoint: StepResult, sources: dict[str, StepResult], *, label: str | None = None
) -> tuple[StepResult, Any]:
    """Evaluate a checkpoint on the suite with lighteval; reuse complete results. With
    `train.progress`, a progress bar `evaluate <label>` (default: the checkpoint's name)."""
    from smollm.evaluation.lighteval_backend import evaluate_checkpoint
    from smollm.evaluation.result import EvalResult

    heldout = {name: result.output / "heldout.jsonl" for name, result in sources.items()}
    step = eval_step(cfg, checkpoint, sources)
    fingerprint = SuiteFingerprint.from_dict(step.config["fingerprint"])
    progress = f"evaluate {label or checkpoint.output.name}" if cfg.train.progress else None
    result = run_step(
        step,
        workdir(cfg),
        lambda out: evaluate_checkpoint(
            checkpoint.output / "model", cfg.eval_suite, heldout, out, fingerprint, progress=progress
        ),
    )
    return result, EvalResult.from_json((result.output / "results.json").read_text())
