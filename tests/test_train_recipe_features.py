"""Trainer features the SmolLM2 recipe needs, on the tiny model: data-parallel steps on one
process, bf16 autocast, a stage's prefix (a branch point) and a branch that changes RoPE θ and
the context length."""

import dataclasses
import json

import pytest
import torch

from smollm import stage
from smollm.schedule import stage_schedule
from smollm.train import StageRun, Trainer, load_checkpoint


def _run(cfg, sources, tokenizer, **changes) -> StageRun:
    fields = {
        "model": cfg.model,
        "train": cfg.train,
        "stage": dataclasses.replace(cfg.pipeline.stages[0], train_tokens=8 * cfg.train.tokens_per_step),
        "mixture": cfg.mixture,
        "sources": {n: r.output for n, r in sources.items()},
        "tokenizer_dir": tokenizer.output,
    }
    return StageRun(**{**fields, **changes})


def _losses(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "losses.jsonl").read_text().splitlines()]


def test_data_parallel_replicas_run_as_accumulation_on_one_process(built, tmp_path):
    cfg, tokenizer, sources = built
    accumulated = dataclasses.replace(cfg.train, micro_batch_size=4, grad_accum_steps=2, data_parallel=1)
    replicated = dataclasses.replace(cfg.train, micro_batch_size=4, grad_accum_steps=1, data_parallel=2)
    assert accumulated.tokens_per_step == replicated.tokens_per_step == cfg.train.seq_len * 8
    stage_cfg = dataclasses.replace(cfg.pipeline.stages[0], train_tokens=6 * accumulated.tokens_per_step)
    for name, train in (("accumulated", accumulated), ("replicated", replicated)):
        (tmp_path / name).mkdir()
        Trainer(_run(cfg, sources, tokenizer, train=train, stage=stage_cfg)).run_to_end(tmp_path / name)
    assert _losses(tmp_path / "accumulated") == _losses(tmp_path / "replicated")


def test_bf16_autocast_trains(built, tmp_path):
    cfg, tokenizer, sources = built
    train = dataclasses.replace(cfg.train, precision="bf16")
    summary = Trainer(_run(cfg, sources, tokenizer, train=train)).run_to_end(tmp_path)
    fp32 = Trainer(_run(cfg, sources, tokenizer)).run_to_end(tmp_path)
    assert summary["skipped_steps"] == 0 and summary["last_loss"] < summary["first_loss"]
    assert summary["last_loss"] != fp32["last_loss"]  # autocast really changed the arithmetic
    assert summary["last_loss"] == pytest.approx(fp32["last_loss"], rel=0.05)


def test_a_prefix_is_the_start_of_the_full_stage_on_the_full_schedule(built, tmp_path):
    cfg, tokenizer, sources = built
    decaying = dataclasses.replace(
        cfg.pipeline.stages[0], train_tokens=12 * cfg.train.tokens_per_step, decay_fraction=1.0
    )
    stop = 8 * cfg.train.tokens_per_step  # past the 5 warmup steps
    for name, at in (("full", None), ("prefix", stop)):
        (tmp_path / name).mkdir()
        Trainer(_run(cfg, sources, tokenizer, stage=decaying, stop_at_tokens=at)).run_to_end(tmp_path / name)
    full, prefix = _losses(tmp_path / "full"), _losses(tmp_path / "prefix")
    assert len(prefix) == 8 and prefix == full[:8]  # same batches, same LR: bit-identical
    schedule = stage_schedule(
        peak_lr=cfg.train.optimizer.lr,
        warmup_steps=cfg.train.schedule.warmup_steps,
        min_lr=0.0,
        start_step=0,
        num_steps=12,
        decay_fraction=1.0,
    )
    assert prefix[-1]["lr"] == schedule.lr(7) < cfg.train.optimizer.lr  # still decaying, not at 0
    _, state = load_checkpoint(tmp_path / "prefix")
    assert state["tokens_seen"] == stop


def test_continuing_from_a_prefix_is_bit_identical_to_training_through_it(built, tmp_path):
    cfg, tokenizer, sources = built
    decaying = dataclasses.replace(
        cfg.pipeline.stages[0], train_tokens=12 * cfg.train.tokens_per_step, decay_fraction=1.0
    )
    (tmp_path / "prefix").mkdir()
    Trainer(_run(cfg, sources, tokenizer, stage=decaying, stop_at_tokens=7 * cfg.train.tokens_per_step)).run_to_end(
        tmp_path / "prefix"
    )
    for name, resume in (("through", None), ("continued", tmp_path / "prefix")):
        (tmp_path / name).mkdir()
        Trainer(_run(cfg, sources, tokenizer, stage=decaying, resume_from=resume)).run_to_end(tmp_path / name)
    assert _losses(tmp_path / "continued") == _losses(tmp_path / "through")
    through, _ = load_checkpoint(tmp_path / "through")
    continued, state = load_checkpoint(tmp_path / "continued")
    for (name, a), (_, b) in zip(through.state_dict().items(), continued.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    summary = json.loads((tmp_path / "continued" / "summary.json").read_text())
    assert summary["resumed_from"] == str(tmp_path / "prefix") and state["step"] == 12


def test_a_branch_may_change_rope_and_context_length_but_not_shapes(built, tmp_path):
    cfg, tokenizer, sources = built
    (tmp_path / "base").mkdir()
    Trainer(_run(cfg, sources, tokenizer)).run_to_end(tmp_path / "base")
    longer = dataclasses.replace(cfg.model, rope_theta=130000.0, max_seq_len=2 * cfg.model.max_seq_len)
    train = dataclasses.replace(cfg.train, seq_len=2 * cfg.train.seq_len, micro_batch_size=4)
    branch = Trainer(_run(cfg, sources, tokenizer, model=longer, train=train, init_checkpoint=tmp_path / "base"))
    base, _ = load_checkpoint(tmp_path / "base")
    for (name, a), (_, b) in zip(base.state_dict().items(), branch.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert branch.model.config.rope_parameters["rope_theta"] == 130000.0
    assert branch.model.config.max_position_embeddings == 2 * cfg.model.max_seq_len
    (tmp_path / "branch").mkdir()
    summary = branch.run_to_end(tmp_path / "branch")
    assert summary["start_tokens"] == 8 * cfg.train.tokens_per_step and summary["skipped_steps"] == 0

    wider = dataclasses.replace(cfg.model, hidden_size=2 * cfg.model.hidden_size)
    with pytest.raises(ValueError, match=r"^model: does not fit the checkpoint .*size mismatch"):
        Trainer(_run(cfg, sources, tokenizer, model=wider, init_checkpoint=tmp_path / "base"))


def test_a_prefix_has_its_own_identity_and_name(built):
    cfg, tokenizer, sources = built
    first = cfg.pipeline.stages[0]
    full = stage.training_step(cfg, first, sources, tokenizer, None)
    prefix = stage.training_step(cfg, first, sources, tokenizer, None, stop_at_tokens=102400)
    assert prefix.identity != full.identity
    assert prefix.name == f"{full.name}@102.4K"
