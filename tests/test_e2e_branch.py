"""End to end: a pipeline whose last stage branches from inside an earlier one (the shape of
SmolLM2's context extension), run by the real flows, then planned: the plan knows every step.

The branch starts from a prefix of the base stage (trained once, on the base stage's own LR
schedule), changes RoPE θ and the sequence length through its stage `overrides`, and decays
the LR on from where the base stage's decay stood.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import tiny_overrides

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

BRANCH_PIPELINE = """\
name: branch_test
stages:
  - name: base
    train_tokens: 102400
    mixture: demo_stage1
    decay_fraction: 1.0
  - name: long
    train_tokens: 25600
    mixture: demo_stage1
    init_from: base
    init_at_tokens: 76800
    decay_fraction: 1.0
    overrides: [model.rope_theta=50000, train.seq_len=128, train.micro_batch_size=4, train.optimizer.lr=7.5e-4]
"""


@pytest.fixture(scope="module")
def branch_run(built):
    from prefect.testing.utilities import prefect_test_harness

    from flows.pipeline import pipeline_flow
    from flows.runtime import embedded_settings

    workdir = Path(built[0].workdir)  # the session's tokenizer and sources are reused, not rebuilt
    folder = workdir.resolve() / "generated_conf" / "pipeline"
    folder.mkdir(parents=True)
    (folder / "branch_test.yaml").write_text(BRANCH_PIPELINE)
    overrides = [o for o in tiny_overrides(workdir) if not o.startswith("pipeline.")]
    overrides += ["pipeline=branch_test", "train.checkpoint_every_steps=0"]
    with prefect_test_harness(server_startup_timeout=120), embedded_settings():
        result = pipeline_flow(overrides=overrides).to_dict()
    return overrides, result


def _losses(checkpoint: str) -> list[dict]:
    return [json.loads(line) for line in (Path(checkpoint) / "losses.jsonl").read_text().splitlines()]


def test_the_branch_starts_from_a_prefix_of_the_base_stage(branch_run):
    _, result = branch_run
    base, long = result["stages"]
    assert base["init"] is None and long["init"]["checkpoint"] != base["checkpoint"]
    prefix = Path(long["init"]["checkpoint"])
    assert prefix.name.startswith("branch_test-base@76.8K-")
    prefix_losses, base_losses = _losses(str(prefix)), _losses(base["checkpoint"])
    assert prefix_losses == base_losses[: len(prefix_losses)] and len(prefix_losses) == 150  # 76800 / 512
    # the base stage kept the branch point on its way and went on from it: no token trained twice
    assert base["summary"]["resumed_from"] == str(prefix)
    summary = long["summary"]
    assert summary["start_tokens"] == 76800 and summary["tokens_seen"] == 76800 + 25600
    assert summary["final_lr"] == 0.0
    # the base stage's decay (200 steps) stood at 3e-3 * 50/200 = 7.5e-4 at the branch point (step 150)
    assert base_losses[149]["lr"] == pytest.approx(3e-3 * 50 / 200, rel=0.02)


def test_the_branch_has_its_own_model_and_context(branch_run):
    _, result = branch_run
    config = json.loads((Path(result["stages"][1]["checkpoint"]) / "model" / "config.json").read_text())
    assert config["rope_parameters"]["rope_theta"] == 50000
    assert result["stages"][1]["evals"]  # evaluated like any stage


def test_the_plan_of_a_finished_pipeline_has_every_step_complete(branch_run):
    from flows.plan import make_plan

    overrides, result = branch_run
    plan = make_plan(overrides)
    assert [s.name for s in plan.stages] == ["base", "long"]
    for stage in plan.stages:
        assert all(step.complete for step in stage.steps), [s.name for s in stage.steps if not s.complete]
    assert plan.stages[0].train_identity == result["stages"][0]["identity"]
    assert plan.stages[1].train_identity == result["stages"][1]["identity"]
    assert result["stages"][1]["init"]["identity"] in {s.identity for s in plan.stages[0].steps}
    assert plan.stages[1].start == "base at 76.8K" and plan.stages[1].seq_len == 128


LINEAGE_PIPELINE = """\
name: lineage_test
stages:
  - name: base
    train_tokens: 102400
    mixture: demo_stage1
  - name: mid
    train_tokens: 25600
    mixture: null
  - name: long
    train_tokens: 25600
    mixture: demo_stage1
    init_from: base
    init_at_tokens: 51200
    decay_fraction: 1.0
"""


@pytest.fixture(scope="module")
def lineage_run(built):
    """A pipeline with a rebalanced stage (`mid`, on the mixture the rebalance after `base`
    writes) and a branch from inside `base` (`long`): planned, run, planned again."""
    from prefect.testing.utilities import prefect_test_harness

    from flows.pipeline import pipeline_flow
    from flows.plan import make_plan
    from flows.runtime import embedded_settings

    workdir = Path(built[0].workdir)
    folder = workdir.resolve() / "generated_conf" / "pipeline"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "lineage_test.yaml").write_text(LINEAGE_PIPELINE)
    overrides = [o for o in tiny_overrides(workdir) if not o.startswith("pipeline.")]
    overrides += ["pipeline=lineage_test", "train.checkpoint_every_steps=0"]
    before = make_plan(overrides)
    with prefect_test_harness(server_startup_timeout=120), embedded_settings():
        result = pipeline_flow(overrides=overrides).to_dict()
    return before, result, make_plan(overrides)


def test_the_plan_lists_exactly_the_steps_the_run_executed(lineage_run):
    """`smollm plan` and the run walk one lineage: after the run, every stage's planned steps
    (identities, in order) are the steps the run executed, all complete."""
    _, result, after = lineage_run
    assert [s.name for s in after.stages] == [s["stage"] for s in result["stages"]] == ["base", "mid", "long"]
    for planned, ran in zip(after.stages, result["stages"], strict=True):
        assert [step.identity for step in planned.steps] == ran["steps"], planned.name
        assert all(step.complete for step in planned.steps), planned.name
        assert planned.train_identity == ran["identity"] and planned.mixture == ran["mixture"]
    mid = after.stages[1]
    assert result["stages"][0]["next_mixture"] == mid.mixture  # written by the rebalance after base
    assert mid.mixture_note == "written by the rebalance after base" and mid.start == "base (end)"
    long = after.stages[2]
    assert long.start == "base at 51.2K"
    prefix = next(s for s in after.stages[0].steps if s.name == "lineage_test-base@51.2K")
    assert result["stages"][2]["init"]["identity"] == prefix.identity  # the prefix base kept on its way


def test_before_the_rebalance_ran_the_plan_estimated_only_the_rebalanced_stage(lineage_run):
    before, result, after = lineage_run
    assert before.stages[1].mixture_note.startswith("estimate") and before.stages[1].mixture == "demo_stage1"
    assert before.stages[1].train_identity != after.stages[1].train_identity  # trained on the written mixture
    for index in (0, 2):  # the stages the rebalance does not touch were planned right from the start
        assert [s.identity for s in before.stages[index].steps] == result["stages"][index]["steps"]
