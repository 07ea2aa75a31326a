"""The SmolLM2 recipe as shipped in `conf/`, checked against ../shared/RECIPE.md's numbers."""

from __future__ import annotations

import dataclasses

import pytest

from flows.compose import compose, compose_lineage, compose_stage
from smollm.model import count_parameters, parameter_count
from smollm.schedule import stage_schedule

T, B = 10**12, 10**9
# RECIPE.md's stage table: (tokens, web, code, math, other, FineWeb-Edu share of web)
STAGES = {
    "stage1": (6 * T, 0.90, 0.10, 0.00, 0.00, 0.6),
    "stage2": (2 * T, 0.75, 0.20, 0.05, 0.00, 0.6),
    "stage3": (2 * T, 0.74, 0.16, 0.10, 0.00, 0.4),
    "stage4": (1 * T, 0.58, 0.24, 0.14, 0.04, 0.4),
}


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("recipe")
    return {
        cfg.pipeline.stages[i].name: cfg
        for i, cfg in enumerate(n.cfg for n in compose_lineage([f"workdir={workdir}", "pipeline=smollm2_1.7b"]).walk())
    }


def domain_shares(cfg) -> dict[str, float]:
    shares: dict[str, float] = {}
    for name, weight in cfg.mixture.weights.items():
        domain = cfg.data.sources[name].domain
        shares[domain] = shares.get(domain, 0.0) + weight
    return shares


@pytest.mark.parametrize(
    ("model", "parameters"),
    [("smollm2_135m", 134_515_008), ("smollm2_360m", 361_821_120), ("smollm2_1.7b", 1_711_376_384)],
)
def test_model_shapes_have_the_exact_parameter_counts(model, parameters, tmp_path):
    cfg = compose([f"workdir={tmp_path}", f"model={model}", "tokenizer=smollm2", "train.seq_len=256"])
    assert (cfg.model.vocab_size, cfg.model.max_seq_len, cfg.model.rope_theta) == (49152, 2048, 10000.0)
    assert cfg.model.tie_embeddings and count_parameters(cfg.model) == parameters
    assert parameter_count(cfg.model) == parameters  # the formula `smollm plan` uses
    untied = dataclasses.replace(cfg.model, tie_embeddings=False)
    assert parameter_count(untied) == count_parameters(untied) == parameters + 49152 * cfg.model.hidden_size


def test_stage_budgets_sum_to_11t(stages):
    budgets = [stages[name].pipeline.stage(name).train_tokens for name in STAGES]
    assert budgets == [s[0] for s in STAGES.values()] and sum(budgets) == 11 * T


@pytest.mark.parametrize("name", list(STAGES))
def test_stage_mixtures_have_the_tables_shares(stages, name):
    _, web, code, math, other, fineweb_share = STAGES[name]
    cfg = stages[name]
    assert cfg.mixture.name == f"smollm2_{name}"
    assert sum(cfg.mixture.weights.values()) == pytest.approx(1.0, abs=1e-9)
    shares = domain_shares(cfg)
    expected = {"web": web, "code": code, "math": math, "other": other}
    assert {k: round(shares.get(k, 0.0), 6) for k in expected} == expected
    weights = cfg.mixture.weights
    assert weights["fineweb_edu"] / (weights["fineweb_edu"] + weights["dclm"]) == pytest.approx(fineweb_share)
    code_source = "starcoderdata" if name in ("stage1", "stage2") else "stack_edu"
    assert weights[code_source] == pytest.approx(code)


def test_stage_datasets_follow_the_table(stages):
    assert "open_web_math" in stages["stage2"].mixture.weights
    assert {"infimm_webmath", "open_web_math"} <= set(stages["stage3"].mixture.weights)
    stage4 = stages["stage4"].mixture.weights
    assert {"finemath_4plus", "infiwebmath_3plus", "open_web_math", "cosmopedia_v2"} <= set(stage4)
    assert stage4["open_web_math"] == pytest.approx(0.0008 + 0.0002)  # OWM + AugGSM8K's share


def test_optimisation_and_lr_schedule(stages):
    train = stages["stage1"].train
    assert (train.optimizer.lr, train.schedule.warmup_steps, train.schedule.min_lr) == (5e-4, 2000, 0.0)
    assert train.optimizer.betas == (0.9, 0.95) and train.optimizer.weight_decay == 0.01
    assert train.optimizer.grad_clip == 1.0 and train.precision == "bf16"
    assert train.tokens_per_step == 256 * 4 * 2048 == 2_097_152
    decays = {name: stages[name].pipeline.stage(name).decay_fraction for name in STAGES}
    assert decays == {"stage1": 0.0, "stage2": 0.0, "stage3": 0.0, "stage4": 1.0}
    # stage 4 decays to 0 over the last ~10% of all training steps
    steps = {name: stages[name].pipeline.stage(name).train_tokens // train.tokens_per_step for name in STAGES}
    assert steps["stage4"] / sum(steps.values()) == pytest.approx(0.10, abs=0.01)
    start = sum(steps.values()) - steps["stage4"]
    wsd = stage_schedule(
        peak_lr=5e-4, warmup_steps=2000, min_lr=0.0, start_step=start, num_steps=steps["stage4"], decay_fraction=1.0
    )
    assert wsd.lr(1999) == 5e-4 and wsd.lr(start - 1) == 5e-4 and wsd.lr(start + steps["stage4"] - 1) == 0.0
    assert stage_schedule(
        peak_lr=5e-4, warmup_steps=2000, min_lr=0.0, start_step=0, num_steps=steps["stage1"], decay_fraction=0.0
    ).lr(0) == pytest.approx(5e-4 / 2000)


def test_context_extension(stages):
    cfg = stages["long_context"]
    stage = cfg.pipeline.stage("long_context")
    assert (cfg.model.rope_theta, cfg.model.max_seq_len, cfg.train.seq_len) == (130000.0, 8192, 8192)
    assert cfg.train.tokens_per_step == 2_097_152
    assert stage.init_from == "stage4" and stage.init_at_tokens == 1 * T - 75 * B
    assert stage.train_tokens == 75 * B and stage.decay_fraction == 1.0
    # it carries stage 4's decay on: its peak is stage 4's LR at the branch point
    assert cfg.train.optimizer.lr == pytest.approx(5e-4 * (1 - stage.init_at_tokens / (1 * T)))
    weights, stage4 = cfg.mixture.weights, stages["stage4"].mixture.weights
    assert sum(weights[s] for s in ("dclm_long", "fineweb_edu_long", "books_long")) == pytest.approx(0.4)
    assert (weights["dclm_long"], weights["fineweb_edu_long"], weights["books_long"]) == (0.1, 0.1, 0.2)
    for source, weight in stage4.items():
        assert weights[source] == pytest.approx(0.6 * weight)
    assert sum(weights.values()) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("pipeline", "model", "tokens"), [("smollm2_135m", "smollm2_135m", 2 * T), ("smollm2_360m", "smollm2_360m", 4 * T)]
)
def test_small_model_recipes(tmp_path, pipeline, model, tokens):
    (cfg,) = (n.cfg for n in compose_lineage([f"workdir={tmp_path}", f"pipeline={pipeline}"]).walk())
    stage = cfg.pipeline.stages[0]
    assert cfg.model.name == model and cfg.train.optimizer.lr == 3e-3
    assert (stage.train_tokens, stage.decay_fraction) == (tokens, 0.2)
    stage4_sources = {"fineweb_edu", "dclm", "stack_edu", "cosmopedia_v2", "open_web_math"}
    assert stage4_sources <= set(cfg.mixture.weights)  # the final stage's datasets from the start


def _planned_identities(specs, base_cfg=None, base_at_tokens=None):
    """Each member's training identity, computed from the configs alone (nothing built); an
    annealing member starts from `base_cfg`'s first stage at `base_at_tokens`."""
    from smollm.stage import source_step, tokenizer_step, training_step, workdir
    from smollm.steps import StepResult

    def planned(step):
        return StepResult(step.output_dir(workdir(specs[0].cfg)), step.identity, False)

    def data(cfg):
        tokenizer = planned(tokenizer_step(cfg))
        return tokenizer, {n: planned(source_step(cfg, n, tokenizer)) for n in cfg.data.sources}

    base = None
    if base_cfg is not None:
        tokenizer, sources = data(base_cfg)
        base = planned(training_step(base_cfg, base_cfg.pipeline.stages[0], sources, tokenizer, None, base_at_tokens))
    identities = []
    for spec in specs:
        tokenizer, sources = data(spec.cfg)
        identities.append(training_step(spec.cfg, spec.stage, sources, tokenizer, base).identity)
    return identities


def test_web_ablation_protocol(tmp_path):
    from flows.compose import split_multirun
    from flows.sweep import member_specs

    common, members = split_multirun([f"workdir={tmp_path}", "pipeline=ablation_web"], multirun=True, kind="ablate")
    specs = member_specs("ablate", common, members)
    expected = {
        "ablate-control-seed0": {"fineweb_edu": 1.0},
        "ablate-ablation_web_dclm-seed0": {"dclm": 1.0},
        "ablate-ablation_web_fwedu60_dclm40-seed0": {"fineweb_edu": 0.6, "dclm": 0.4},
        "ablate-ablation_web_fwedu40_dclm60-seed0": {"fineweb_edu": 0.4, "dclm": 0.6},
    }
    assert {s.member.name: s.cfg.mixture.weights for s in specs} == expected
    # from scratch, the same budget, schedule and seed for every candidate
    assert {(s.stage.train_tokens, s.stage.decay_fraction, s.cfg.train.seed) for s in specs} == {(350 * B, 0.1, 0)}
    identities = _planned_identities(specs)
    assert len(set(identities)) == len(specs)


def test_annealing_ablation_protocol(tmp_path):
    from flows.compose import split_multirun
    from flows.sweep import member_specs

    common, members = split_multirun([f"workdir={tmp_path}", "pipeline=annealing"], multirun=True, kind="anneal")
    specs = member_specs("anneal", common, members)
    assert specs[0].member.is_control and len(specs) == 10
    previous = compose([f"workdir={tmp_path}", "pipeline=annealing", "mixture=smollm2_stage1"]).mixture.weights
    for spec in specs:
        cfg = spec.cfg
        assert cfg.anneal.base == "stage1" and cfg.anneal.base_at_tokens == 3 * T
        assert cfg.pipeline.stage("stage1").decay_fraction == 0.0  # a stable checkpoint
        assert spec.stage.train_tokens == 100 * B and spec.stage.decay_fraction == 1.0
        assert cfg.train.schedule.min_lr == 0.0
        weights = cfg.mixture.weights
        assert sum(weights.values()) == pytest.approx(1.0)
        if spec.member.is_control:
            assert weights == pytest.approx(previous)
            continue
        source = spec.member.candidate
        assert weights[source] == pytest.approx(0.6 + 0.4 * previous.get(source, 0.0))
        for name, weight in previous.items():
            if name != source:
                assert weights[name] == pytest.approx(0.4 * weight)
    # every member branches from stage 1's prefix at 3T (one step, the recipe run's own), and differs after
    base_cfg = compose_stage(common, compose(common), 0, "smollm2_stage1")
    assert base_cfg.pipeline.name == "smollm2_1.7b" and base_cfg.mixture.weights == previous
    identities = _planned_identities(specs, base_cfg, base_at_tokens=3 * T)
    assert len(set(identities)) == len(specs)
