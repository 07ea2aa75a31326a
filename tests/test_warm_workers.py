"""Warm workers (`flows/workers.py`): the members of a run's sweeps run in worker processes that
were warmed before their first member and are reused by every member of every sweep of the run;
their task runs belong to their own sweep's flow run; the results are the one-process path's
(training bit for bit; evaluations to rounding: lighteval's sums run in another order).

Real steps on the session's built data (copied): two data-ablation sweeps (from scratch: no base
to train) of two 10-step members each (candidate and control) in one scope of warm workers, then
the first again in this process.
"""

from __future__ import annotations

import os
import shutil
from collections import defaultdict
from pathlib import Path

import pytest

from tests.conftest import tiny_overrides

pytestmark = pytest.mark.slow
ABLATE = {"kind": "ablate", "candidates": ["demo_code_heavy"], "train_tokens": 5120}  # 10 steps of 512
THREADS = ["sweep.threads_per_member=1"]  # the same torch threads on both paths: the same floats
SAME = ("first_loss", "last_loss", "final_lr", "end_step", "tokens_seen", "stage_tokens_per_source")


def copied(built, tmp_path_factory, name: str) -> Path:
    work = tmp_path_factory.mktemp(name) / "work"
    for part in ("tokenizer", "tokens"):
        shutil.copytree(Path(built[0].workdir) / part, work / part)
    return work


def task_runs() -> dict[str, str]:
    """Each task run's flow run, by task run name, from the harness server."""
    import httpx
    from prefect.settings import PREFECT_API_URL

    response = httpx.post(f"{PREFECT_API_URL.value()}/task_runs/filter", json={"limit": 200, "offset": 0})
    response.raise_for_status()
    return {run["name"]: run["flow_run_id"] for run in response.json()}


@pytest.fixture(scope="module")
def swept(built, tmp_path_factory):
    import torch
    from prefect.testing.utilities import prefect_test_harness

    from flows.runtime import embedded_settings
    from flows.sweep import sweep_flow
    from flows.workers import warm_workers

    pooled, here = copied(built, tmp_path_factory, "pooled"), copied(built, tmp_path_factory, "here")
    threads = torch.get_num_threads()
    with prefect_test_harness(server_startup_timeout=120), embedded_settings():
        with warm_workers():
            first = sweep_flow(**ABLATE, seeds=[0], overrides=[*tiny_overrides(pooled), *THREADS]).to_dict()
            second = sweep_flow(**ABLATE, seeds=[1], overrides=[*tiny_overrides(pooled), *THREADS]).to_dict()
        alone = sweep_flow(
            **ABLATE, seeds=[0], max_concurrency=1, overrides=[*tiny_overrides(here), *THREADS]
        ).to_dict()
        runs = task_runs()
    torch.set_num_threads(threads)  # the one-process path set this process's
    return first, second, alone, runs


def tags(result: dict) -> dict[str, dict[str, str]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(result["tracking_uri"])
    return {m["name"]: client.get_run(m["run_id"]).data.tags for m in result["members"]}


def test_the_members_of_a_run_share_worker_processes_warmed_before_their_first(swept):
    first, second, alone, _ = swept
    pooled = {**tags(first), **tags(second)}
    assert len(pooled) == 4 and all(t["smollm.worker.warmed"] == "true" for t in pooled.values())
    by_pid = defaultdict(list)
    for t in pooled.values():
        by_pid[t["smollm.worker.pid"]].append(int(t["smollm.worker.members_before"]))
    assert len(by_pid) == 2 and str(os.getpid()) not in by_pid  # max_concurrency=2, not this process
    assert all(sorted(before) == list(range(len(before))) for before in by_pid.values())  # one member after another
    assert {t["smollm.worker.pid"] for t in tags(second).values()} <= set(by_pid)  # kept for the second sweep
    here = tags(alone)
    assert {t["smollm.worker.pid"] for t in here.values()} == {str(os.getpid())}
    assert all(t["smollm.worker.warmed"] == "false" for t in here.values())


def test_member_task_runs_belong_to_their_own_sweeps_flow_run(swept):
    """The pool is kept across flow runs: each sweep's members still report under its own."""
    from mlflow.tracking import MlflowClient

    first, second, _, runs = swept
    client = MlflowClient(first["tracking_uri"])
    for sweep in (first, second):
        flow_run_id = client.get_run(sweep["sweep_run_id"]).data.tags["prefect.flow_run_id"]
        assert {runs[f"member-{m['name']}"] for m in sweep["members"]} == {flow_run_id}


def test_warm_workers_give_the_results_of_the_one_process_path(swept):
    first, _, alone, _ = swept
    assert [m["name"] for m in first["members"]] == [m["name"] for m in alone["members"]]
    assert first["trained"] == alone["trained"] == [m["name"] for m in first["members"]]
    for pooled, here in zip(first["members"], alone["members"], strict=True):
        assert (pooled["identity"], pooled["eval_identity"]) == (here["identity"], here["eval_identity"])
        assert Path(pooled["checkpoint"]).name == Path(here["checkpoint"]).name
        assert {k: pooled["summary"][k] for k in SAME} == {k: here["summary"][k] for k in SAME}
        assert pooled["evals"] == pytest.approx(here["evals"], rel=1e-9) and pooled["evals"]  # summation order
        assert pooled["stage_tokens_per_source"] == here["stage_tokens_per_source"]
        for member in (pooled, here):  # timed as the sweep saw it, around its time in its process
            assert member["wall_seconds"] >= member["seconds"] > member["summary"]["seconds"] > 0
    for pooled, here in zip(first["rows"], alone["rows"], strict=True):  # scores and deltas: to rounding
        assert pooled.keys() == here.keys()
        for key, value in here.items():
            assert pooled[key] == (pytest.approx(value, rel=1e-9, abs=1e-12) if isinstance(value, float) else value)
