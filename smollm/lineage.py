"""The pipeline's DAG as data: per stage its config, its mixture, its start and its steps.

One place decides which mixture and which start each stage has. `smollm plan`
(`smollm.plan.plan_pipeline`), the pipeline and stage flows, and the sweeps all walk a
`Lineage` (as marin's executor runs and dry-runs one step list), so what a plan lists is what a
run executes (tests/test_e2e_branch.py compares the two).

A stage's mixture is `declared` in its config, `decided` by this run (the previous stage's
rebalance, after approval), `written` by a rebalance that ran before (its generated file
exists), or `pending`: planned on the previous stage's mixture until that rebalance runs.
Its start is `scratch`, the end of its parent stage, or a prefix of it (`init_at_tokens`).

Composition is the caller's (Hydra lives in `flows/compose.py`): a `Lineage` takes a function
that composes stage `i` on a mixture and calls it once per stage, in order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from smollm.config import RunConfig, StageConfig
from smollm.evaluation.fingerprint import SuiteFingerprint
from smollm.rebalance import generated_dir, generated_mixture_name
from smollm.schema import ConfigError
from smollm.stage import (
    branch_points,
    eval_step,
    needed_sources,
    source_step,
    token_label,
    tokenizer_step,
    training_step,
    workdir,
)
from smollm.steps import Step, StepResult

StageComposer = Callable[[int, str], RunConfig]
"""`compose(stage_index, mixture_name)`: the stage's config (the user's overrides, the stage's
own, the mixture), validated."""


@dataclass(frozen=True)
class MixtureChoice:
    name: str
    how: Literal["declared", "decided", "written", "pending"]
    note: str
    """For people: `declared`, `written by the rebalance after stage1`, `estimate: ...`."""


@dataclass(frozen=True)
class Start:
    """Where a stage's training starts: from scratch (`parent` None), or stage `parent`'s
    checkpoint, at its end or `at_tokens` into it."""

    parent: int | None
    at_tokens: int | None
    label: str


@dataclass(frozen=True)
class StageSteps:
    """A stage's steps: its data, the prefixes later branches start from, training, evaluation."""

    tokenizer: Step
    sources: dict[str, Step]
    prefixes: dict[int, Step]
    train: Step
    evaluation: Step

    def all(self) -> list[Step]:
        return [self.tokenizer, *self.sources.values(), *self.prefixes.values(), self.train, self.evaluation]


@dataclass(frozen=True)
class StageNode:
    """One stage of the lineage: composed once, with its mixture, start and steps."""

    index: int
    cfg: RunConfig
    mixture: MixtureChoice
    start: Start
    steps: StageSteps
    overrides: tuple[str, ...]
    """The user's overrides the pipeline was composed from (sweeps compose their members from them)."""

    @property
    def stage(self) -> StageConfig:
        return self.cfg.pipeline.stages[self.index]

    @property
    def name(self) -> str:
        return self.stage.name

    @property
    def is_last(self) -> bool:
        return self.index + 1 == len(self.cfg.pipeline.stages)

    @property
    def rebalances(self) -> bool:
        """Whether a rebalance after this stage writes the next stage's mixture."""
        return not self.is_last and self.cfg.pipeline.stages[self.index + 1].mixture is None

    @property
    def eval_fingerprint(self) -> SuiteFingerprint:
        """The suite fingerprint of the stage's evaluation, as its identity holds it."""
        return SuiteFingerprint.from_dict(self.steps.evaluation.config["fingerprint"])

    def next_mixture(self) -> str:
        """The name of the mixture the rebalance after this stage writes (policy and model in it)."""
        return generated_mixture_name(self.cfg, self.index, self.steps.train.identity)


def planned(step: Step, root: Path) -> StepResult:
    """A step's output as it will be (or is) on disk; `computed=False`."""
    return StepResult(step.output_dir(root), step.identity, computed=False)


def stage_steps(cfg: RunConfig, index: int, start: Step | None) -> StageSteps:
    """The steps of stage `index` of `cfg`, starting from `start`'s checkpoint."""
    root, stage = workdir(cfg), cfg.pipeline.stages[index]
    tokenizer = tokenizer_step(cfg)
    built = planned(tokenizer, root)
    sources = {name: source_step(cfg, name, built) for name in needed_sources(cfg)}
    data = {name: planned(step, root) for name, step in sources.items()}
    init = None if start is None else planned(start, root)
    prefixes = {at: training_step(cfg, stage, data, built, init, at) for at in branch_points(cfg, index)}
    train = training_step(cfg, stage, data, built, init)
    evaluation = eval_step(cfg, planned(train, root), data)
    return StageSteps(tokenizer, sources, prefixes, train, evaluation)


class Lineage:
    """The stages of a pipeline, added in order (`extend`), or all at once (`walk`)."""

    def __init__(self, top: RunConfig, compose_stage: StageComposer, overrides: tuple[str, ...] = ()) -> None:
        self.top = top
        """The pipeline's config without any stage's own overrides."""
        self.nodes: list[StageNode] = []
        self._compose = compose_stage
        self._overrides = tuple(overrides)

    @property
    def num_stages(self) -> int:
        return len(self.top.pipeline.stages)

    def index(self, name: str) -> int:
        names = [s.name for s in self.top.pipeline.stages]
        if name not in names:
            raise ConfigError(f"stage: {name!r} is not a stage of pipeline {self.top.pipeline.name} {names}")
        return names.index(name)

    def extend(self, decided: str | None = None) -> StageNode:
        """Compose the next stage; `decided` is its mixture when this run decided it."""
        index = len(self.nodes)
        mixture = self._mixture(index, decided)
        cfg = self._compose(index, mixture.name)
        start = self._start(index)
        node = StageNode(index, cfg, mixture, start, stage_steps(cfg, index, self.start_step(start)), self._overrides)
        self.nodes.append(node)
        return node

    def decide(self, index: int, mixture: str) -> StageNode:
        """Stage `index` trains on `mixture`, decided by this run (the previous stage's rebalance,
        approved or edited): unless the walk already had it with the same weights, that stage and
        the ones after it are composed again. (A walk reads the file an earlier run's rebalance
        wrote under the same name; this run's rebalance may have rewritten it: other code, other
        caps or evaluations give another decision from the same trained model.)"""
        if index > len(self.nodes):
            raise ValueError(f"stage_index: {index} comes after stage {len(self.nodes)}, which is not walked yet")
        node = self.nodes[index] if index < len(self.nodes) else None
        if node is not None and node.mixture.name == mixture and node.mixture.how != "pending":
            if self._compose(index, mixture).mixture.weights == node.cfg.mixture.weights:
                return node
        del self.nodes[index:]
        return self.extend(mixture)

    def walk(self, through: int | None = None) -> list[StageNode]:
        """Every stage (or those up to `through`), pending mixtures estimated."""
        last = self.num_stages - 1 if through is None else through
        while len(self.nodes) <= last:
            self.extend()
        return self.nodes[: last + 1]

    def start_step(self, start: Start) -> Step | None:
        """The training step whose checkpoint `start` is."""
        if start.parent is None:
            return None
        origin = self.nodes[start.parent].steps
        return origin.train if start.at_tokens is None else origin.prefixes[start.at_tokens]

    def require_mixtures(self, through: int, purpose: str) -> None:
        """Refuse a walk up to `through` on a mixture no rebalance has written yet."""
        for node in self.walk(through):
            if node.mixture.how == "pending":
                previous = self.nodes[node.index - 1].name
                raise ConfigError(
                    f"{purpose}: {node.name} trains on the mixture the rebalance after {previous} writes, which "
                    f"has not run yet; run the pipeline through {previous} first (smollm run ...)"
                )

    def _mixture(self, index: int, decided: str | None) -> MixtureChoice:
        declared = self.top.pipeline.stages[index].mixture
        if declared is not None:
            return MixtureChoice(declared, "declared", "declared")
        if index == 0 or not self.nodes:
            raise ValueError(f"pipeline.stages[{index}].mixture: is null, but there is no previous stage to rebalance")
        previous = self.nodes[index - 1]
        if decided is not None:
            return MixtureChoice(decided, "decided", f"decided after {previous.name}")
        written = previous.next_mixture()
        if (generated_dir(self.top.workdir) / "mixture" / f"{written}.yaml").is_file():
            return MixtureChoice(written, "written", f"written by the rebalance after {previous.name}")
        note = "estimate: the rebalance after the previous stage has not run"
        return MixtureChoice(previous.mixture.name, "pending", note)

    def _start(self, index: int) -> Start:
        pipeline = self.top.pipeline
        parent = pipeline.parent(index)
        if parent is None:
            return Start(None, None, "scratch")
        at_tokens = pipeline.stages[index].init_at_tokens
        name = pipeline.stages[parent].name
        if at_tokens is None:
            return Start(parent, None, f"{name} (end)")
        return Start(parent, at_tokens, f"{name} at {token_label(at_tokens)}")
