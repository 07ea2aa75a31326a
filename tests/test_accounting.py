"""Token accounting across stages: a source a stage leaves out keeps its place and its count.

Three stages of the tiny config: stage 1 draws from prose, code and math, stage 2 leaves code
out (no task, rule or mixture of stage 2 needs it, so stage 2 does not even open it, as
StarCoderData in stage 3 of the 1.7B recipe), stage 3 brings it back. The stages are the
lineage's nodes, trained by the step runner the train task calls, on the session's built data.
Measured against what the sampler recorded: code resumes in stage 3 at the window it stopped at
in stage 1 (none repeated before its epoch ends), the rebalance after stage 2 weighs code with
its stage-1 tokens under its epoch cap, and `smollm plan` counts every source to the token.
"""

import json
from pathlib import Path

import pytest

from flows.compose import compose_lineage
from flows.plan import make_plan
from smollm import stage
from smollm.data.sampler import SourceWindows
from smollm.data.shards import TokenizedSource
from smollm.lineage import planned
from smollm.rebalance.write import generated_dir
from smollm.runs import rebalance_inputs, rebalance_sources
from smollm.train import load_checkpoint
from tests.test_plan import _tiny

MIXTURES = {
    "acct_all": {"stdlib_prose": 0.5, "stdlib_code": 0.3, "synthetic_math": 0.2},
    "acct_no_code": {"stdlib_prose": 0.6, "synthetic_math": 0.4},
    "acct_back": {"stdlib_prose": 0.3, "stdlib_code": 0.5, "synthetic_math": 0.2},
}
STEPS = (16, 8, 16)


@pytest.fixture(scope="module")
def pipeline(built, tmp_path_factory):
    """The three stages trained; their nodes, summaries and checkpoints."""
    cfg, _, _ = built
    work = tmp_path_factory.mktemp("accounting") / "work"
    for kind in ("tokenizer", "tokens"):  # the session's builds, complete: not rebuilt
        (work / kind).mkdir(parents=True)
        for folder in (Path(cfg.workdir) / kind).iterdir():
            (work / kind / folder.name).symlink_to(folder)
    mixtures = generated_dir(work) / "mixture"
    mixtures.mkdir(parents=True)
    for name, weights in MIXTURES.items():
        (mixtures / f"{name}.yaml").write_text(json.dumps({"name": name, "weights": weights}))
    tokens_per_step = cfg.train.tokens_per_step
    overrides = [
        f"workdir={work}",
        *_tiny(cfg),
        "rebalance=keep",
        "eval.tasks=[{name:math_add1_cf,kind:math_mcq,category:math,formulation:cf,num_digits:1}]",
        *(f"pipeline.stages.{i}.mixture={name}" for i, name in enumerate(MIXTURES)),
        *(f"pipeline.stages.{i}.train_tokens={n * tokens_per_step}" for i, n in enumerate(STEPS)),
    ]
    nodes, summaries, previous = compose_lineage(overrides).walk(), [], None
    for node in nodes:
        root = stage.workdir(node.cfg)
        tokenizer = planned(node.steps.tokenizer, root)
        sources = {name: planned(step, root) for name, step in node.steps.sources.items()}
        outcome = stage.train(node.cfg, node.stage, sources, tokenizer, previous)
        summaries.append(outcome.summary)
        previous = outcome.step
    return overrides, nodes, summaries


def test_a_stage_that_leaves_a_source_out_does_not_open_it(pipeline):
    _, nodes, _ = pipeline
    assert [sorted(n.steps.sources) for n in nodes] == [
        ["stdlib_code", "stdlib_prose", "synthetic_math"],
        ["stdlib_prose", "synthetic_math"],
        ["stdlib_code", "stdlib_prose", "synthetic_math"],
    ]


def test_the_source_resumes_where_it_stopped(pipeline, built):
    _, nodes, summaries = pipeline
    s1, s2, s3 = summaries
    code = "stdlib_code"
    assert s2["tokens_per_source"][code] == s1["tokens_per_source"][code] > 0  # carried through stage 2
    assert s3["tokens_per_source"][code] == s1["tokens_per_source"][code] + s3["stage_tokens_per_source"][code]
    # the windows stage 3 drew follow stage 1's in the source's epoch order: none repeated
    states = [load_checkpoint(n.steps.train.output_dir(stage.workdir(n.cfg)))[1] for n in nodes]
    windows = [s["sampler"]["total_windows"][code] for s in states]
    assert windows[1] == windows[0] and windows[2] > windows[1]
    cfg, _, sources = built
    order = SourceWindows(TokenizedSource.open(sources[code].output), cfg.train.seq_len, cfg.train.seed)
    assert windows[2] <= order.num_windows  # within the first epoch ...
    first = order.locate(0, windows[0])
    then = order.locate(windows[0], windows[2] - windows[0])
    drawn = {(int(a), int(b)) for a, b in zip(*first, strict=True)}
    again = {(int(a), int(b)) for a, b in zip(*then, strict=True)}
    assert len(drawn) == windows[0] and not drawn & again  # ... so no window twice


def test_the_rebalance_weighs_a_source_left_out_with_its_tokens_so_far(pipeline):
    _, nodes, summaries = pipeline
    node, summary = nodes[1], summaries[1]
    root = stage.workdir(node.cfg)
    weighed = {name: planned(step, root) for name, step in node.steps.sources.items()}
    extra = rebalance_sources(node.cfg, summary["tokens_per_source"], set()) - set(weighed)
    assert extra == {"stdlib_code"}
    for name in extra:  # the rebalance task reuses its complete build from stage 1
        weighed[name] = stage.build_source(node.cfg, name, planned(node.steps.tokenizer, root))
        assert not weighed[name].computed
    inputs = rebalance_inputs(node.cfg, 1, summary["tokens_per_source"], weighed, {}, None, [])
    code = inputs.constraints.sources["stdlib_code"]
    assert code.consumed_tokens == summaries[0]["tokens_per_source"]["stdlib_code"]
    assert (
        code.available_tokens == json.loads((weighed["stdlib_code"].output / "manifest.json").read_text())["num_tokens"]
    )


def test_the_plan_counts_every_source_to_the_token_as_the_sampler_drew(pipeline):
    overrides, _, summaries = pipeline
    plan = make_plan(overrides)
    for planned_stage, summary in zip(plan.stages, summaries, strict=True):
        for use in planned_stage.sources:
            assert use.tokens == summary["stage_tokens_per_source"][use.name], (planned_stage.name, use.name)
            assert use.cumulative_tokens == summary["tokens_per_source"][use.name], (planned_stage.name, use.name)
            assert use.epochs == pytest.approx(summary["epochs_per_source"][use.name])
