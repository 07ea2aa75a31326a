"""Typed results of the orchestration: checkpoints, stages, sweep members and sweeps.

Flows return these and pass them down; `to_dict()` is their JSON form (what a launcher carries
between processes, what a test or a Prefect UI user reads), `from_dict()` reads it back with
`smollm.schema.from_dict`'s checks. See docs/architecture.md for where each one is made.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from smollm.config import RunConfig, StageConfig, load_run_config
from smollm.evaluation.fingerprint import SuiteFingerprint
from smollm.rebalance.constraints import Constraints
from smollm.schema import from_dict, to_dict
from smollm.steps import StepResult


@dataclass(frozen=True, kw_only=True)
class Checkpoint:
    """A complete training step's output and its identity."""

    checkpoint: str
    identity: str

    @classmethod
    def of(cls, step: StepResult) -> Checkpoint:
        return cls(checkpoint=str(step.output), identity=step.identity)

    def step(self) -> StepResult:
        return StepResult(Path(self.checkpoint), self.identity, computed=False)


@dataclass(frozen=True, kw_only=True)
class StartPoint:
    """What an annealing run branches from: stage `stage_index` (on `mixture`) at `checkpoint`."""

    stage_index: int
    mixture: str
    checkpoint: Checkpoint


@dataclass(frozen=True, kw_only=True)
class TrainedStage:
    """A stage's training as a later stage sees it: where it started, where it ended, and the
    prefixes it kept on the way (branch points, `{tokens: checkpoint}`)."""

    stage: str
    stage_index: int
    mixture: str
    init: Checkpoint | None
    checkpoint: str
    identity: str
    prefixes: dict[int, Checkpoint] = field(default_factory=dict)

    def end(self) -> StepResult:
        return StepResult(Path(self.checkpoint), self.identity, computed=False)


@dataclass(frozen=True, kw_only=True)
class ProposedMixture:
    """A rebalance's proposal for the next stage, written as the generated mixture `name`."""

    name: str
    weights: dict[str, float]
    previous: dict[str, float]
    """The mixture the proposal moves from: the `current` of its constraints (`max_change`)."""
    explanation: str
    """Markdown: the proposal, the previous mixture, the diff and the reasons."""
    constraints: Constraints
    """What the proposal was held to (per source: min/max weight, the epoch cap with the tokens
    available and consumed; `max_change`); an edit at approval is checked against the same."""
    reasons: list[str] = field(default_factory=list)
    """The reasons, one line each (the policy's rules or fit, then any constraint that moved a weight)."""
    evidence: list[dict[str, Any]] = field(default_factory=list)
    """What the policy measured per candidate (`anneal_slope`: gain ± spread, centred slope)."""


@dataclass(frozen=True, kw_only=True)
class MemberResult:
    """One sweep member, trained (or found complete) and evaluated in its own MLflow run."""

    name: str
    overrides: list[str]
    candidate: str | None
    identity: str
    eval_identity: str
    run_id: str
    checkpoint: str
    trained: bool
    summary: dict[str, Any]
    evals: dict[str, float]
    stage_tokens_per_source: dict[str, int]
    seconds: float
    """The member's time in the process that ran it (training, evaluation, their records)."""
    wall_seconds: float | None = None
    """Its time as the sweep saw it, from its start (on a free worker, or here) to its result;
    None from a remote launcher."""

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MemberResult:
        missing = [f.name for f in fields(cls) if f.name not in data and f.default is MISSING]
        if missing:
            raise ValueError(f"member.{missing[0]}: is missing from a member's result, got keys {sorted(data)}")
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


@dataclass(frozen=True, kw_only=True)
class SweepResult:
    """A sweep: its members, the summary rows (score and delta vs control per category), the
    records a rebalancing policy reads (`smollm.rebalance.SweepRun`) and where it all went."""

    kind: str
    sweep_id: str
    sweep_run_id: str
    tracking_uri: str | None
    base: Checkpoint | None
    members: list[MemberResult]
    rows: list[dict[str, Any]]
    runs: list[dict[str, Any]]
    data_built: list[str]
    trained: list[str]
    folder: str
    chart: str | None
    seconds: float
    members_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


@dataclass(frozen=True, kw_only=True)
class StageResult(TrainedStage):
    """A stage flow's result: its training, evaluations, sweeps and the next mixture."""

    trained: bool
    data_built: list[str]
    tokens_seen: int
    summary: dict[str, Any]
    evals: dict[str, float]
    next_mixture: str | None
    proposal: ProposedMixture | None
    stage_run_id: str
    sweeps: dict[str, SweepResult]
    steps: list[str]
    """Identities of the steps this stage ran or found complete, in DAG order."""
    approval: dict[str, Any] | None = None
    """How a person (or the timeout) decided on `proposal`: `{how, mixture, overridden_constraints}`
    (the constraints an edit broke with `override_constraints`, one line each; else empty)."""
    eval_fingerprint: SuiteFingerprint | None = None
    """The suite fingerprint of `evals` (what the next stage's rebalance checks its own against)."""

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


@dataclass(frozen=True, kw_only=True)
class PipelineResult:
    pipeline: str
    pipeline_run_id: str
    workdir: str
    tracking_uri: str
    stages: list[StageResult]
    stopped: str | None

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


@dataclass(frozen=True, kw_only=True)
class MemberJob:
    """Everything one sweep member needs, as every launcher hands it over (local process pool,
    a Hydra launcher's job, a work pool's flow run): its typed config, its stage (budget,
    schedule), the built data and the base checkpoint on the shared work dir, its MLflow run."""

    name: str
    kind: str
    """`anneal` or `ablate`."""
    overrides: list[str]
    """The member's own overrides (e.g. `anneal.candidate=x`): a Hydra launcher's job folders."""
    candidate: str | None
    """The candidate source(s) or mixture; None: a control."""
    cfg: RunConfig
    stage: StageConfig
    tokenizer: Checkpoint
    sources: dict[str, Checkpoint]
    base: Checkpoint | None
    run_id: str

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MemberJob:
        base = data.get("base")
        return cls(
            name=data["name"],
            kind=data["kind"],
            overrides=list(data["overrides"]),
            candidate=data["candidate"],
            cfg=load_run_config(data["cfg"]),
            stage=from_dict(StageConfig, data["stage"], "job.stage"),
            tokenizer=Checkpoint(**data["tokenizer"]),
            sources={name: Checkpoint(**c) for name, c in data["sources"].items()},
            base=None if base is None else Checkpoint(**base),
            run_id=data["run_id"],
        )
