"""Replay rebalancing decisions from what a pipeline recorded.

Every rebalance stores its inputs (`rebalance/inputs.json`) and its proposal, with the policy
config that made it (`rebalance/proposal.json`), on its stage run. Replaying re-runs a policy —
the recorded one, or another — on those inputs: the recorded policy must give the recorded
mixtures again; another one shows what it would have decided, stage by stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from smollm.config import RebalanceConfig
from smollm.rebalance import Proposal, RebalanceInputs, propose
from smollm.schema import from_dict
from smollm.tracking import Tracker


@dataclass(frozen=True)
class RecordedDecision:
    """One recorded rebalance: the stage run it is on, its inputs, its policy and its mixture."""

    run_id: str
    inputs: RebalanceInputs
    policy: RebalanceConfig
    weights: dict[str, float]
    mixture_name: str


def recorded_decision(tracker: Tracker, run_id: str) -> RecordedDecision | None:
    inputs = tracker.load_dict(run_id, "rebalance/inputs.json")
    proposal = tracker.load_dict(run_id, "rebalance/proposal.json")
    if inputs is None or proposal is None:
        return None
    return RecordedDecision(
        run_id,
        RebalanceInputs.from_dict(inputs),
        from_dict(RebalanceConfig, proposal["policy"], "rebalance"),
        dict(proposal["weights"]),
        proposal["mixture_name"],
    )


def recorded_decisions(tracker: Tracker, run_id: str) -> list[RecordedDecision]:
    """The decisions of a pipeline run (its stage runs in order), or of one stage run."""
    own = recorded_decision(tracker, run_id)
    if own is not None:
        return [own]
    stages = [child for child, tags in tracker.child_runs(run_id) if tags.get("smollm.kind") == "stage"]
    decisions = [d for d in (recorded_decision(tracker, s) for s in stages) if d is not None]
    if not decisions:
        raise ValueError(f"--run: run {run_id!r} has no recorded rebalance (nor stage runs that have one)")
    return decisions


def replay(decisions: list[RecordedDecision], policy: RebalanceConfig | None = None) -> list[dict[str, Any]]:
    """Each decision re-made by `policy` (default: the one recorded with it)."""
    rows = []
    for decision in decisions:
        proposal: Proposal = propose(policy or decision.policy, decision.inputs)
        rows.append(
            {
                "stage": decision.inputs.stage,
                "next_stage": decision.inputs.next_stage,
                "run_id": decision.run_id,
                "recorded": decision.weights,
                "replayed": proposal.weights,
                "same": proposal.weights == decision.weights,
                "proposal": proposal,
            }
        )
    return rows


def format_replay(rows: list[dict[str, Any]]) -> str:
    lines = []
    for row in rows:
        verdict = "same mixture" if row["same"] else "DIFFERENT mixture"
        lines.append(f"after {row['stage']} -> {row['next_stage']} (stage run {row['run_id']}): {verdict}")
        for name in sorted(set(row["recorded"]) | set(row["replayed"])):
            before, after = row["recorded"].get(name, 0.0), row["replayed"].get(name, 0.0)
            lines.append(f"  {name:<24} recorded {before:.4f}  replayed {after:.4f}  ({after - before:+.4f})")
        lines += [f"  why: {line}" for line in row["proposal"].explanation]
    return "\n".join(lines)
