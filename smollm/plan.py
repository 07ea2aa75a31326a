"""What a pipeline would run and cost, computed from configs alone: no download, no compute.

It walks the same `smollm.lineage.Lineage` as a run: for every stage its steps (kind, name,
identity, output folder, complete or not — the steps the run executes), its tokens, the tokens and cumulative epochs per source (with a
warning past `plan.warn_epochs` and an error past a source's `max_epochs`), its training FLOPs
and the GPU-hours they take at `plan.mfu` of `plan.peak_flops`. A rebalance rule that would
compare a stage's scores with the previous stage's across a changed evaluation (the suites'
fingerprints differ on a task it reads, `smollm.rebalance.drift`) is an error too, unless
`rebalance.accept_eval_drift` (then a warning).

FLOPs per trained token follow PaLM (Chowdhery et al. 2022, appendix B): `6 N` for the weights
(N counts tied embeddings once: the LM head's matmul is real work, the lookup is free) plus
`12 L d T` for attention scores and values over a `T`-token context.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from smollm.config import ModelConfig, RunConfig, SourceConfig
from smollm.data.sampler import stage_tokens
from smollm.data.sources import is_hub_id
from smollm.evaluation.fingerprint import SuiteFingerprint
from smollm.lineage import Lineage, StageNode
from smollm.model import parameter_count
from smollm.rebalance.drift import planned_drift, refusal
from smollm.stage import workdir
from smollm.steps import Step, is_complete


@dataclass(frozen=True)
class PlannedStep:
    kind: str
    name: str
    identity: str
    output: str
    complete: bool
    upstream: list[str]
    """Identities of the steps this one reads (the DAG's edges)."""


@dataclass(frozen=True)
class SourceUse:
    """One source in one stage: its share, the tokens drawn, and its repetition so far."""

    name: str
    domain: str
    weight: float
    tokens: int
    """Drawn in this stage."""
    cumulative_tokens: int
    """Drawn up to the end of this stage, along the stage's lineage."""
    available_tokens: int | None
    """Declared (hub sources) or measured by a complete build; None: unknown until built."""
    epochs: float | None
    max_epochs: float
    status: str
    """`ok`, `warn` (past `plan.warn_epochs`), `over` (past `max_epochs`: refused) or `unknown`."""


@dataclass(frozen=True)
class StagePlan:
    index: int
    name: str
    mixture: str
    mixture_note: str
    start: str
    """What training starts from: `scratch`, or a stage (and a point inside it)."""
    train_tokens: int
    tokens_per_step: int
    optimizer_steps: int
    peak_lr: float
    decay_fraction: float
    seq_len: int
    parameters: int
    flops: float
    gpu_hours: float
    domains: dict[str, float]
    sources: list[SourceUse]
    steps: list[PlannedStep]
    train_identity: str
    """The identity of the stage's own training step (what its rebalance is named after)."""


@dataclass(frozen=True)
class Plan:
    pipeline: str
    workdir: str
    gpu: str
    peak_flops: float
    mfu: float
    stages: list[StagePlan]
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def train_tokens(self) -> int:
        return sum(s.train_tokens for s in self.stages)

    @property
    def flops(self) -> float:
        return sum(s.flops for s in self.stages)

    @property
    def gpu_hours(self) -> float:
        return sum(s.gpu_hours for s in self.stages)

    def to_json(self) -> str:
        data = asdict(self)
        data.update(train_tokens=self.train_tokens, flops=self.flops, gpu_hours=self.gpu_hours)
        return json.dumps(data, indent=2)


def flops_per_token(model: ModelConfig, parameters: int, seq_len: int) -> float:
    """Training FLOPs per token: `6 N + 12 L d T` (forward + backward)."""
    return 6.0 * parameters + 12.0 * model.num_layers * model.hidden_size * seq_len


def _planned(step: Step, root: Path) -> PlannedStep:
    output = step.output_dir(root)
    return PlannedStep(step.kind, step.name, step.identity, str(output), is_complete(output), list(step.upstream))


def known_available_tokens(source: SourceConfig, built: Path) -> int | None:
    """Declared tokens, else the count a complete build at `built` measured, else unknown."""
    if source.available_tokens is not None:
        return source.available_tokens
    manifest = built / "manifest.json"
    if is_complete(built) and manifest.is_file():
        return int(json.loads(manifest.read_text())["num_tokens"])
    return None


COMMIT = re.compile(r"[0-9a-f]{40}")
"""A git commit id: a hub revision that always names the same data."""


@dataclass
class _Drawn:
    """Per stage, what a later stage starting from it has drawn before it starts."""

    consumed_at_start: dict[str, int]
    weights: dict[str, float]
    tokens_per_step: int
    tokens: int
    """Trained in whole optimizer steps."""
    seq_len: int


def plan_pipeline(lineage: Lineage) -> Plan:
    """The plan of every stage of `lineage` (walked here: pending mixtures are estimated)."""
    planner = Planner()
    for node in lineage.walk():
        planner.stage(node)
    return planner.result(lineage.top)


class Planner:
    """Plans a lineage's stages in order; `stage()` takes each stage's node."""

    def __init__(self) -> None:
        self.parameters: dict[str, int] = {}
        """Exact parameter count per model name (`smollm.model.parameter_count`)."""
        self.drawn: list[_Drawn] = []
        self.stages: list[StagePlan] = []
        self.warnings: list[str] = []
        self.errors: list[str] = []
        self._reported: set[tuple[str, str]] = set()
        self.unpinned: set[str] = set()
        """Hub sources whose `revision` is not a commit."""
        self.fingerprints: list[tuple[str, SuiteFingerprint]] = []
        """Each planned stage's eval suite fingerprint, in order."""

    def stage(self, node: StageNode) -> StagePlan:
        cfg, stage, index = node.cfg, node.stage, node.index
        root = workdir(cfg)
        steps = [_planned(step, root) for step in node.steps.all()]
        consumed = self._consumed_at_start(node)
        weights = {k: v for k, v in sorted(cfg.mixture.weights.items()) if v > 0}
        train = cfg.train
        optimizer_steps = stage.train_tokens // train.tokens_per_step
        tokens = optimizer_steps * train.tokens_per_step
        self.drawn.append(_Drawn(consumed, weights, train.tokens_per_step, tokens, train.seq_len))
        drawn = stage_tokens(weights, tokens // train.seq_len, train.seq_len)
        estimate = node.mixture.how == "pending"
        uses = [
            self._use(
                cfg, stage.name, name, w, drawn[name], consumed, node.steps.sources[name].output_dir(root), estimate
            )
            for name, w in weights.items()
        ]
        domains: dict[str, float] = {}
        for use in uses:
            domains[use.domain] = round(domains.get(use.domain, 0.0) + use.weight, 12)
        if cfg.model.name not in self.parameters:
            self.parameters[cfg.model.name] = parameter_count(cfg.model)
        parameters = self.parameters[cfg.model.name]
        flops = flops_per_token(cfg.model, parameters, train.seq_len) * tokens
        plan = StagePlan(
            index=index,
            name=stage.name,
            mixture=cfg.mixture.name,
            mixture_note=node.mixture.note,
            start=node.start.label,
            train_tokens=tokens,
            tokens_per_step=train.tokens_per_step,
            optimizer_steps=optimizer_steps,
            peak_lr=train.optimizer.lr,
            decay_fraction=stage.decay_fraction,
            seq_len=train.seq_len,
            parameters=parameters,
            flops=flops,
            gpu_hours=flops / (cfg.plan.peak_flops * cfg.plan.mfu) / 3600,
            domains=dict(sorted(domains.items())),
            sources=uses,
            steps=steps,
            train_identity=node.steps.train.identity,
        )
        self.stages.append(plan)
        self._check_eval_drift(node)
        return plan

    def _check_eval_drift(self, node: StageNode) -> None:
        """The rebalance after `node` compares its evaluation with the previous stage's where a
        rule reads a change: refuse drift between them now, before any compute (accepted: a warning)."""
        fingerprint = node.eval_fingerprint
        if self.fingerprints and node.rebalances:
            before, previous = self.fingerprints[-1]
            found = planned_drift(node.cfg.rebalance, previous, fingerprint)
            if found and not node.cfg.rebalance.accept_eval_drift:
                self.errors.append(refusal(found[0], before, node.name))
            else:
                self.warnings += [
                    f"rebalance after {node.name}: eval drift accepted: {d.text(before, node.name)}" for d in found
                ]
        self.fingerprints.append((node.name, fingerprint))

    def _consumed_at_start(self, node: StageNode) -> dict[str, int]:
        """The tokens drawn per source along the lineage before stage `node` starts."""
        start = node.start
        if start.parent is None:
            return {}
        origin = self.drawn[start.parent]
        if start.at_tokens is None:
            return _add(origin, origin.tokens)
        # a branch point inside the parent: what the parent drew up to it
        return _add(origin, start.at_tokens // origin.tokens_per_step * origin.tokens_per_step)

    def _use(
        self,
        cfg: RunConfig,
        stage: str,
        name: str,
        weight: float,
        drawn: int,
        before: dict,
        built: Path,
        estimate: bool = False,
    ) -> SourceUse:
        """How stage `stage` uses source `name`. Past its cap on a declared (or written) mixture is
        an error; on an `estimate` (a mixture a rebalance has yet to write) it is a warning: that
        rebalance holds the source to its epoch cap, leaving the later stages room to come down."""
        source = cfg.data.sources[name]
        cumulative = before.get(name, 0) + drawn
        available = known_available_tokens(source, built)
        epochs = cumulative / available if available else None
        if epochs is None:
            status = "unknown"
        elif epochs > source.max_epochs:
            status = "over"
            message = (
                f"data.sources.{name}: {epochs:.2f} epochs by the end of {stage} "
                f"exceeds its max_epochs={source.max_epochs:g} ({cumulative:,} of {available:,} tokens)"
            )
            if not estimate:
                self._report(self.errors, name, status, message)
            else:
                why = f"on an estimate of its mixture: the rebalance before {stage} has not run, and its epoch cap holds the source"
                self._report(self.warnings, name, status, f"{message}, {why}")
        elif epochs > cfg.plan.warn_epochs:
            status = "warn"
            self._report(
                self.warnings,
                name,
                status,
                f"data.sources.{name}: {epochs:.2f} epochs by the end of {stage} "
                f"(past {cfg.plan.warn_epochs:g}; cap {source.max_epochs:g})",
            )
        else:
            status = "ok"
        if is_hub_id(source.path) and not COMMIT.fullmatch(source.revision or ""):
            self.unpinned.add(name)
        return SourceUse(
            name=name,
            domain=source.domain,
            weight=weight,
            tokens=drawn,
            cumulative_tokens=cumulative,
            available_tokens=available,
            epochs=epochs,
            max_epochs=source.max_epochs,
            status=status,
        )

    def _report(self, messages: list[str], source: str, status: str, message: str) -> None:
        """Each source is reported once per status: at the first stage that crosses the line."""
        if (source, status) not in self._reported:
            self._reported.add((source, status))
            messages.append(message)

    def result(self, cfg: RunConfig) -> Plan:
        if self.unpinned:
            self.warnings.append(
                f"hub sources read at a branch, not a commit: {', '.join(sorted(self.unpinned))} (each build "
                "records the commit it read; set data.sources.<name>.revision to a commit to pin the data)"
            )
        return Plan(
            pipeline=cfg.pipeline.name,
            workdir=str(workdir(cfg)),
            gpu=cfg.plan.gpu,
            peak_flops=cfg.plan.peak_flops,
            mfu=cfg.plan.mfu,
            stages=self.stages,
            warnings=self.warnings,
            errors=self.errors,
        )


def _add(origin: _Drawn, tokens: int) -> dict[str, int]:
    """What was drawn before `origin`'s stage and in its first `tokens` tokens, per source, to
    the token as the sampler draws it (every source ever drawn from, not only the stage's)."""
    after = dict(origin.consumed_at_start)
    for name, drawn in stage_tokens(origin.weights, tokens // origin.seq_len, origin.seq_len).items():
        after[name] = after.get(name, 0) + drawn
    return after


def format_plan(plan: Plan) -> str:
    """The plan as text: the DAG with identities and completion, then the numbers per stage."""
    lines = [f"pipeline {plan.pipeline}   work dir {plan.workdir}", ""]
    listed: set[str] = set()
    for stage in plan.stages:
        domains = "  ".join(f"{k} {v:.1%}" for k, v in stage.domains.items())
        lines.append(
            f"stage {stage.index + 1} {stage.name}: {_tokens(stage.train_tokens)} tokens, "
            f"{stage.optimizer_steps:,} steps x {stage.tokens_per_step:,} tokens, from {stage.start}"
        )
        lines.append(
            f"  mixture {stage.mixture} ({stage.mixture_note}); LR peak {stage.peak_lr:g}, "
            f"decay over {stage.decay_fraction:.0%} of the stage; seq {stage.seq_len}"
        )
        lines.append(f"  domains  {domains}")
        lines.append(f"  {'source':<20}{'weight':>8}{'tokens':>10}{'total':>10}{'available':>11}{'epochs':>8}  ")
        for use in stage.sources:
            available = _tokens(use.available_tokens) if use.available_tokens else "?"
            epochs = f"{use.epochs:.2f}" if use.epochs is not None else "?"
            flag = {"warn": "WARN", "over": "OVER CAP", "unknown": "(measured at build)"}.get(use.status, "")
            lines.append(
                f"  {use.name:<20}{use.weight:>8.4f}{_tokens(use.tokens):>10}{_tokens(use.cumulative_tokens):>10}"
                f"{available:>11}{epochs:>8}  {flag}"
            )
        lines.append(
            f"  compute  N={stage.parameters:,}  {stage.flops:.3e} FLOPs  "
            f"{_hours(stage.gpu_hours)} {plan.gpu} GPU-hours at {plan.mfu:.0%} MFU"
        )
        lines.append("  steps (those not listed under an earlier stage)")
        for step in stage.steps:
            if step.identity in listed:
                continue
            listed.add(step.identity)
            state = "complete" if step.complete else "to run"
            lines.append(f"    {step.kind:<10}{step.name:<44}{step.identity[:12]}  {state}")
        lines.append("")
    lines.append(
        f"total: {_tokens(plan.train_tokens)} tokens, {plan.flops:.3e} FLOPs, "
        f"{_hours(plan.gpu_hours)} GPU-hours ({plan.gpu}, {plan.peak_flops:.3g} FLOP/s peak, {plan.mfu:.0%} MFU)"
    )
    lines += [f"warning: {w}" for w in plan.warnings]
    lines += [f"error: {e}" for e in plan.errors]
    return "\n".join(lines)


def _hours(hours: float) -> str:
    return f"{hours:,.0f}" if hours >= 100 else f"{hours:.3g}"


def _tokens(count: int | float) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count / size >= 0.9995:
            return f"{count / size:.3g}{unit}"
    return str(int(count))
