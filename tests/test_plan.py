"""`smollm plan`: the DAG, tokens, epochs, FLOPs and GPU-hours of a pipeline, computing nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.cli import main
from flows.plan import make_plan, preflight
from smollm.schema import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def smollm(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    return done, time.perf_counter() - started


def test_the_recipe_plans_offline_in_under_10_seconds(tmp_path):
    done, seconds = smollm("plan", f"workdir={tmp_path}", "pipeline=smollm2_1.7b")
    assert done.returncode == 0, done.stderr
    assert seconds < 10, seconds
    out = done.stdout
    for expected in (
        "stage 1 stage1: 6T tokens",
        "stage 4 stage4",
        "stage 5 long_context: 75B tokens",
        "from stage4 at 925B",
        "fineweb_edu",
        "open_web_math",
        "FLOPs",
        "GPU-hours at 40% MFU",
        "smollm2_1.7b-stage4@925B",
    ):
        assert expected in out, expected
    assert "warning: data.sources.open_web_math" in out  # 8+ epochs: past 4, within its cap
    assert list(tmp_path.iterdir()) == []  # nothing was built or written


def test_json_plan_parses_and_carries_the_numbers(tmp_path):
    done, _ = smollm("plan", "--json", f"workdir={tmp_path}", "pipeline=smollm2_1.7b")
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    stages = {s["name"]: s for s in plan["stages"]}
    assert list(stages) == ["stage1", "stage2", "stage3", "stage4", "long_context"]
    stage1 = stages["stage1"]
    n, tokens = stage1["parameters"], stage1["train_tokens"]
    assert n == 1_711_376_384 and tokens == 2_861_022 * 2_097_152  # whole steps of ~2M tokens
    assert stage1["flops"] == pytest.approx((6 * n + 12 * 24 * 2048 * 2048) * tokens)
    assert stage1["gpu_hours"] == pytest.approx(stage1["flops"] / (989e12 * 0.4) / 3600)
    assert plan["flops"] == pytest.approx(sum(s["flops"] for s in plan["stages"]))
    assert 1e23 < plan["flops"] < 1.5e23  # the paper: ~1e23 FLOPs for SmolLM2-1.7B
    owm = {u["name"]: u for u in stages["stage2"]["sources"]}["open_web_math"]
    # to the token as the sampler draws them: 5% quantised to 2^-20 of the stage's samples
    assert owm["tokens"] == pytest.approx(0.05 * stages["stage2"]["train_tokens"], rel=1e-5)
    assert owm["tokens"] % 2048 == 0  # whole windows of seq_len tokens
    assert owm["epochs"] == pytest.approx(owm["cumulative_tokens"] / 12e9) and owm["status"] == "warn"
    fineweb = {u["name"]: u for u in stages["stage2"]["sources"]}["fineweb_edu"]
    first = {u["name"]: u for u in stage1["sources"]}["fineweb_edu"]
    assert fineweb["cumulative_tokens"] == first["tokens"] + fineweb["tokens"]
    assert first["tokens"] == pytest.approx(0.54 * stage1["train_tokens"], rel=1e-5)
    trains = [s["name"] for s in stages["stage4"]["steps"] if s["kind"] == "train"]
    assert trains == ["smollm2_1.7b-stage4@925B", "smollm2_1.7b-stage4"]  # stage 4 keeps the branch point
    # the DAG's edges: the branch reads the prefix, which reads stage 3's checkpoint
    steps = {s["name"]: s for stage in plan["stages"] for s in stage["steps"]}
    prefix, branch = steps["smollm2_1.7b-stage4@925B"], steps["smollm2_1.7b-long_context"]
    assert prefix["identity"] in branch["upstream"] and steps["smollm2_1.7b-stage3"]["identity"] in prefix["upstream"]
    assert steps["smollm2_1.7b-stage4"]["identity"] not in branch["upstream"]
    assert not any(s["complete"] for s in stage1["steps"])
    assert plan["errors"] == []


def test_a_source_past_its_epoch_cap_is_refused_by_name(tmp_path, capsys):
    overrides = [f"workdir={tmp_path}", "pipeline=smollm2_1.7b", "data.sources.open_web_math.max_epochs=5"]
    assert main(["plan", *overrides]) == 1
    captured = capsys.readouterr()
    assert "OVER CAP" in captured.out
    assert (
        "error: data.sources.open_web_math: 8.33 epochs by the end of stage2 exceeds its max_epochs=5" in captured.err
    )
    with pytest.raises(ConfigError, match=r"^data\.sources\.open_web_math: .* exceeds its max_epochs=5"):
        preflight(overrides)
    assert main(["run", *overrides]) == 2  # refused before any compute
    assert "error: data.sources.open_web_math" in capsys.readouterr().err
    assert not (tmp_path / "tokenizer").exists() and not (tmp_path / "mlflow.db").exists()


def test_the_demo_plan_matches_the_steps_the_run_would_take(built):
    from smollm import stage

    cfg, tokenizer, sources = built
    plan = make_plan([f"workdir={cfg.workdir}", *_tiny(cfg)])
    first = plan.stages[0]
    steps = {(s.kind, s.name): s for s in first.steps}
    assert steps[("tokenizer", "bpe_2k")].identity == tokenizer.identity
    assert steps[("tokenizer", "bpe_2k")].complete  # the session fixture built it
    for name, result in sources.items():
        assert steps[("tokens", name)].identity == result.identity and steps[("tokens", name)].complete
    expected = stage.training_step(cfg, cfg.pipeline.stages[0], sources, tokenizer, None)
    assert first.train_identity == expected.identity and not steps[("train", expected.name)].complete
    measured = {u.name: u.available_tokens for u in first.sources}
    assert measured == {
        n: json.loads((r.output / "manifest.json").read_text())["num_tokens"] for n, r in sources.items()
    }
    assert plan.stages[1].mixture_note.startswith("estimate")  # the rebalance after stage 1 has not run
    assert all(u.status in ("ok", "warn") for s in plan.stages for u in s.sources) and not plan.errors


def test_past_a_cap_on_an_estimated_mixture_is_a_warning_and_on_a_declared_one_an_error(built):
    """A stage whose mixture a rebalance has yet to write is planned on the previous stage's: if
    that would carry a source past its cap, the rebalance's epoch cap will hold it there (the
    loop bench's hand_rules arm was refused at stage 2 on its estimate of stage 3). Declared, it
    is refused before any compute."""
    cfg, _, _ = built
    overrides = [f"workdir={cfg.workdir}", *_tiny(cfg)]
    plan = make_plan(overrides)
    epochs = [{u.name: u.epochs for u in s.sources}["synthetic_math"] for s in plan.stages]
    cap = f"data.sources.synthetic_math.max_epochs={(epochs[0] + epochs[1]) / 2:.4f}"  # crossed in stage 2

    estimated = make_plan([*overrides, cap])
    assert plan.stages[1].mixture_note.startswith("estimate") and not estimated.errors
    assert {u.name: u.status for u in estimated.stages[1].sources}["synthetic_math"] == "over"
    (warning,) = [w for w in estimated.warnings if "synthetic_math" in w]
    assert "by the end of stage2" in warning and "the rebalance before stage2 has not run" in warning

    declared = make_plan([*overrides, cap, "pipeline.stages.1.mixture=demo_stage1"])
    (error,) = declared.errors
    assert error.startswith("data.sources.synthetic_math: ") and "by the end of stage2 exceeds its max_epochs" in error
    with pytest.raises(ConfigError, match=r"^data\.sources\.synthetic_math: .* exceeds its max_epochs"):
        preflight([*overrides, cap, "pipeline.stages.1.mixture=demo_stage1"])


def _tiny(cfg) -> list[str]:
    from tests.conftest import tiny_overrides

    return [o for o in tiny_overrides(cfg.workdir) if not o.startswith("workdir=")]


def test_the_demo_step_identities_are_pinned(tmp_path, monkeypatch):
    """The identities of the demo's data and first stages as of this commit's configs and step
    structure: a change here invalidates every user's cache, so it must be deliberate (update
    the pins and say why). What the code and the machine add is fixed here — each module of a
    step's closure hashes to its name, the libraries, lighteval's version, our scoring code and
    the interpreter the stdlib sources are read from are placeholders — so the pins hold on any
    machine and across edits of the code (tests/test_step_code.py shows what each edit
    invalidates). Re-pinned when the code part became the whole import closure plus library
    versions, and the evaluation's config took the suite fingerprint (its tasks' prompts,
    metrics, few-shot and data: an edit of a prompt function moves the eval pin) (issue 17);
    before that, 0bb3b77. The eval pin moved again when `smollm.evaluation.source_reading` split
    off `fingerprint.py` and joined the evaluation's closure (its fingerprint unchanged), and the
    training's when the tracking modules split (`tracking_mlflow`, `tracking_link`,
    `tracking_journal` joined its closure). All moved when the embedded data grew a fourth source
    (`noisy_web`: a new tokenizer) and `synthetic_math` shrank to 4000, then 3000 documents, for its epoch cap to bind in the demo (issue 18)."""
    import smollm.evaluation.fingerprint
    import smollm.stage
    import smollm.steps
    from smollm.step_code import closure

    monkeypatch.setattr(
        smollm.stage, "environment_fingerprint", lambda source: {"python": "3.11.7", "stdlib": "/pinned"}
    )
    monkeypatch.setattr(smollm.evaluation.fingerprint, "scoring_code", lambda: "pinned")
    monkeypatch.setattr(smollm.evaluation.fingerprint, "lighteval_version", lambda: "pinned")
    monkeypatch.setattr(
        smollm.steps,
        "code_identity",
        lambda entries: {"code": {m: m for m in closure(tuple(sorted(entries)))}, "libraries": {"pinned": "1"}},
    )
    plan = make_plan([f"workdir={tmp_path}"])
    steps = {(s.kind, s.name): s.identity[:16] for s in plan.stages[0].steps}
    assert steps == {
        ("tokenizer", "bpe_2k"): "605098cb49e1c5a6",
        ("tokens", "noisy_web"): "c4b2eb95e3c762b5",
        ("tokens", "stdlib_code"): "12dbffa5db34dbf7",
        ("tokens", "stdlib_prose"): "1c3f20ec5f7a783f",
        ("tokens", "synthetic_math"): "1782c775385f6567",
        ("train", "demo-stage1"): "872d9d84c9e313cd",
        ("eval", "demo-stage1-872d9d84c9e3"): "d511ffc8959905af",
    }
    assert plan.stages[1].train_identity[:16] == "918186dd04a9abf6"  # on the estimate: stage 1's mixture
