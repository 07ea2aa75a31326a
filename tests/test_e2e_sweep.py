"""End to end: an annealing sweep (two candidates + the control) from stage 1's checkpoint of the
embedded default, under Prefect's test harness; relaunched from the flow and from the CLI's
multirun; one member killed mid-run and relaunched; a stage flow running its declared candidates.

Real steps throughout (BPE, tokenization, training in a process pool, lighteval, SQLite MLflow).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import tiny_overrides
from tests.test_e2e_pipeline import read_artifacts

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
CANDIDATES = ["synthetic_math", "stdlib_code"]
ANNEAL = ["anneal.base=stage1", "anneal.train_tokens=51200"]  # 100 steps of 512 tokens


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("sweep") / "work"


@pytest.fixture(scope="module")
def sweeps(workdir):
    from prefect.testing.utilities import prefect_test_harness

    from flows.cli import main
    from flows.runtime import embedded_settings
    from flows.sweep import sweep_flow

    overrides = tiny_overrides(workdir)
    typed = {"kind": "anneal", "candidates": CANDIDATES, "base": "stage1", "train_tokens": 51200}
    with prefect_test_harness(server_startup_timeout=120), embedded_settings():
        started = time.perf_counter()
        first = sweep_flow(**typed, overrides=overrides).to_dict()
        first_seconds = time.perf_counter() - started
        second = sweep_flow(**typed, overrides=overrides).to_dict()
        cli_exit = main(["anneal", "-m", *overrides, *ANNEAL, f"anneal.candidate={','.join(CANDIDATES)}"])
        artifacts = read_artifacts()
    each = ", ".join(f"{m['seconds']:.1f}s" for m in first["members"])
    print(f"sweep: {first_seconds:.1f}s in all, members {first['members_seconds']:.1f}s wall, each member {each}")
    return first, second, cli_exit, artifacts


@pytest.fixture(scope="module")
def mlflow(sweeps):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=sweeps[0]["tracking_uri"])
    experiment = client.get_experiment_by_name("smollm-test")
    return client, client.search_runs([experiment.experiment_id], max_results=1000, order_by=["start_time ASC"])


def test_members_branch_from_the_base_checkpoint_and_decay_to_zero(sweeps):
    first = sweeps[0]
    names = ["anneal-control-seed0", *(f"anneal-{c}-0.6-seed0" for c in CANDIDATES)]
    assert [m["name"] for m in first["members"]] == names
    base = json.loads((Path(first["base"]["checkpoint"]) / "summary.json").read_text())
    assert base["stage"] == "stage1" and base["end_step"] == 800
    for member in first["members"]:
        summary = member["summary"]
        assert member["trained"] and summary["optimizer_state_loaded"]
        assert (summary["start_step"], summary["start_tokens"]) == (base["end_step"], base["tokens_seen"])
        assert summary["end_step"] - summary["start_step"] == 100
        lrs = [json.loads(line)["lr"] for line in open(Path(member["checkpoint"]) / "losses.jsonl")]
        lrs = lrs[-100:]
        assert lrs[-1] == 0.0 and all(a > b for a, b in zip(lrs, lrs[1:], strict=False))


def test_the_candidate_gets_its_share_and_tokens_per_source_are_recorded(sweeps, mlflow):
    first = sweeps[0]
    client, runs = mlflow
    by_id = {r.info.run_id: r for r in runs}
    stage1 = {"stdlib_prose": 0.45, "stdlib_code": 0.25, "noisy_web": 0.2, "synthetic_math": 0.1}  # demo_stage1
    for member in first["members"]:
        tokens = member["stage_tokens_per_source"]
        total = sum(tokens.values())
        assert total == 51200
        run = by_id[member["run_id"]]
        assert {k: v for k, v in run.data.metrics.items() if k.startswith("member/tokens/")} == {
            f"member/tokens/{k}": v for k, v in tokens.items()
        }
        for source, share in stage1.items():
            expected = share if member["candidate"] is None else 0.4 * share + 0.6 * (source == member["candidate"])
            assert tokens.get(source, 0) / total == pytest.approx(expected, abs=0.06)


def test_data_was_built_once(sweeps, workdir):
    first, second, _, _ = sweeps
    assert sorted(first["data_built"]) == ["noisy_web", "stdlib_code", "stdlib_prose", "synthetic_math", "tokenizer"]
    assert second["data_built"] == []
    assert len(list((workdir / "tokens").glob("*/_COMPLETE.json"))) == 4


def test_one_mlflow_parent_run_with_a_child_per_member(sweeps, mlflow):
    first = sweeps[0]
    _, runs = mlflow
    by_id = {r.info.run_id: r for r in runs}
    sweep_run = by_id[first["sweep_run_id"]]
    assert sweep_run.data.tags["smollm.kind"] == "sweep" and sweep_run.info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == first["sweep_run_id"]]
    members = [r for r in children if r.data.tags["smollm.kind"] == "anneal"]
    assert sorted(r.info.run_name for r in members) == sorted(f"anneal/{m['name']}" for m in first["members"])
    assert all(r.info.status == "FINISHED" for r in members)
    assert {r.data.tags["smollm.identity"] for r in members} == {m["identity"] for m in first["members"]}


def test_summary_deltas_are_the_differences_of_the_members_mlflow_metrics(sweeps, mlflow):
    first, _, _, artifacts = sweeps
    client, runs = mlflow
    by_id = {r.info.run_id: r for r in runs}
    metrics = {m["name"]: by_id[m["run_id"]].data.metrics for m in first["members"]}
    rows = {row["member"]: row for row in first["rows"]}
    categories = ["code", "knowledge", "math"]
    for name in rows:
        for category in categories:
            score = metrics[name][f"eval/category/{category}"]
            control = metrics["anneal-control-seed0"][f"eval/category/{category}"]
            assert rows[name][f"score/{category}"] == score
            assert rows[name][f"delta/{category}"] == pytest.approx(score - control, abs=1e-12)
    table = next(a for a in artifacts if a["key"] == f"sweep-{first['sweep_id']}")
    data = json.loads(table["data"]) if isinstance(table["data"], str) else table["data"]
    assert [row["member"] for row in data] == [row["member"] for row in first["rows"]]
    assert [row["delta/math"] for row in data] == pytest.approx([row["delta/math"] for row in first["rows"]])
    logged = client.list_artifacts(first["sweep_run_id"], "sweep")
    assert {Path(a.path).name for a in logged} == {"summary.json", "summary.md", "deltas.png", "runs.json"}
    records = {r["name"]: r for r in first["runs"]}  # what a rebalancing policy reads of each member
    for name, record in records.items():
        assert record["scores"] == {c: rows[name][f"score/{c}"] for c in categories}
        assert record["control"] == (None if name == "anneal-control-seed0" else "anneal-control-seed0")
    assert Path(first["chart"]).read_bytes()[:4] == b"\x89PNG"
    assert json.loads((Path(first["folder"]) / "summary.json").read_text()) == first["rows"]


def test_a_second_launch_runs_nothing(sweeps):
    first, second, _, _ = sweeps
    assert second["trained"] == [] and second["sweep_id"] == first["sweep_id"]
    assert [m["identity"] for m in second["members"]] == [m["identity"] for m in first["members"]]
    assert [m["checkpoint"] for m in second["members"]] == [m["checkpoint"] for m in first["members"]]
    assert second["rows"] == first["rows"]


def test_the_cli_multirun_launches_the_same_members(sweeps, mlflow):
    first, _, cli_exit, _ = sweeps
    _, runs = mlflow
    assert cli_exit == 0
    cli_sweep = [r for r in runs if r.data.tags.get("smollm.kind") == "sweep"][-1]
    assert cli_sweep.info.run_id not in (first["sweep_run_id"],)
    assert cli_sweep.data.tags["smollm.sweep_id"] == first["sweep_id"]
    members = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == cli_sweep.info.run_id]
    by_name = {r.info.run_name.removeprefix("anneal/"): r for r in members if r.data.tags["smollm.kind"] == "anneal"}
    assert {name: r.data.tags["smollm.identity"] for name, r in by_name.items()} == {
        m["name"]: m["identity"] for m in first["members"]
    }
    assert all(r.data.tags["smollm.cached"] == "true" for r in by_name.values())


def test_a_member_killed_mid_run_is_the_only_one_rerun(sweeps, workdir, tmp_path):
    from prefect.testing.utilities import prefect_test_harness

    from flows.runtime import embedded_settings
    from flows.sweep import sweep_flow

    overrides = [*tiny_overrides(workdir), "train.checkpoint_every_steps=50"]
    budget = ["anneal.base=stage1", "anneal.train_tokens=102400"]  # new members: 200 steps each
    command = [sys.executable, "-m", "flows.cli", "anneal", "-m", *overrides, *budget, "sweep.max_concurrency=1"]
    command.append(f"anneal.candidate={','.join(CANDIDATES)}")
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_LOGGING_LEVEL": "WARNING"}
    process = subprocess.Popen(
        command, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    last = f"demo-anneal-{CANDIDATES[-1]}-"
    before = set((workdir / "train").glob("demo-anneal-*/_COMPLETE.json"))
    deadline = time.monotonic() + 400
    try:
        while not list((workdir / "train").glob(f".resume-{last}*/step-*")):
            assert process.poll() is None, process.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the last member never reached its first resume point"
            time.sleep(0.2)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    finished = set((workdir / "train").glob("demo-anneal-*/_COMPLETE.json")) - before
    names = sorted(p.parent.name.rsplit("-", 1)[0] for p in finished)
    assert names == ["demo-anneal-control-seed0", f"demo-anneal-{CANDIDATES[0]}-0.6-seed0"]  # not the last: killed

    with prefect_test_harness(server_startup_timeout=120), embedded_settings():
        again = sweep_flow(
            kind="anneal", candidates=CANDIDATES, base="stage1", train_tokens=102400, overrides=overrides
        ).to_dict()
    assert again["trained"] == [f"anneal-{CANDIDATES[-1]}-0.6-seed0"]
    rerun = next(m for m in again["members"] if m["trained"])
    assert rerun["summary"]["resumed_from"] is not None  # continued from its last resume point
    assert rerun["summary"]["end_step"] - rerun["summary"]["start_step"] == 200

    # exact resume of an annealing branch: the same member trained again without a kill
    resumed = (Path(rerun["checkpoint"]) / "losses.jsonl").read_text()
    shutil.rmtree(rerun["checkpoint"])
    with prefect_test_harness(server_startup_timeout=120), embedded_settings():
        fresh = sweep_flow(
            kind="anneal", candidates=CANDIDATES, base="stage1", train_tokens=102400, overrides=overrides
        ).to_dict()
    assert fresh["trained"] == [f"anneal-{CANDIDATES[-1]}-0.6-seed0"]
    uninterrupted = next(m for m in fresh["members"] if m["trained"])
    assert uninterrupted["summary"]["resumed_from"] is None
    assert (Path(uninterrupted["checkpoint"]) / "losses.jsonl").read_text() == resumed  # bit for bit


def test_a_stage_flow_runs_its_declared_annealing_candidates_before_rebalancing(sweeps, workdir):
    from prefect.testing.utilities import prefect_test_harness

    from flows.compose import compose_lineage
    from flows.runtime import embedded_settings
    from flows.stage import stage_flow

    metric = "sweep/anneal-synthetic_math-0.6-seed0/delta/math"
    overrides = [
        *tiny_overrides(workdir),
        "++pipeline.stages.0.anneal.candidates=[synthetic_math]",
        "++pipeline.stages.0.anneal.train_tokens=25600",
        "rebalance.rules=[{name: anneal_gain_math, metric: '" + metric + "', above: -1.0, "
        "raise_sources: [synthetic_math], by: 0.1}]",
    ]
    with prefect_test_harness(server_startup_timeout=120), embedded_settings():
        result = stage_flow(compose_lineage(overrides).extend()).to_dict()
    assert not result["trained"]  # stage 1 itself was complete
    sweep = result["sweeps"]["anneal"]
    names = ["anneal-control-seed0", "anneal-synthetic_math-0.6-seed0"]
    assert [m["name"] for m in sweep["members"]] == names
    assert sweep["trained"] == names  # a new budget: trained here
    assert sweep["base"]["identity"] == result["identity"]  # from the stage's (stable) checkpoint
    path = Path(workdir) / "generated_conf" / "mixture" / f"{result['next_mixture']}.yaml"
    text = path.read_text()
    delta = next(row["delta/math"] for row in sweep["rows"] if row["member"] == names[1])
    assert yaml.safe_dump({metric: round(delta, 6)}).strip() in text  # the rebalance read the sweep's result
    assert "rule anneal_gain_math" in text
    weights = yaml.safe_load(text)["weights"]
    assert weights["synthetic_math"] == pytest.approx(0.2)  # the rule on the annealing gain fired


def test_a_data_ablation_sweep_trains_each_candidate_and_seed_from_scratch(sweeps, workdir):
    from prefect.testing.utilities import prefect_test_harness

    from flows.runtime import embedded_settings
    from flows.sweep import sweep_flow

    with prefect_test_harness(server_startup_timeout=120), embedded_settings():
        result = sweep_flow(
            kind="ablate",
            candidates=["demo_code_heavy"],
            seeds=[0, 1],
            train_tokens=25600,
            overrides=tiny_overrides(workdir),
        ).to_dict()
    names = [
        "ablate-control-seed0",
        "ablate-control-seed1",
        "ablate-demo_code_heavy-seed0",
        "ablate-demo_code_heavy-seed1",
    ]
    members = {m["name"]: m for m in result["members"]}
    assert list(members) == names and result["trained"] == names and result["data_built"] == []
    for member in members.values():
        summary = member["summary"]
        assert (summary["start_step"], summary["start_tokens"], summary["end_step"]) == (0, 0, 50)
        assert not summary["optimizer_state_loaded"] and summary["final_lr"] == 0.0
    assert members["ablate-control-seed0"]["summary"]["mixture"] == {
        "stdlib_prose": 0.45,
        "stdlib_code": 0.25,
        "noisy_web": 0.2,
        "synthetic_math": 0.1,
    }
    assert members["ablate-demo_code_heavy-seed1"]["summary"]["mixture"]["stdlib_code"] == 0.5
    # seeds change the run; each candidate is compared with the control of its own seed
    assert len({m["identity"] for m in members.values()}) == 4
    assert (
        members["ablate-control-seed0"]["summary"]["first_loss"]
        != members["ablate-control-seed1"]["summary"]["first_loss"]
    )
    rows = {row["member"]: row for row in result["rows"]}
    for seed in (0, 1):
        row, control = rows[f"ablate-demo_code_heavy-seed{seed}"], rows[f"ablate-control-seed{seed}"]
        assert row["delta/code"] == pytest.approx(row["score/code"] - control["score/code"])
