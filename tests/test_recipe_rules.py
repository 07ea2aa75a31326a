"""`pipeline=smollm2_1.7b_auto` with `rebalance=smollm2_rules`: the 1.7B recipe whose stages 2-4
take the mixture the paper's principles propose. It composes, plans offline, and on the paper's
per-stage results (recorded as stage runs by scripts/recipe_replay.py) each rule moves weight the
way its principle says, within the constraints."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

import pytest

from flows.cli import main
from flows.compose import compose, compose_lineage
from smollm.rebalance import propose, violations
from smollm.replay import recorded_decisions, replay
from smollm.schema import to_dict
from smollm.tracking import NullTracker

ROOT = Path(__file__).resolve().parent.parent
AUTO, RECIPE = "pipeline=smollm2_1.7b_auto", "pipeline=smollm2_1.7b"


def load_replay_script():
    spec = importlib.util.spec_from_file_location("recipe_replay", ROOT / "scripts" / "recipe_replay.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def paper(tmp_path_factory):
    """The script, and per transition (after stage 1, 2, 3) its decision and smollm2_rules' proposal."""
    script = load_replay_script()
    decisions = script.paper_decisions(tmp_path_factory.mktemp("paper"))
    return script, decisions, [propose(d.cfg.rebalance, d.inputs) for d in decisions]


def shares(cfg, weights):
    """Weight per domain (web, code, math, other)."""
    out: dict[str, float] = {}
    for name, weight in weights.items():
        domain = cfg.data.sources[name].domain
        out[domain] = out.get(domain, 0.0) + weight
    return out


def test_the_auto_recipe_is_the_recipe_with_stages_2_to_4_left_to_the_rules(tmp_path):
    auto, recipe = compose([f"workdir={tmp_path}", AUTO]), compose([f"workdir={tmp_path}", RECIPE])
    for group in ("model", "tokenizer", "data", "train", "eval", "mixture"):
        assert to_dict(getattr(auto, group)) == to_dict(getattr(recipe, group)), group
    for mine, theirs in zip(auto.pipeline.stages, recipe.pipeline.stages, strict=True):
        assert dataclasses.replace(mine, mixture=None) == dataclasses.replace(theirs, mixture=None)
    assert [s.mixture for s in auto.pipeline.stages] == [
        "smollm2_stage1",
        None,
        None,
        None,
        "smollm2_long_context",
    ]
    assert auto.rebalance.policy == "rules" and recipe.rebalance.policy == "keep"
    assert {r.name for r in auto.rebalance.rules} >= {"math_below_target", "code_below_target", "anneal_math"}
    nodes = compose_lineage([f"workdir={tmp_path}", AUTO]).walk()
    assert [n.mixture.how for n in nodes] == ["declared", "pending", "pending", "pending", "declared"]
    assert [n.rebalances for n in nodes] == [True, True, True, False, False]


def test_the_auto_recipe_plans_offline(tmp_path, capsys):
    assert main(["plan", f"workdir={tmp_path}", AUTO]) == 0
    out = capsys.readouterr().out
    assert out.count("(estimate: the rebalance after the previous stage has not run)") == 3
    assert "stage 5 long_context: 75B tokens" in out and "smollm2_long_context (declared)" in out
    assert list(tmp_path.iterdir()) == []  # nothing built or written


def test_after_stage1_weak_math_and_code_raise_their_sources_as_the_authors_did(paper):
    _, decisions, proposals = paper
    decision, proposal = decisions[0], proposals[0]
    assert decision.inputs.previous_metrics is None and decision.inputs.next_decay_fraction == 0.0
    assert "open_web_math" not in decision.inputs.mixture and proposal.weights["open_web_math"] == pytest.approx(0.05)
    assert proposal.weights["starcoderdata"] == pytest.approx(0.20)  # from 0.10
    assert proposal.weights["fineweb_edu"] / proposal.weights["dclm"] == pytest.approx(60 / 40)  # web shrank evenly
    assert proposal.weights == pytest.approx(decision.authors_next, abs=1e-6)  # the paper's stage 2


def test_after_stage2_stalled_math_and_code_bring_in_medium_sized_sources(paper):
    _, decisions, proposals = paper
    decision, proposal = decisions[1], proposals[1]
    assert proposal.weights["infimm_webmath"] == pytest.approx(0.08)  # math gained 0.5 points over stage 2
    assert proposal.weights["stack_edu"] == pytest.approx(0.16) and "starcoderdata" not in proposal.weights
    # OpenWebMath, raised again, stops at its epoch cap: below its stage-2 weight
    cap = decision.inputs.constraints.epoch_cap("open_web_math")
    assert proposal.weights["open_web_math"] == pytest.approx(cap, abs=1e-6) and cap < 0.05
    assert any(line.startswith("constraint: open_web_math") and "epoch cap" in line for line in proposal.explanation)
    proposed, authors = shares(decision.cfg, proposal.weights), shares(decision.cfg, decision.authors_next)
    assert proposed == pytest.approx(authors, abs=0.005)  # web 74 / code 16 / math 10, as the authors


def test_before_the_anneal_the_best_math_and_code_are_upsampled(paper):
    _, decisions, proposals = paper
    decision, proposal = decisions[2], proposals[2]
    assert decision.inputs.next_decay_fraction == 1.0
    assert "rule math_below_target: stage4 decays the LR, the rule is for stable stages; no change" in (
        proposal.explanation
    )
    assert proposal.weights["finemath_4plus"] == pytest.approx(decision.inputs.constraints.epoch_cap("finemath_4plus"))
    assert proposal.weights["infiwebmath_3plus"] == pytest.approx(0.09)
    assert "infimm_webmath" not in proposal.weights  # retired for its classifier-filtered subset
    assert proposal.weights["stack_edu"] == pytest.approx(0.24)  # from 0.16
    # knowledge (57.47% after stage 3, Table 3) is below target: synthetic textbooks come in
    assert "cosmopedia_v2" not in decision.inputs.mixture and proposal.weights["cosmopedia_v2"] == pytest.approx(0.04)
    assert proposal.weights["cosmopedia_v2"] == pytest.approx(decision.authors_next["cosmopedia_v2"])
    before, after = shares(decision.cfg, decision.inputs.mixture), shares(decision.cfg, proposal.weights)
    assert after["math"] > before["math"] and after["code"] > before["code"] and after["web"] < before["web"]


def test_every_proposal_holds_the_constraints(paper):
    _, decisions, proposals = paper
    for decision, proposal in zip(decisions, proposals, strict=True):
        assert violations(proposal.weights, decision.inputs.mixture, decision.inputs.constraints) == []


@pytest.mark.parametrize(
    ("metric", "towards", "away"),
    [("category/knowledge", "fineweb_edu", "dclm"), ("hellaswag_cf/acc_norm", "dclm", "fineweb_edu")],
)
def test_a_regression_since_the_previous_stage_moves_weight_within_web(paper, metric, towards, away):
    _, decisions, proposals = paper
    decision = decisions[1]  # after stage 2, with the metric recorded for both stages
    inputs = dataclasses.replace(
        decision.inputs,
        metrics={**decision.inputs.metrics, metric: 0.50},
        previous_metrics={**(decision.inputs.previous_metrics or {}), metric: 0.55},
    )
    moved, unmoved = propose(decision.cfg.rebalance, inputs), proposals[1]
    before = inputs.mixture
    assert moved.weights[towards] > before[towards] + 0.04 and moved.weights[away] < before[away] - 0.04
    assert moved.weights[towards] / moved.weights[away] > unmoved.weights[towards] / unmoved.weights[away]
    web = ("fineweb_edu", "dclm")  # the move stays within web: its share barely changes
    assert sum(moved.weights[k] for k in web) == pytest.approx(sum(unmoved.weights[k] for k in web), abs=0.01)
    assert violations(moved.weights, inputs.mixture, inputs.constraints) == []


def test_the_paper_recorded_as_stage_runs_replays_to_the_same_mixtures(paper):
    script, decisions, proposals = paper
    tracker = NullTracker()
    pipeline_run, stage_runs = script.record(decisions, proposals, tracker)
    recorded = recorded_decisions(tracker, pipeline_run)
    assert [r.run_id for r in recorded] == stage_runs
    assert [r.inputs for r in recorded] == [d.inputs for d in decisions]
    rows = replay(recorded)
    assert all(row["same"] for row in rows)
    authors = tracker.load_dict(stage_runs[0], "paper/next_mixture.json")
    assert authors == {"name": "smollm2_stage2", "weights": decisions[0].authors_next}
    text = script.report(decisions, proposals)
    assert "## After stage3: the mixture for stage4" in text and "| stage4 | math | 14.0 | 14.4 | +0.4 |" in text
