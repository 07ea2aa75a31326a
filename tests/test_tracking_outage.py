"""MLflow outages the health check does not see, reads during an outage, and stale runs of other
hosts. One real `mlflow server` for the module, reached through a loopback link the test cuts:
the tracker's health check passes, then the link goes down before the call that follows (a
refused connection, as when the server dies in between). Every write is journaled and replayed
in order; a refusal by the server (a bad value) still raises; reads are answered from what the
tracker wrote or read before, or fail with one line; a RUNNING run of another host whose
heartbeat went silent is marked KILLED at the next start."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from smollm.config import TrackingConfig
from smollm.tracking_faults import HEARTBEAT
from smollm.tracking_journal import TrackingServerAway
from smollm.tracking_link import ServerLink
from smollm.tracking_mlflow import MLflowTracker
from tests.test_tracking_faults import MlflowServer

pytestmark = pytest.mark.slow


class Link:
    """A TCP forwarder on loopback to a server: `cut()` refuses new connections and resets open
    ones (the server is gone, as far as a client can tell); `mend()` listens again on its port."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.uri = f"http://127.0.0.1:{self.port}"
        self._up = threading.Event()
        self._sockets: list[socket.socket] = []
        self._listener: threading.Thread | None = None

    def mend(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.05)
        self._up.set()
        self._listener = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._listener.start()

    def cut(self) -> None:
        self._up.clear()
        if self._listener is not None:
            self._listener.join()
        for sock in self._sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by its peer
            sock.close()
        self._sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        with listener:
            while self._up.is_set():
                try:
                    client, _ = listener.accept()
                except TimeoutError:
                    continue
                client.settimeout(None)
                server = socket.create_connection(("127.0.0.1", self.target))
                self._sockets += [client, server]
                for source, sink in ((client, server), (server, client)):
                    threading.Thread(target=_pump, args=(source, sink), daemon=True).start()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
        sink.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # the link was cut


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def link(mlflow_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # a refused call fails at once
    link = Link(mlflow_server.port)
    link.mend()
    yield link
    link.cut()


@pytest.fixture
def tracker(link, tmp_path):
    return MLflowTracker(TrackingConfig(uri=link.uri, experiment=tmp_path.name), tmp_path / "work")


def cut_after_the_health_check(tracker: MLflowTracker, link: Link) -> None:
    """The tracker's next health check passes, then the link goes down before its next call."""
    check = tracker.link.reachable

    def passes_then_cut() -> bool:
        up = check()
        link.cut()
        del tracker.link.reachable  # back to the real check, which now fails
        return up

    tracker.link.reachable = passes_then_cut  # type: ignore[method-assign]


def server_client(link: Link):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=link.uri)


def _raised_from(error: BaseException, cause: BaseException) -> BaseException:
    """`error` as raised while handling `cause` (what MLflow's client does with a refused call)."""
    error.__context__ = cause
    return error


def test_an_outage_is_a_lost_connection_not_a_refusal():
    import requests
    from mlflow.exceptions import MlflowException, RestException
    from mlflow.protos.databricks_pb2 import DEADLINE_EXCEEDED, TEMPORARILY_UNAVAILABLE

    from smollm.tracking_faults import is_outage

    refused = requests.exceptions.ConnectionError("Max retries exceeded: Connection refused")
    assert is_outage(_raised_from(MlflowException("API request failed"), refused))
    assert is_outage(requests.exceptions.ReadTimeout("read timed out"))
    assert is_outage(ConnectionResetError(104, "reset by peer"))
    assert is_outage(MlflowException("gateway", error_code=TEMPORARILY_UNAVAILABLE))  # a 503
    assert is_outage(MlflowException("gateway", error_code=DEADLINE_EXCEEDED))  # a 504
    bad_value = RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "Changing param values"})
    assert not is_outage(bad_value)
    assert not is_outage(FileNotFoundError(2, "No such file", "results.json"))  # local, not the server
    assert not is_outage(_raised_from(ValueError("lr: must be > 0"), KeyError("lr")))


WRITES = {
    "log_params": lambda t, run, tmp: t.log_params(run, {"train": {"seed": 3}}),
    "set_tags": lambda t, run, tmp: t.set_tags(run, {"smollm.stopped": "no"}),
    "log_dict": lambda t, run, tmp: t.log_dict(run, {"weights": {"math": 0.4}}, "rebalance/proposal.json"),
    "log_text": lambda t, run, tmp: t.log_text(run, "# why", "rebalance/explanation.md"),
    "log_artifact": lambda t, run, tmp: t.log_artifact(run, tmp, "eval"),
    "end_run": lambda t, run, tmp: t.end_run(run),
    "start_run": lambda t, run, tmp: t.start_run("train/stage1", parent_run_id=run),
}


def delivered(op: str, client, run_id: str, experiment_id: str) -> bool:
    run = client.get_run(run_id)
    if op == "log_params":
        return run.data.params == {"train.seed": "3"}
    if op == "set_tags":
        return run.data.tags["smollm.stopped"] == "no"
    if op in ("log_dict", "log_text", "log_artifact"):
        folder = "eval" if op == "log_artifact" else "rebalance"
        return len(client.list_artifacts(run_id, folder)) == 1
    if op == "end_run":
        return run.info.status == "FINISHED"
    children = client.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run_id}'")
    return [child.info.run_name for child in children] == ["train/stage1"]


@pytest.mark.parametrize("op", sorted(WRITES))
def test_a_write_the_server_drops_after_the_health_check_is_journaled_and_delivered(op, tracker, link, tmp_path):
    run_id = tracker.start_run("stage/stage1")
    note = tmp_path / "results.json"
    note.write_text("{}")
    cut_after_the_health_check(tracker, link)
    WRITES[op](tracker, run_id, note)  # does not raise: training goes on
    assert tracker.buffer and tracker.link.down
    link.mend()
    tracker.log_metrics(run_id, {"eval/category/math": 0.5}, step=1)
    tracker.flush()  # the first call after the server is back replays the journal first
    assert not tracker.buffer
    assert delivered(op, server_client(link), run_id, tracker.experiment_id)


def test_a_replay_the_server_drops_goes_on_in_order_and_a_refused_write_still_raises(tracker, link):
    from mlflow.exceptions import MlflowException

    run_id = tracker.start_run("stage/stage1")
    tracker.log_params(run_id, {"lr": 1})
    link.cut()
    tracker.set_tags(run_id, {"smollm.approval": "first"})  # journaled: the health check fails
    link.mend()
    cut_after_the_health_check(tracker, link)
    tracker.set_tags(run_id, {"smollm.approval": "second"})  # the replay is dropped: journaled after it
    assert len(list(tracker.buffer.records())) == 2
    link.mend()
    tracker.set_tags(run_id, {"smollm.approval": "third"})
    assert not tracker.buffer
    assert server_client(link).get_run(run_id).data.tags["smollm.approval"] == "third"
    with pytest.raises(MlflowException, match="lr"):  # changing a logged param: the server says no
        tracker.log_params(run_id, {"lr": 2})
    assert not tracker.buffer  # not journaled, either


def test_a_tracker_started_as_the_server_drops_starts_and_journals(link, tmp_path, monkeypatch):
    check = ServerLink.reachable

    def passes_then_cut(self) -> bool:
        up = check(self)
        link.cut()
        monkeypatch.setattr(ServerLink, "reachable", check)
        return up

    monkeypatch.setattr(ServerLink, "reachable", passes_then_cut)
    tracker = MLflowTracker(TrackingConfig(uri=link.uri, experiment=tmp_path.name), tmp_path / "work")
    assert tracker.link.down  # the stale-run search was dropped: no error
    assert tracker.start_run("pipeline/demo").startswith("offline-")


def test_reads_while_the_server_is_away_are_answered_from_what_the_tracker_saw(tracker, link):
    other = server_client(link)  # another process's run, read before the outage
    experiment_id = other.get_experiment_by_name(tracker.experiment_name).experiment_id
    theirs = other.create_run(experiment_id, run_name="stage/stage0").info.run_id
    other.log_metric(theirs, "eval/category/code", 0.25, step=5)
    other.log_dict(theirs, {"weights": {"code": 0.6}}, "rebalance/proposal.json")
    assert tracker.latest_metrics(theirs) == {"eval/category/code": 0.25}
    assert tracker.load_dict(theirs, "rebalance/proposal.json") == {"weights": {"code": 0.6}}
    assert tracker.load_dict(theirs, "rebalance/inputs.json") is None
    ours = tracker.start_run("stage/stage1")  # created before the outage too
    tracker.log_metrics(ours, {"eval/category/math": 0.5}, step=10)
    tracker.log_dict(ours, {"weights": {"math": 0.4}}, "rebalance/proposal.json")
    child = tracker.start_run("train/stage1", parent_run_id=ours)
    tracker.flush()

    cut_after_the_health_check(tracker, link)  # the first read passes the check, then fails
    assert tracker.latest_metrics(theirs) == {"eval/category/code": 0.25}
    tracker.log_metrics(ours, {"eval/category/math": 0.75}, step=20)  # journaled, and seen
    assert tracker.latest_metrics(ours) == {"eval/category/math": 0.75}
    assert tracker.load_dict(ours, "rebalance/proposal.json") == {"weights": {"math": 0.4}}
    assert tracker.load_dict(theirs, "rebalance/proposal.json") == {"weights": {"code": 0.6}}
    assert tracker.load_dict(theirs, "rebalance/inputs.json") is None
    assert [run for run, _ in tracker.child_runs(ours)] == [child]
    with pytest.raises(TrackingServerAway) as away:  # never seen: only the server could say
        tracker.load_dict(theirs, "summary.json")
    message = str(away.value)
    assert isinstance(away.value, OSError) and "\n" not in message
    assert link.uri in message and "summary.json" in message and theirs in message
    with pytest.raises(TrackingServerAway, match="nested"):
        tracker.child_runs(theirs)


def _run_of(client, experiment_id: str, name: str, tags: dict[str, str]) -> str:
    return client.create_run(experiment_id, run_name=name, tags=tags).info.run_id


def test_a_run_of_another_host_is_killed_when_its_heartbeat_is_older_than_the_timeout(tmp_path):
    config = TrackingConfig(experiment="hosts", stale_after_seconds=600)
    tracker = MLflowTracker(config, tmp_path / "work")  # a SQLite store: the stale policy is the same
    client, experiment_id = tracker.client, tracker._experiment_id()
    elsewhere = {"smollm.host": "node-7", "smollm.pid": "4242", "smollm.pid_start": "1"}
    now = time.time()
    silent = _run_of(client, experiment_id, "silent", {**elsewhere, HEARTBEAT: str(now - 3600)})
    beating = _run_of(client, experiment_id, "beating", {**elsewhere, HEARTBEAT: str(now - 60)})
    waiting = _run_of(client, experiment_id, "waiting", {**elsewhere, HEARTBEAT: str(now - 3600)})
    _run_of(client, experiment_id, "torchrun", {**elsewhere, HEARTBEAT: str(now - 30), "mlflow.parentRunId": waiting})
    unknown = _run_of(client, experiment_id, "older code", {**elsewhere})

    MLflowTracker(config, tmp_path / "work")  # the next start
    status = {run: client.get_run(run).info.status for run in (silent, beating, waiting, unknown)}
    assert status == {silent: "KILLED", beating: "RUNNING", waiting: "RUNNING", unknown: "RUNNING"}
    assert client.get_run(silent).data.tags["smollm.reconciled"]


def test_a_process_beats_its_open_runs_at_most_every_heartbeat_seconds(tmp_path):
    config = TrackingConfig(experiment="beats", heartbeat_seconds=1.0, stale_after_seconds=600)
    tracker = MLflowTracker(config, tmp_path / "work")

    def beats() -> dict[str, float]:
        return {run: float(tracker.client.get_run(run).data.tags[HEARTBEAT]) for run in (parent, child, done)}

    parent = tracker.start_run("stage/stage1")
    child = tracker.start_run("train/stage1", parent_run_id=parent)
    done = tracker.start_run("eval/stage1", parent_run_id=parent)
    first = beats()
    assert all(abs(beat - time.time()) < 60 for beat in first.values())  # the first beat, at the start
    tracker.end_run(done)
    time.sleep(1.1)
    tracker.log_metrics(child, {"train/loss": 2.0}, step=1)  # buffered; the beat is sent
    second = beats()
    assert second[parent] > first[parent] and second[child] > first[child]  # the silent parent too
    assert second[done] == first[done]  # ended: no longer beaten
    tracker.log_metrics(child, {"train/loss": 1.5}, step=2)
    assert beats() == second  # at most every heartbeat_seconds
    time.sleep(1.1)
    tracker.set_tags(parent, {"smollm.stopped": "no"})  # any write beats
    assert beats()[child] > second[child]
