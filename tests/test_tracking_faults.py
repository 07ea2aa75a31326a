"""MLflow going away: a real tracking server is stopped mid-training and restarted; training goes
on and every metric point is there afterwards. A flow killed with SIGKILL leaves RUNNING runs;
the next start marks them KILLED, and leaves alone the runs of processes still alive."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from smollm.config import TrackingConfig
from smollm.services import _executable, mlflow_server_command
from smollm.tracking_mlflow import MLflowTracker
from tests.conftest import stage_run, tiny_overrides

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent


class MlflowServer:
    """A real `mlflow server` process on a SQLite store, which the test can stop and restart."""

    def __init__(self, folder: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.folder, self.process = folder, None
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        import httpx

        command = mlflow_server_command(
            "127.0.0.1", self.port, f"sqlite:///{self.folder / 'mlflow.db'}", str(self.folder / "artifacts")
        )
        log = open(self.folder / "server.log", "ab")  # noqa: SIM115 (the process owns it)
        self.process = subprocess.Popen(_executable(command), stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.uri}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.5)
        raise AssertionError("mlflow server did not start")

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=60)


@pytest.fixture
def server(tmp_path):
    server = MlflowServer(tmp_path)
    server.start()
    yield server
    if server.process.poll() is None:
        server.stop()


def test_metrics_logged_while_the_server_is_away_arrive_when_it_is_back(built, server, tmp_path, monkeypatch, capsys):
    import smollm.tracking_mlflow
    from smollm.train import Trainer

    monkeypatch.setattr(smollm.tracking_mlflow, "MAX_BATCH", 20)  # flush every few steps, outage included
    cfg, steps = built[0], 60
    run = stage_run(built, steps)
    tracker = MLflowTracker(TrackingConfig(uri=server.uri, experiment="faults"), tmp_path / "work")
    run_id = tracker.start_run("train/outage")
    trainer = Trainer(run, tracker, run_id)
    drawn = {"n": 0}

    def outage(module, inputs, output):  # the server goes away at step 15 and is back at step 40
        if module.training:
            drawn["n"] += 1
            if drawn["n"] == 15:
                server.stop()
            if drawn["n"] == 40:
                server.start()
        return output

    trainer.model.register_forward_hook(outage)
    summary = trainer.run_to_end(tmp_path / "out")
    tracker.end_run(run_id)

    assert summary["end_step"] == steps  # training went on
    err = capsys.readouterr().err
    assert err.count(f"warning: MLflow at {server.uri} is unreachable") == 1
    assert "is back: delivered" in err
    history = tracker.client.get_metric_history(run_id, "train/loss")
    tokens = cfg.train.tokens_per_step
    assert sorted(m.step for m in history) == [tokens * s for s in range(1, steps + 1)]  # every point
    assert tracker.client.get_run(run_id).info.status == "FINISHED"
    assert not tracker.buffer


def test_a_run_ended_while_the_server_is_away_is_ended_by_the_next_tracker(server, tmp_path):
    config = TrackingConfig(uri=server.uri, experiment="faults")
    tracker = MLflowTracker(config, tmp_path / "work")
    run_id = tracker.start_run("ends-offline")
    server.stop()
    tracker.log_metrics(run_id, {"eval/category/code": 0.5}, step=1)
    tracker.end_run(run_id)  # journaled
    assert tracker.buffer
    server.start()
    again = MLflowTracker(config, tmp_path / "work")  # e.g. the next flow's start
    run = again.client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["eval/category/code"] == 0.5
    assert not again.buffer


def test_after_a_sigkill_of_a_flow_the_next_start_leaves_no_run_running(tmp_path):
    """A real pipeline flow in a subprocess, killed with SIGKILL while it trains."""
    from mlflow import MlflowClient

    work = tmp_path / "work"
    overrides = [*tiny_overrides(work), "pipeline.stages.0.train_tokens=4096000"]  # long enough to be killed in
    env = {**os.environ, "PREFECT_LOGGING_LEVEL": "WARNING"}
    flow = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "run", *overrides],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    client = MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            experiment = client.get_experiment_by_name("smollm-test") if (work / "mlflow.db").exists() else None
            names = [r.info.run_name for r in client.search_runs([experiment.experiment_id])] if experiment else []
            if "train/stage1" in names:
                break
            assert flow.poll() is None, "the flow ended before it was killed"
            time.sleep(1)
        time.sleep(2)
    finally:
        os.killpg(flow.pid, signal.SIGKILL)
        flow.wait()
    running = client.search_runs([experiment.experiment_id], filter_string="attributes.status = 'RUNNING'")
    assert {r.info.run_name for r in running} >= {"pipeline/demo", "stage/stage1", "train/stage1"}
    alive = MLflowTracker(TrackingConfig(experiment="smollm-test"), work)  # the next start
    kept = alive.start_run("alive")  # a run of a live process is not touched by the following start
    MLflowTracker(TrackingConfig(experiment="smollm-test"), work)
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert all(runs[name].info.status == "KILLED" for name in ("pipeline/demo", "stage/stage1", "train/stage1"))
    assert runs["train/stage1"].data.tags["smollm.reconciled"].startswith("its process was gone")
    assert client.get_run(kept).info.status == "RUNNING"


def test_a_server_down_at_start_gets_every_run_metric_and_artifact_when_it_comes_up(built, tmp_path, capsys):
    from smollm.train import Trainer

    server = MlflowServer(tmp_path)  # not started yet
    tracker = MLflowTracker(TrackingConfig(uri=server.uri, experiment="offline"), tmp_path / "work")
    parent = tracker.start_run("stage/stage1", tags={"smollm.kind": "stage"})
    child = tracker.start_run("train/stage1", parent_run_id=parent)
    assert parent.startswith("offline-") and child.startswith("offline-")
    tracker.log_params(parent, {"train": {"seed": 3}})
    note = tmp_path / "note.md"
    note.write_text("# results")
    tracker.log_artifact(parent, note, "eval")
    note.unlink()  # the journal kept its own copy
    steps = 30
    run = stage_run(built, steps)
    Trainer(run, tracker, child).run_to_end(tmp_path / "out")  # training goes on
    tracker.end_run(child)
    tracker.log_metrics(parent, {"eval/category/math": 0.25}, step=7)
    tracker.log_dict(parent, {"weights": {"synthetic_math": 0.4}}, "rebalance/proposal.json")
    # what the rebalance reads is answered from the journal meanwhile
    assert tracker.latest_metrics(parent) == {"eval/category/math": 0.25}
    assert tracker.load_dict(parent, "rebalance/proposal.json") == {"weights": {"synthetic_math": 0.4}}
    assert [run_id for run_id, _ in tracker.child_runs(parent)] == [child]

    server.start()
    try:
        tracker.end_run(parent)  # the server is back: the journal is replayed first
        client = tracker.client
        (stage,) = client.search_runs([tracker.experiment_id], filter_string="attributes.run_name = 'stage/stage1'")
        (train,) = client.search_runs([tracker.experiment_id], filter_string="attributes.run_name = 'train/stage1'")
        assert train.data.tags["mlflow.parentRunId"] == stage.info.run_id
        assert stage.data.params["train.seed"] == "3" and stage.data.metrics["eval/category/math"] == 0.25
        assert stage.info.status == train.info.status == "FINISHED"
        history = client.get_metric_history(train.info.run_id, "train/loss")
        assert len(history) == steps
        assert tracker.load_dict(parent, "rebalance/proposal.json") == {"weights": {"synthetic_math": 0.4}}
        assert {f.path for f in client.list_artifacts(stage.info.run_id, "eval")} == {"eval/note.md"}
        assert not tracker.buffer
        err = capsys.readouterr().err
        assert "is unreachable" in err and "is back: delivered" in err
    finally:
        server.stop()
