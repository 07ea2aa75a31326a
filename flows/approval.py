"""Approval of a proposed mixture in the Prefect UI, between two stages of a pipeline.

With `rebalance.approval.ask: true`, the pipeline flow pauses after a stage's rebalance and
waits for typed input (Prefect's `pause_flow_run(wait_for_input=...)`): the form shows the
proposal (its diff and reasons in the description) with the proposed weights filled in. The
person approves, edits the weights, or rejects (the pipeline stops there). An edit is validated
like any mixture config — declared sources, weights in [0, 1] summing to 1 — and then held to
the constraints the proposal was held to (`smollm.rebalance.violations` against the proposal's
`constraints` and the mixture it moves from: min/max weight, `max_change`, the epoch cap). An
invalid edit, or one that breaks a constraint, is refused with one line naming the field, the
constraint and the value, and the form is asked again. Ticking `override_constraints` accepts
an edit that breaks constraints (never an invalid one): the broken constraints are recorded in
the written mixture's provenance and in the approval record on the stage run. An accepted edit
is written as a generated mixture with its provenance. When nobody answers within
`timeout_seconds`, `on_timeout` applies (proceed or stop); so it does at once when no server is
there to ask on (the embedded default).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import pydantic
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.runtime import flow_run

from flows.runtime import server_can_ask
from smollm.config import ConfigError, MixtureConfig, RunConfig
from smollm.rebalance import Proposal, violations, write_generated_mixture
from smollm.rebalance.write import weights_digest
from smollm.results import ProposedMixture, StageResult
from smollm.schema import from_dict
from smollm.tracking import Tracker
from tasks.common import run_logger


class SourceWeight(pydantic.BaseModel):
    source: str
    weight: float = pydantic.Field(ge=0, le=1)


class MixtureApproval(RunInput):
    """The form: keep `approve` and the weights to accept the proposal; edit the weights (they
    must sum to 1 and keep the proposal's constraints) to train the next stage on your mixture;
    tick `override_constraints` to accept an edit that breaks them (recorded); untick `approve`
    to stop here. The weights are rows (the UI renders a row per source; the server checks each
    weight's range)."""

    approve: bool = True
    weights: list[SourceWeight]
    note: str = ""
    override_constraints: bool = False

    def mixture(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for row in self.weights:
            if row.source in out:
                raise ConfigError(f"mixture.weights.{row.source}: is given twice, got {row.source!r}")
            out[row.source] = row.weight
        return out


def rows(weights: dict[str, float]) -> list[dict[str, Any]]:
    return [{"source": name, "weight": weight} for name, weight in sorted(weights.items())]


@dataclass(frozen=True)
class ApprovalDecision:
    mixture: str | None
    """The next stage's mixture; None: stop the pipeline."""
    how: str
    """approved | edited | rejected | timeout-proceed | timeout-stop | no-server-proceed | no-server-stop"""
    weights: dict[str, float] | None = None
    overridden_constraints: tuple[str, ...] = ()
    """The constraints an accepted edit breaks (`override_constraints`), one line each."""


def validate_edit(cfg: RunConfig, weights: dict[str, float]) -> MixtureConfig:
    """The edited mixture as a config, or `ConfigError` naming the field (`mixture.weights.x: ...`)."""
    mixture = from_dict(MixtureConfig, {"name": "edited", "weights": weights}, "mixture")
    declared = sorted(cfg.data.sources)
    for source in weights:
        if source not in cfg.data.sources:
            raise ConfigError(f"mixture.weights.{source}: is not a declared source {declared}, got {source!r}")
    return mixture


def check_constraints(proposed: ProposedMixture, weights: dict[str, float], override: bool) -> tuple[str, ...]:
    """The constraints the edit breaks, held like the proposal was (same constraints, moving from
    the same mixture): `ConfigError` naming them, or with `override` the list to record."""
    broken = tuple(
        f"mixture.weights.{v.source}: {v.detail}" if v.source else f"mixture.weights: {v.detail}"
        for v in violations(weights, proposed.previous, proposed.constraints)
    )
    if broken and not override:
        raise ConfigError("; ".join(broken) + " (tick override_constraints to accept it anyway)")
    return broken


def ask(cfg: RunConfig, proposed: ProposedMixture, stage_run_id: str, next_stage: str) -> ApprovalDecision:
    """Pause the running pipeline flow until the proposal for `next_stage` is approved, edited,
    rejected, or the time is up."""
    settings = cfg.rebalance.approval
    if not server_can_ask():
        run_logger().warning(
            f"approval: no Prefect server to ask on (PREFECT_API_URL unset); on_timeout={settings.on_timeout}"
        )
        return _default(proposed, f"no-server-{settings.on_timeout}", settings.on_timeout)
    rejected = ""
    while True:
        form = MixtureApproval.with_initial_data(
            description=_description(proposed.explanation, next_stage, rejected), weights=rows(proposed.weights)
        )
        try:
            answer = pause_flow_run(wait_for_input=form, timeout=settings.timeout_seconds, poll_interval=1)
        except FlowPauseTimeout:
            run_logger().warning(
                f"approval: nobody answered within {settings.timeout_seconds}s; on_timeout={settings.on_timeout}"
            )
            _running_again()
            return _default(proposed, f"timeout-{settings.on_timeout}", settings.on_timeout)
        if not answer.approve:
            return ApprovalDecision(None, "rejected")
        try:
            weights = answer.mixture()
            if _same(weights, proposed.weights):
                return ApprovalDecision(proposed.name, "approved", proposed.weights)
            validate_edit(cfg, weights)
            broken = check_constraints(proposed, weights, answer.override_constraints)
        except (ConfigError, ValueError) as err:
            rejected = str(err)
            run_logger().warning(f"approval: edit rejected: {rejected}")
            continue
        name = _write_edit(cfg, proposed, stage_run_id, weights, answer.note, broken)
        return ApprovalDecision(name, "edited", weights, broken)


def _running_again() -> None:
    """An expired pause stays on the server: unless the run is set back to Running, the server
    turns its final state into Failed ("never resumed") although the flow went on."""
    from prefect import get_client
    from prefect.states import Running

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(flow_run.id, Running(message="approval timed out"), force=True)


def _same(a: dict[str, float], b: dict[str, float]) -> bool:
    names = set(a) | set(b)
    return all(abs(a.get(n, 0.0) - b.get(n, 0.0)) < 1e-9 for n in names)


def _default(proposed: ProposedMixture, how: str, on_timeout: str) -> ApprovalDecision:
    if on_timeout == "stop":
        return ApprovalDecision(None, how)
    return ApprovalDecision(proposed.name, how, proposed.weights)


def _description(explanation: str, next_stage: str, rejected: str) -> str:
    head = (
        f"**Approve the mixture for {next_stage}**, edit its weights (they must sum to 1 and keep the constraints"
        " the proposal kept: min/max weight, max_change, epoch cap; tick override_constraints to break them),"
        " or untick approve to stop."
    )
    if rejected:
        head = f"**Your edit was rejected:** `{rejected}`\n\n{head}"
    return f"{head}\n\n{explanation}"


def _write_edit(
    cfg: RunConfig,
    proposed: ProposedMixture,
    stage_run_id: str,
    weights: dict[str, float],
    note: str,
    broken: tuple[str, ...],
) -> str:
    name = f"{proposed.name}-edited-{weights_digest(weights)}"
    why = [f"edited in the Prefect UI (flow run {flow_run.id})" + (f": {note}" if note else "")]
    why += [f"constraint overridden: {line}" for line in broken] or ["within the proposal's constraints"]
    edit = Proposal({k: v for k, v in sorted(weights.items()) if v > 0}, proposed.previous, "edited", why)
    provenance = {
        "policy": "edited in the Prefect UI",
        "proposed_mixture": proposed.name,
        "proposed_weights": proposed.weights,
        "constraints": proposed.constraints.to_dict(),
        "overridden_constraints": list(broken),
        "prefect_flow_run": str(flow_run.id),
        "mlflow_runs": {"stage": stage_run_id},
    }
    write_generated_mixture(edit, name, cfg.workdir, provenance)
    return name


def approve_next(
    cfg: RunConfig, stage: StageResult, next_stage: str, tracker: Tracker
) -> tuple[str | None, StageResult]:
    """The next stage's mixture after `stage`'s rebalance: its proposal, or — with
    `rebalance.approval.ask` — what a person decided (None: stop). The decision is recorded on
    the stage run (`rebalance/approval.json`, tag `smollm.approval`; the constraints an edit
    overrode, tag `smollm.approval.overridden_constraints`) and in the stage's result."""
    assert stage.proposal is not None  # the lineage asks only after a rebalance
    if not cfg.rebalance.approval.ask:
        return stage.proposal.name, stage
    decision = ask(cfg, stage.proposal, stage.stage_run_id, next_stage)
    overridden = list(decision.overridden_constraints)
    approval = {"how": decision.how, "mixture": decision.mixture, "overridden_constraints": overridden}
    tracker.log_dict(stage.stage_run_id, {**approval, "weights": decision.weights}, "rebalance/approval.json")
    tags = {"smollm.approval": decision.how}
    if overridden:
        tags["smollm.approval.overridden_constraints"] = "; ".join(overridden)
    tracker.set_tags(stage.stage_run_id, tags)
    return decision.mixture, replace(stage, approval=approval)
