"""`pipeline=smollm2_1.7b_auto` with `rebalance=smollm2_rules`: the 1.7B recipe whose stages 2-4
take the mixture the paper's principles propose: it composes and plans offline."""

from __future__ import annotations

import dataclasses

from flows.cli import main
from flows.compose import compose, compose_lineage
from smollm.schema import to_dict

AUTO, RECIPE = "pipeline=smollm2_1.7b_auto", "pipeline=smollm2_1.7b"


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
