"""End to end: the main job's data-driven loop at a tiny budget, under Prefect's test harness.

After each non-final stage the stage flow runs its declared annealing sweep (every candidate
source and the control, at two seeds) from the stage's last stable checkpoint; the members'
evaluations land in their MLflow runs; the rebalance (`anneal_slope`, the default) decides the
next mixture from those gains; the next stage trains on exactly that mixture. Every link is
checked from what was recorded (MLflow runs, training summaries), not from the config.
"""

from __future__ import annotations

import pytest

from tests.conftest import loop_overrides

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MEMBER_TOKENS = 4096  # 8 steps of the tiny config per annealing member


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    from prefect.testing.utilities import prefect_test_harness

    from flows.pipeline import pipeline_flow
    from flows.runtime import embedded_settings

    overrides = [
        *loop_overrides(tmp_path_factory.mktemp("loop") / "work"),
        f"pipeline.stages.0.anneal.train_tokens={MEMBER_TOKENS}",
        f"pipeline.stages.1.anneal.train_tokens={MEMBER_TOKENS}",
    ]
    with prefect_test_harness(server_startup_timeout=120), embedded_settings():
        return pipeline_flow(overrides=overrides)


def member_runs_from_mlflow(result, sweep):
    """The sweep's members as the policy reads them, rebuilt from their own MLflow runs."""
    from mlflow.tracking import MlflowClient

    from smollm.rebalance import SweepRun
    from smollm.sweep import category_scores

    client = MlflowClient(tracking_uri=result.tracking_uri)
    recorded = {r["name"]: r for r in sweep.runs}
    runs = []
    for member in sweep.members:
        metrics = client.get_run(member.run_id).data.metrics
        record = recorded[member.name]
        runs.append(
            SweepRun.from_dict(
                {
                    **record,
                    "scores": category_scores(metrics),
                    "bpb": category_scores(metrics, prefix="eval/bpb/"),
                }
            )
        )
    return runs


def test_each_non_final_stage_anneals_every_candidate_from_its_own_checkpoint(loop):
    from mlflow.tracking import MlflowClient

    from smollm.sweep import category_scores

    client = MlflowClient(tracking_uri=loop.tracking_uri)
    for stage in loop.stages[:-1]:
        sweep = stage.sweeps["anneal"]
        assert sweep.base is not None and sweep.base.checkpoint == stage.checkpoint  # stable to its end
        candidates = sorted({m.candidate for m in sweep.members if m.candidate})
        assert candidates == ["noisy_web", "stdlib_code", "stdlib_prose", "synthetic_math"]
        assert len(sweep.members) == 10 and all(m.trained for m in sweep.members)  # 4 x 2 seeds + 2 controls
        for member in sweep.members:
            assert member.summary["optimizer_state_loaded"]  # continued from the stage, not from scratch
            assert sum(member.summary["stage_tokens_per_source"].values()) == MEMBER_TOKENS
            # members evaluate what the decision reads (bits per byte), not the accuracy tasks
            metrics = client.get_run(member.run_id).data.metrics
            assert set(category_scores(metrics, prefix="eval/bpb/")) == {"code", "knowledge", "math"}
            assert not category_scores(metrics) and not [k for k in metrics if k.endswith("/acc")]
    assert "anneal" not in (loop.stages[-1].sweeps or {})


def test_the_decision_is_the_policy_on_the_gains_mlflow_recorded(loop):
    import json
    from pathlib import Path

    from mlflow.tracking import MlflowClient

    from smollm.config import RebalanceConfig
    from smollm.rebalance import RebalanceInputs, propose
    from smollm.schema import from_dict

    client = MlflowClient(tracking_uri=loop.tracking_uri)
    for stage in loop.stages[:-1]:
        path = client.download_artifacts(stage.stage_run_id, "rebalance")
        inputs = RebalanceInputs.from_dict(json.loads((Path(path) / "inputs.json").read_text()))
        recorded = json.loads((Path(path) / "proposal.json").read_text())
        policy = from_dict(RebalanceConfig, recorded["policy"], "rebalance")
        assert policy.policy == "anneal_slope" and policy.anneal_slope.signal == "bpb"
        # the members' bpb in the decision's inputs are those of their own MLflow runs
        from_mlflow = {r.name: r for r in member_runs_from_mlflow(loop, stage.sweeps["anneal"])}
        for run in inputs.runs("anneal"):
            assert run.bpb and run.bpb == pytest.approx(from_mlflow[run.name].bpb)
        # re-deciding from the MLflow records gives the recorded mixture and evidence
        rebuilt = RebalanceInputs.from_dict(
            {**inputs.to_dict(), "sweep_runs": [r.to_dict() for r in from_mlflow.values()]}
        )
        again = propose(policy, rebuilt)
        assert again.weights == pytest.approx(recorded["weights"])
        assert again.evidence == recorded["evidence"] == stage.proposal.evidence
        assert {row["candidate"] for row in again.evidence} == {
            "noisy_web",
            "stdlib_code",
            "stdlib_prose",
            "synthetic_math",
        }


def test_the_next_stage_trains_on_the_move(loop):
    moves = []
    for before, after in zip(loop.stages[:-1], loop.stages[1:], strict=True):
        proposal = before.proposal
        assert proposal is not None and after.mixture == proposal.name
        trained = after.summary["mixture"]
        assert trained == pytest.approx({k: v for k, v in proposal.weights.items() if v > 0}, abs=1e-6)
        # nothing moves without a gain that cleared the noise (a cleared gain may still not move:
        # lowering a source already at 0, raising one at its cap)
        acted = any(r.startswith("anneal_slope:") and (": raise " in r or ": lower " in r) for r in proposal.reasons)
        assert not acted or any(row["significant"] for row in proposal.evidence)
        moved = set(trained) != set(before.summary["mixture"]) or any(
            abs(trained[k] - before.summary["mixture"][k]) > 1e-3 for k in trained
        )
        assert acted or not moved, (proposal.reasons, before.summary["mixture"], trained)
        moves.append(moved)
    assert moves[0], "after stage 1 (the most to learn) no gain cleared the noise: nothing was data-driven"


def test_the_report_shows_each_decision_with_its_evidence(loop):
    from flows.cli import report

    text = report(loop)
    for stage in loop.stages[:-1]:
        assert f"after {stage.stage} -> {stage.proposal.name}" in text
    assert "centred slope" in text and "noisy_web" in text
