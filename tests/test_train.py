"""Training: the loss drops, checkpoints round-trip, a stage continues from the previous one."""

import dataclasses

import torch

from smollm import stage
from smollm.train import load_checkpoint


def test_stage_trains_checkpoints_and_the_next_stage_continues(built):
    cfg, tokenizer, sources = built
    first_stage, second_stage = cfg.pipeline.stages[0], cfg.pipeline.stages[2]
    checkpointing = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, checkpoint_every_steps=50))
    first = stage.train(checkpointing, first_stage, sources, tokenizer, None)
    s1 = first.summary
    assert (
        first.step.computed
        and first.step.identity == stage.training_step(cfg, first_stage, sources, tokenizer, None).identity
    )
    assert not list(first.step.output.parent.glob(".resume-*"))  # superseded by the committed checkpoint
    steps = first_stage.train_tokens // cfg.train.tokens_per_step
    assert (s1["start_step"], s1["end_step"], s1["tokens_seen"]) == (0, steps, steps * cfg.train.tokens_per_step)
    assert s1["last_loss"] < s1["first_loss"] - 0.5

    model, state = load_checkpoint(first.step.output)
    assert state["step"] == steps and state["sampler"]["total_windows"]
    assert len(state["optimizer"]["state"]) == len(list(model.parameters()))

    mixture = dataclasses.replace(cfg.mixture, weights={"stdlib_prose": 0.2, "stdlib_code": 0.2, "synthetic_math": 0.6})
    second = stage.train(dataclasses.replace(cfg, mixture=mixture), second_stage, sources, tokenizer, first.step)
    s2 = second.summary
    assert s2["start_step"] == steps and s2["start_tokens"] == s1["tokens_seen"]
    assert s2["optimizer_state_loaded"]
    assert s2["final_lr"] == 0.0  # stage 3 of the demo decays to 0
    shares = s2["stage_tokens_per_source"]
    assert shares["synthetic_math"] / sum(shares.values()) == 0.6
    for name in sources:  # totals continue from stage 1
        assert s2["tokens_per_source"][name] == s1["tokens_per_source"][name] + shares.get(name, 0)


def test_checkpoint_round_trip_preserves_weights_and_optimizer(built):
    cfg, tokenizer, sources = built
    result = stage.train(cfg, cfg.pipeline.stages[0], sources, tokenizer, None)
    model, state = load_checkpoint(result.step.output)
    again, state2 = load_checkpoint(result.step.output)
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    from transformers import AutoModelForCausalLM

    auto = AutoModelForCausalLM.from_pretrained(result.step.output / "model")
    ids = torch.tensor([[1, 2, 3, 4]])
    assert torch.allclose(auto(ids).logits, model(ids).logits)
    exp_avg = state["optimizer"]["state"][0]["exp_avg"]
    assert torch.equal(exp_avg, state2["optimizer"]["state"][0]["exp_avg"]) and exp_avg.abs().sum() > 0


def test_missing_previous_checkpoint_is_a_clear_error(built, tmp_path):
    import pytest

    from smollm.steps import StepResult

    cfg, tokenizer, sources = built
    ghost = StepResult(tmp_path / "nope", "0" * 64, False)
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        stage.train(cfg, cfg.pipeline.stages[1], sources, tokenizer, ghost)


def test_interrupted_stage_resumes_from_its_last_checkpoint_with_identical_losses(built, tmp_path, monkeypatch):
    import json

    import pytest

    from smollm.train import StageRun, Trainer

    cfg, tokenizer, sources = built
    train = dataclasses.replace(cfg.train, checkpoint_every_steps=4)
    stage = dataclasses.replace(cfg.pipeline.stages[0], train_tokens=14 * train.tokens_per_step)

    def stage_run(resume_dir):
        return StageRun(
            model=cfg.model,
            train=train,
            stage=stage,
            mixture=cfg.mixture,
            sources={n: r.output for n, r in sources.items()},
            tokenizer_dir=tokenizer.output,
            resume_dir=resume_dir,
        )

    def losses(folder):
        return [json.loads(line)["loss"] for line in (folder / "losses.jsonl").read_text().splitlines()]

    for name in ("reference", "crashed", "resumed"):
        (tmp_path / name).mkdir()
    Trainer(stage_run(None)).run_to_end(tmp_path / "reference")

    original = Trainer.train_step

    def killed_at_step_10(self):
        if self.step == 10:
            raise KeyboardInterrupt("killed")
        return original(self)

    monkeypatch.setattr(Trainer, "train_step", killed_at_step_10)
    with pytest.raises(KeyboardInterrupt):
        Trainer(stage_run(tmp_path / "resume")).run_to_end(tmp_path / "crashed")
    monkeypatch.undo()

    resumed = Trainer(stage_run(tmp_path / "resume"))
    assert resumed.resumed_from is not None and resumed.resumed_from.name == "step-8"
    assert resumed.step == 8
    resumed.run_to_end(tmp_path / "resumed")
    assert losses(tmp_path / "resumed") == losses(tmp_path / "reference")  # bit-identical
    assert len(losses(tmp_path / "resumed")) == 14
