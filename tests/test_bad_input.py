"""Bad input: malformed configs and CLI overrides fail before any compute, with one line that
names the field and the value, no traceback, and nothing written or changed on disk.

Each case runs the real `smollm run` entry point on the tiny config plus one bad override; the
pipeline flow is replaced by a tripwire, so a case that got past validation fails loudly instead
of training.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import tiny_overrides

# (overrides, substrings the one-line error must contain: the field, then the value)
CASES = [
    # mixtures
    (["mixture.weights.nope=0.1"], ["mixture.weights", "1.1"]),
    (["mixture.weights.stdlib_code=-0.1"], ["mixture.weights.stdlib_code", "-0.1"]),
    (["mixture.weights.stdlib_code=abc"], ["mixture.weights.stdlib_code", "'abc'"]),
    (["mixture.weights.stdlib_code=0.9"], ["mixture.weights: must sum to 1", "1.6"]),
    (["mixture.weights=null"], ["mixture.weights", "{}"]),
    (["mixture=nope"], ["mixture: no config named 'nope'"]),
    (["pipeline.stages.0.mixture=nope"], ["mixture: no config named 'nope'"]),
    # budgets and schedule
    (["pipeline.stages.0.train_tokens=0"], ["pipeline.stages[0].train_tokens", "0"]),
    (["pipeline.stages.0.train_tokens=-5"], ["pipeline.stages[0].train_tokens", "-5"]),
    (["pipeline.stages.1.train_tokens=100"], ["pipeline.stages.stage2.train_tokens", "100"]),
    (["train.schedule.warmup_steps=100000"], ["train.schedule.warmup_steps", "100000"]),
    (["pipeline.stages.1.decay_fraction=1.5"], ["pipeline.stages[1].decay_fraction", "1.5"]),
    (["pipeline.stages.1.init_from=stage9"], ["pipeline.stages[1].init_from", "'stage9'"]),
    # evaluation
    (["eval.tasks.0.kind=nope"], ["eval.tasks[0].kind", "'nope'"]),
    (
        ["eval.tasks=[{name: t, kind: lighteval, category: knowledge, task: nope_task}]"],
        ["eval.tasks[0].task", "'nope_task'"],
    ),
    (["eval.tasks.0.num_fewshot=5"], ["eval.tasks[0].num_fewshot: a 'math_mcq' task has no few-shot split", "5"]),
    (["eval.batch_size=0"], ["eval.batch_size", "0"]),
    # model and tokenizer
    (["model=nope"], ["model: no config named 'nope'", "debug"]),
    (["model.num_heads=5"], ["model.num_heads", "5"]),
    (["model.num_kv_heads=3"], ["model.num_kv_heads", "3"]),
    (["model.vocab_size=100"], ["model.vocab_size", "100"]),
    (["tokenizer.vocab_size=-3"], ["tokenizer.vocab_size", "-3"]),
    (["train.seq_len=100000"], ["train.seq_len", "100000"]),
    # training
    (["train.optimizer.lr=-1"], ["train.optimizer.lr", "-1"]),
    (["train.optimizer.betas=[1.5,0.9]"], ["train.optimizer.betas", "1.5"]),
    (["train.grad_accum_steps=0"], ["train.grad_accum_steps", "0"]),
    (["train.precision=fp8"], ["train.precision", "'fp8'"]),
    # wrong types, unknown keys, syntax
    (["train.seed=abc"], ["train.seed", "'abc'"]),
    (["train.micro_batch_size=1.5"], ["train.micro_batch_size", "1.5"]),
    (["train.progress=maybe"], ["train.progress", "'maybe'"]),
    (["train.nope=1"], ["train.nope: unknown field"]),
    (["model.nope=1"], ["model.nope: unknown field"]),
    (["train.seed=["], ["override 'train.seed=['"]),
    (["train.seed=${oc.env:SMOLLM_NO_SUCH_VARIABLE}"], ["train.seed", "SMOLLM_NO_SUCH_VARIABLE"]),
    (["pipeline=nope"], ["pipeline: no config named 'nope'"]),
    # data, rebalancing, sweeps
    (["data.sources.stdlib_code.num_docs=-1"], ["data.sources.stdlib_code.num_docs", "-1"]),
    (["rebalance.max_change=-0.1"], ["rebalance.max_change", "-0.1"]),
    (["rebalance.policy=nope"], ["rebalance.policy", "'nope'"]),
    (["rebalance.rules.0.raise_sources=[nope]"], ["rebalance.rules", "nope"]),
    (["sweep.max_concurrency=0"], ["sweep.max_concurrency", "0"]),
    (["anneal.share=1.5"], ["anneal.share", "1.5"]),
    (["anneal.candidate=nope"], ["anneal.candidate", "'nope'"]),
    # tracking
    (["tracking.heartbeat_seconds=0"], ["tracking.heartbeat_seconds", "0"]),
    (["tracking.stale_after_seconds=30"], ["tracking.stale_after_seconds", "30"]),
    # a base checkpoint that cannot exist: a point past the end of the stage it branches from
    (["pipeline.stages.1.init_at_tokens=999999999"], ["pipeline.stages[1].init_at_tokens", "999999999"]),
]


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*")}


@pytest.fixture
def tripwire(monkeypatch):
    import flows.pipeline

    def reached_compute(**_):
        raise AssertionError("bad input reached the pipeline flow")

    monkeypatch.setattr(flows.pipeline, "pipeline_flow", reached_compute)


def _run(argv: list[str], capsys) -> tuple[int, str]:
    from flows.cli import main

    code = main(["run", *argv])
    captured = capsys.readouterr()
    return code, captured.err


@pytest.mark.parametrize(("bad", "expected"), CASES, ids=[" ".join(c[0])[:60] for c in CASES])
def test_bad_input_fails_before_compute_naming_field_and_value(bad, expected, tmp_path, tripwire, capsys):
    work = tmp_path / "work"
    before = _snapshot(tmp_path)
    code, err = _run([*tiny_overrides(work), *bad], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    position = 0
    for part in expected:  # the field first, then the value
        found = lines[0].find(part, position)
        assert found >= 0, f"{part!r} not in {lines[0]!r}"
        position = found
    assert _snapshot(tmp_path) == before, "bad input wrote or changed files"


def test_there_are_at_least_30_cases():
    assert len(CASES) >= 30


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            "name: demo-stage2-aaaa\nweights: {stdlib_code: lots}\n",
            "mixture.weights.stdlib_code: expected float, got 'lots'",
        ),
        ("name: demo-stage2-aaaa\nweights: {stdlib_code: 0.7, stdlib_prose: 0.7}\n", "mixture.weights: must sum to 1"),
        ("name: demo-stage2-aaaa\nweights: [stdlib_code]\n", "mixture.weights"),
        (
            "name: demo-stage2-aaaa\nweights: {stdlib_code: 1.0\n",
            "mixture/demo-stage2-aaaa.yaml, line 3: not valid YAML",
        ),
        ("name: demo-stage2-aaaa\nweights: {}\n", "mixture.weights: must name at least one source"),
    ],
    ids=["not-a-number", "sum", "a-list", "broken-yaml", "empty"],
)
def test_a_generated_mixture_edited_into_nonsense_is_refused_and_left_alone(
    content, expected, tmp_path, tripwire, capsys
):
    work = tmp_path / "work"
    edited = work / "generated_conf" / "mixture" / "demo-stage2-aaaa.yaml"
    edited.parent.mkdir(parents=True)
    edited.write_text(content)
    os.utime(edited, ns=(1, 1))
    before = _snapshot(tmp_path)
    code, err = _run([*tiny_overrides(work), "mixture=demo-stage2-aaaa"], capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], err
    assert _snapshot(tmp_path) == before and edited.read_text() == content
