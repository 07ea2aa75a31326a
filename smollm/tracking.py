"""Experiment tracking: a small interface, an MLflow implementation and a null one for tests.

Runs are addressed by id and nested through `parent_run_id` (MLflow's active-run stack is
thread-local, and Prefect tasks run in threads), so nothing here relies on `mlflow.start_run`.
Metrics are buffered and sent with `log_batch`, a thousand at a time. While a tracking server
is unreachable, or when it goes away during a call, writes go to an on-disk journal and are
delivered when it is back, and reads are answered from what this process wrote and read before;
RUNNING runs whose owner is gone (a killed process here, a silent heartbeat on another host) are
marked KILLED when a tracker next starts (`tracking_faults.py`).
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar

from smollm.config import TrackingConfig
from smollm.tracking_faults import (
    HEARTBEAT,
    OFFLINE_PREFIX,
    PARENT,
    Journal,
    Mirror,
    heartbeat,
    is_outage,
    owner_tags,
    stale_runs,
)

MAX_BATCH = 1000
T = TypeVar("T")


EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
"""Marks an experiment as model training: the MLflow UI then opens it on its runs (not traces)."""


class Tracker(Protocol):
    def start_run(
        self, name: str, *, parent_run_id: str | None = None, tags: Mapping[str, str] | None = None
    ) -> str: ...
    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None: ...
    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int) -> None: ...
    def log_dict(self, run_id: str, data: Any, artifact_file: str) -> None: ...
    def log_text(self, run_id: str, text: str, artifact_file: str) -> None: ...
    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None: ...
    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None: ...
    def flush(self) -> None: ...
    def end_run(self, run_id: str, status: str = "FINISHED") -> None: ...
    def latest_metrics(self, run_id: str) -> dict[str, float]: ...
    def load_dict(self, run_id: str, artifact_file: str) -> Any | None: ...
    def child_runs(self, run_id: str) -> list[tuple[str, dict[str, str]]]: ...


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}`; lists are indexed."""
    items: Iterable[tuple[Any, Any]]
    if isinstance(data, Mapping):
        items = data.items()
    elif isinstance(data, list | tuple):
        items = enumerate(data)
    else:
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in items:
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def tracking_uri(config: TrackingConfig, workdir: Path) -> str:
    """The configured URI, or a SQLite store inside the work dir."""
    return config.uri or f"sqlite:///{(Path(workdir) / 'mlflow.db').resolve()}"


class MLflowTracker:
    """Talks to an MLflow tracking store through `MlflowClient`. While a tracking server is away
    (or goes away during a call) writes are journaled (`tracking_faults.Journal`) and replayed
    when it is back, and reads are answered from what this process saw (`tracking_faults.Mirror`)."""

    def __init__(self, config: TrackingConfig, workdir: Path) -> None:
        from mlflow.tracking import MlflowClient

        self.uri = tracking_uri(config, workdir)
        self.client = MlflowClient(tracking_uri=self.uri)
        self.experiment_name, self.workdir = config.experiment, Path(workdir)
        self.heartbeat_seconds, self.stale_after = config.heartbeat_seconds, config.stale_after_seconds
        self.experiment_id: str | None = None
        self._pending: dict[str, list] = {}
        self.buffer, self.mirror = Journal(self.workdir / "mlflow-buffer"), Mirror(self.uri)
        self._down, self._replaying = False, False
        self._open: set[str] = set()  # runs this process writes to and has not ended: it beats them
        self._last_beat = time.monotonic()
        if self._online():
            self._attempt(self._reconcile_stale)

    def _reconcile_stale(self) -> None:
        for run_id in stale_runs(self.client, self._experiment_id(), self.stale_after):
            self._reconcile(run_id)

    def _reconcile(self, run_id: str) -> None:
        """Mark a RUNNING run whose owner is gone KILLED. Processes starting together (a sweep's
        members) may reconcile the same run at once: the second finds it done."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.set_tag(
                run_id,
                "smollm.reconciled",
                "its process was gone at the next start (ended on this host, or no heartbeat from another host "
                f"for {self.stale_after:g} s)",
            )
            self.client.set_terminated(run_id, status="KILLED")
        except MlflowException as error:
            if is_outage(error) or self.client.get_run(run_id).data.tags.get("smollm.reconciled") is None:
                raise

    def _experiment_id(self) -> str:
        if self.experiment_id is None:
            self.experiment_id = self._experiment(self.experiment_name, self.workdir)
        return self.experiment_id

    def _experiment(self, name: str, workdir: Path) -> str:
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            experiment_id = experiment.experiment_id
            if EXPERIMENT_KIND not in experiment.tags:
                self.client.set_experiment_tag(experiment_id, EXPERIMENT_KIND, MODEL_TRAINING)
            return experiment_id
        location = None
        if self.uri.startswith("sqlite:"):
            location = (workdir / "mlartifacts").resolve().as_uri()
        return self.client.create_experiment(name, artifact_location=location, tags={EXPERIMENT_KIND: MODEL_TRAINING})

    # -- reaching the server --------------------------------------------------------------
    def _reachable(self) -> bool:
        """A tracking server answers its health check (a local store always does)."""
        if not self.uri.startswith(("http://", "https://")):
            return True
        import urllib.request

        try:
            with urllib.request.urlopen(f"{self.uri.rstrip('/')}/health", timeout=2):
                return True
        except OSError:
            return False

    def _went_away(self) -> None:
        if not self._down:
            print(
                f"warning: MLflow at {self.uri} is unreachable; training goes on, runs and metrics are "
                f"kept in {self.buffer.folder} and sent when it is back",
                file=sys.stderr,
            )
        self._down = True

    def _online(self) -> bool:
        """Whether to talk to the server now: it answers, and what was journaled has been sent
        (a replay the server drops midway goes on from there next time)."""
        if self._replaying:
            return True
        if not self._reachable():
            self._went_away()
            return False
        self._down = False
        if self.buffer:
            self._replaying = True
            try:
                self._experiment_id()
                sent = self.buffer.replay(self._apply)
            except Exception as error:
                if not is_outage(error):
                    raise
                self._went_away()
                return False
            finally:
                self._replaying = False
            print(f"MLflow at {self.uri} is back: delivered {sent} journaled records", file=sys.stderr)
        return True

    def _attempt(self, call: Callable[[], T]) -> tuple[bool, T | None]:
        """(True, what `call` returned), or (False, None) if the server went away during it. Any
        other error raises, and so does an outage during a replay (its record stays journaled)."""
        try:
            return True, call()
        except Exception as error:
            if self._replaying or not is_outage(error):
                raise
            self._went_away()
            return False, None

    def _real(self, run_id: str) -> str:
        return self.buffer.ids.get(run_id, run_id) if run_id.startswith(OFFLINE_PREFIX) else run_id

    def _offline(self, run_id: str) -> bool:
        """A run that exists only in the journal so far."""
        return self._real(run_id).startswith(OFFLINE_PREFIX)

    def _apply(self, record: dict[str, Any]) -> None:
        op = record.pop("op")
        if op == "start_run":
            tags = dict(record["tags"])
            if PARENT in tags:
                tags[PARENT] = self._real(tags[PARENT])
            run = self.client.create_run(self._experiment_id(), run_name=record["name"], tags=tags)
            self.buffer.map_id(record["local_id"], run.info.run_id)
            self.mirror.rename(record["local_id"], run.info.run_id)
            return
        if op == "metrics":
            from mlflow.entities import Metric

            points = [Metric(*point) for point in record.pop("points")]
            self._send_metrics(self._real(record["run_id"]), points)
            return
        record["run_id"] = self._real(record["run_id"])
        getattr(self, op)(**record)

    def _deliver(self, run_id: str, send: Callable[[str], object]) -> bool:
        """Send a write of `run_id` now (True), or False: it is to be journaled, the server being
        away, gone during the call, or the run existing only in the journal so far."""
        if not self._online() or self._offline(run_id):
            return False
        sent, _ = self._attempt(lambda: send(self._real(run_id)))
        if sent:
            self._beat()
        return sent

    def _beat(self) -> None:
        """Refresh the heartbeat of this process's open runs, at most every `heartbeat_seconds`;
        not while the server is away (the first write after it is back does)."""
        if self._replaying or self._down or time.monotonic() - self._last_beat < self.heartbeat_seconds:
            return
        self._last_beat = time.monotonic()
        beat = {HEARTBEAT: heartbeat()}
        for run_id in sorted(self._open):
            if not self._offline(run_id):
                self.set_tags(run_id, beat)

    # -- writes ---------------------------------------------------------------------------
    def start_run(self, name: str, *, parent_run_id: str | None = None, tags: Mapping[str, str] | None = None) -> str:
        all_tags = {**owner_tags(), **dict(tags or {})}
        online = self._online()  # first: its replay may give an offline parent its real id
        if parent_run_id:
            all_tags[PARENT] = self._real(parent_run_id)
        run_id = self._create_run(name, all_tags) if online else None
        if run_id is None:
            run_id = f"{OFFLINE_PREFIX}{uuid.uuid4().hex}"
            self.buffer.append("start_run", local_id=run_id, name=name, tags=all_tags)
        self.mirror.started(run_id, all_tags)
        self._open.add(run_id)
        return run_id

    def _create_run(self, name: str, tags: dict[str, str]) -> str | None:
        """The new run's id, or None when it is to be journaled (its parent is, or the server went)."""
        if tags.get(PARENT, "").startswith(OFFLINE_PREFIX):
            return None
        created = self._attempt(lambda: self.client.create_run(self._experiment_id(), run_name=name, tags=tags))[1]
        return None if created is None else created.info.run_id

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        flat = {str(k): str(v)[:6000] for k, v in flatten(params).items()}
        items = [Param(k, v) for k, v in flat.items()]

        def send(real: str) -> None:
            for start in range(0, len(items), 100):
                self.client.log_batch(real, params=items[start : start + 100])

        if not self._deliver(run_id, send):
            self.buffer.append("log_params", run_id=run_id, params=flat)

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = self._pending.setdefault(run_id, [])
        points = [Metric(k, float(v), now, int(step)) for k, v in metrics.items()]
        batch.extend(points)
        self.mirror.logged(self._real(run_id), [(m.key, m.value, m.step) for m in points])
        self._open.add(run_id)
        if len(batch) >= MAX_BATCH:
            self._flush_run(run_id)
        self._beat()

    def _flush_run(self, run_id: str) -> None:
        """Send a run's buffered metrics; what the server did not get is journaled."""
        batch = self._pending.pop(run_id, [])
        sent = [0]

        def send(real: str) -> None:
            while sent[0] < len(batch):
                self.client.log_batch(real, metrics=batch[sent[0] : sent[0] + MAX_BATCH])
                sent[0] += MAX_BATCH

        if batch and not self._deliver(run_id, send):
            points = [[m.key, m.value, m.timestamp, m.step] for m in batch[sent[0] :]]
            self.buffer.append("metrics", run_id=run_id, points=points)

    def _send_metrics(self, run_id: str, batch: list) -> None:
        for start in range(0, len(batch), MAX_BATCH):
            self.client.log_batch(run_id, metrics=batch[start : start + MAX_BATCH])

    def flush(self) -> None:
        for run_id in list(self._pending):
            self._flush_run(run_id)

    def log_dict(self, run_id: str, data: Any, artifact_file: str) -> None:
        data = json.loads(json.dumps(data))
        self.mirror.stored(self._real(run_id), artifact_file, data)
        if not self._deliver(run_id, lambda real: self.client.log_dict(real, data, artifact_file)):
            self.buffer.append("log_dict", run_id=run_id, data=data, artifact_file=artifact_file)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        if not self._deliver(run_id, lambda real: self.client.log_text(real, text, artifact_file)):
            self.buffer.append("log_text", run_id=run_id, text=text, artifact_file=artifact_file)

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        if not self._deliver(run_id, lambda real: self.client.log_artifact(real, str(path), artifact_path)):
            kept = self.buffer.keep_file(path)
            self.buffer.append("log_artifact", run_id=run_id, path=kept, artifact_path=artifact_path)

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        clean = {k: str(v) for k, v in tags.items()}
        self.mirror.tagged(self._real(run_id), clean)
        items = [RunTag(k, v) for k, v in clean.items()]
        if not self._deliver(run_id, lambda real: self.client.log_batch(real, tags=items)):
            self.buffer.append("set_tags", run_id=run_id, tags=clean)

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self._flush_run(run_id)
        self._open.discard(run_id)
        if not self._deliver(run_id, lambda real: self.client.set_terminated(real, status=status)):
            self.buffer.append("end_run", run_id=run_id, status=status)

    # -- reads: from the server, else (while it is away) from what this process saw ----------
    def _ask(self, call: Callable[[], T]) -> tuple[bool, T | None]:
        return self._attempt(call) if self._online() else (False, None)

    def latest_metrics(self, run_id: str) -> dict[str, float]:
        self._flush_run(run_id)
        if self._offline(run_id):
            return self.buffer.metrics(run_id)
        real = self._real(run_id)
        answered, run = self._ask(lambda: self.client.get_run(real))
        if answered and run is not None:
            self.mirror.read_metrics(real, run.data.metrics)
        return self.mirror.latest(real)

    def child_runs(self, run_id: str) -> list[tuple[str, dict[str, str]]]:
        """The runs nested under `run_id` (id and tags), oldest first."""
        if self._offline(run_id):
            return self.buffer.children(run_id)
        real = self._real(run_id)
        answered, children = self._ask(lambda: self._children(real))
        if answered and children is not None:
            self.mirror.read_children(real, children)
        return self.mirror.children(real)

    def _children(self, run_id: str) -> list[tuple[str, dict[str, str]]]:
        parent = self.client.get_run(run_id)
        runs = self.client.search_runs(
            [parent.info.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
            order_by=["attributes.start_time ASC"],
            max_results=10000,
        )
        return [(r.info.run_id, dict(r.data.tags)) for r in runs]

    def load_dict(self, run_id: str, artifact_file: str) -> Any | None:
        """A JSON artifact of the run (None if it has none at that path)."""
        if self._offline(run_id):
            return self.buffer.artifact(run_id, artifact_file)
        real = self._real(run_id)
        answered, data = self._ask(lambda: self._download_dict(real, artifact_file))
        if answered:
            self.mirror.stored(real, artifact_file, data)
        return self.mirror.artifact(real, artifact_file)

    def _download_dict(self, run_id: str, artifact_file: str) -> Any | None:
        import tempfile

        folder = str(Path(artifact_file).parent) if Path(artifact_file).parent != Path(".") else None
        if Path(artifact_file).name not in {Path(f.path).name for f in self.client.list_artifacts(run_id, folder)}:
            return None
        with tempfile.TemporaryDirectory() as tmp:
            return json.loads(Path(self.client.download_artifacts(run_id, artifact_file, tmp)).read_text())


class NullTracker:
    """Keeps everything in memory; for tests and for `tracking.enabled: false`."""

    def __init__(self) -> None:
        self.runs: dict[str, dict] = {}

    def start_run(self, name: str, *, parent_run_id: str | None = None, tags: Mapping[str, str] | None = None) -> str:
        run_id = f"null-{len(self.runs)}"
        self.runs[run_id] = {
            "name": name,
            "parent": parent_run_id,
            "tags": dict(tags or {}),
            "params": {},
            "metrics": {},
            "artifacts": {},
            "status": "RUNNING",
        }
        return run_id

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        self.runs[run_id]["params"].update(flatten(params))

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.runs[run_id]["metrics"].setdefault(key, []).append((step, float(value)))

    def log_dict(self, run_id: str, data: Any, artifact_file: str) -> None:
        self.runs[run_id]["artifacts"][artifact_file] = json.loads(json.dumps(data))

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.runs[run_id]["artifacts"][artifact_file] = text

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        self.runs[run_id]["artifacts"][str(Path(artifact_path or "") / Path(path).name)] = str(path)

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        self.runs[run_id]["tags"].update(tags)

    def flush(self) -> None:
        pass

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.runs[run_id]["status"] = status

    def latest_metrics(self, run_id: str) -> dict[str, float]:
        return {k: v[-1][1] for k, v in self.runs[run_id]["metrics"].items()}

    def load_dict(self, run_id: str, artifact_file: str) -> Any | None:
        return self.runs[run_id]["artifacts"].get(artifact_file)

    def child_runs(self, run_id: str) -> list[tuple[str, dict[str, str]]]:
        return [(i, dict(r["tags"])) for i, r in self.runs.items() if r["parent"] == run_id]


_TRACKERS: dict[tuple[str, str], MLflowTracker] = {}


def make_tracker(config: TrackingConfig, workdir: Path) -> Tracker:
    """The tracker for a config; one MLflow client per (store, experiment) and process."""
    if not config.enabled:
        return NullTracker()
    key = (tracking_uri(config, workdir), config.experiment)
    if key not in _TRACKERS:
        _TRACKERS[key] = MLflowTracker(config, workdir)
    return _TRACKERS[key]
