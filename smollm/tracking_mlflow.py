"""The MLflow tracker: the `tracking.Tracker` interface over an MLflow tracking store.

Runs are addressed by id and nested through `parent_run_id` (MLflow's active-run stack is
thread-local, and Prefect tasks run in threads), so nothing here relies on `mlflow.start_run`.
Metrics are buffered and sent with `log_batch`, a thousand at a time. While a tracking server
is unreachable, or when it goes away during a call (`tracking_link.py`), writes go to an on-disk
journal and are delivered when it is back, and reads are answered from what this process wrote
and read before (`tracking_journal.py`); RUNNING runs whose owner is gone (a killed process
here, a silent heartbeat on another host) are marked KILLED when a tracker starts
(`tracking_faults.py`).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from smollm.config import TrackingConfig
from smollm.tracking_faults import HEARTBEAT, PARENT, heartbeat, owner_tags, reconcile_stale_runs
from smollm.tracking_journal import OFFLINE_PREFIX, Journal, Mirror
from smollm.tracking_link import ServerLink

MAX_BATCH = 1000

EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
"""Marks an experiment as model training: the MLflow UI then opens it on its runs (not traces)."""


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested params as MLflow keeps them: `{"a": {"b": 1}}` -> `{"a.b": 1}`; lists are indexed."""
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
    (or goes away during a call: `tracking_link.ServerLink`) writes are journaled
    (`tracking_journal.Journal`) and replayed when it is back, and reads are answered from what
    this process saw (`tracking_journal.Mirror`)."""

    def __init__(self, config: TrackingConfig, workdir: Path) -> None:
        from mlflow.tracking import MlflowClient

        self.uri = tracking_uri(config, workdir)
        self.client = MlflowClient(tracking_uri=self.uri)
        self.experiment_name, self.workdir = config.experiment, Path(workdir)
        self.heartbeat_seconds, self.stale_after = config.heartbeat_seconds, config.stale_after_seconds
        self.experiment_id: str | None = None
        self._pending: dict[str, list] = {}
        self.buffer, self.mirror = Journal(self.workdir / "mlflow-buffer"), Mirror(self.uri)
        self.link = ServerLink(self.uri, self.buffer, self._replay)
        self._open: set[str] = set()  # runs this process writes to and has not ended: it beats them
        self._last_beat = time.monotonic()
        if self.link.online():
            self.link.attempt(lambda: reconcile_stale_runs(self.client, self._experiment_id(), self.stale_after))

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

    # -- the journal: written while the server is away, replayed when it is back ---------------
    def _replay(self) -> int:
        """Send every journaled record (`ServerLink` calls it before the first call after an outage)."""
        self._experiment_id()
        return self.buffer.replay(self._apply)

    def _apply(self, record: dict[str, Any]) -> None:
        op = record.pop("op")
        if op == "start_run":
            tags = dict(record["tags"])
            if PARENT in tags:
                tags[PARENT] = self.link.real(tags[PARENT])
            run = self.client.create_run(self._experiment_id(), run_name=record["name"], tags=tags)
            self.buffer.map_id(record["local_id"], run.info.run_id)
            self.mirror.rename(record["local_id"], run.info.run_id)
            return
        if op == "metrics":
            from mlflow.entities import Metric

            points = [Metric(*point) for point in record.pop("points")]
            self._send_metrics(self.link.real(record["run_id"]), points)
            return
        record["run_id"] = self.link.real(record["run_id"])
        getattr(self, op)(**record)

    def _deliver(self, run_id: str, send: Callable[[str], object]) -> bool:
        """Send a write of `run_id` now (True), or False: it is to be journaled (`ServerLink.deliver`)."""
        sent = self.link.deliver(run_id, send)
        if sent:
            self._beat()
        return sent

    def _beat(self) -> None:
        """Refresh the heartbeat of this process's open runs, at most every `heartbeat_seconds`;
        not while the server is away (the first write after it is back does)."""
        if self.link.replaying or self.link.down or time.monotonic() - self._last_beat < self.heartbeat_seconds:
            return
        self._last_beat = time.monotonic()
        beat = {HEARTBEAT: heartbeat()}
        for run_id in sorted(self._open):
            if not self.link.offline(run_id):
                self.set_tags(run_id, beat)

    # -- writes ---------------------------------------------------------------------------
    def start_run(self, name: str, *, parent_run_id: str | None = None, tags: Mapping[str, str] | None = None) -> str:
        all_tags = {**owner_tags(), **dict(tags or {})}
        online = self.link.online()  # first: its replay may give an offline parent its real id
        if parent_run_id:
            all_tags[PARENT] = self.link.real(parent_run_id)
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
        created = self.link.attempt(lambda: self.client.create_run(self._experiment_id(), run_name=name, tags=tags))[1]
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
        self.mirror.logged(self.link.real(run_id), [(m.key, m.value, m.step) for m in points])
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
        self.mirror.stored(self.link.real(run_id), artifact_file, data)
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
        self.mirror.tagged(self.link.real(run_id), clean)
        items = [RunTag(k, v) for k, v in clean.items()]
        if not self._deliver(run_id, lambda real: self.client.log_batch(real, tags=items)):
            self.buffer.append("set_tags", run_id=run_id, tags=clean)

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self._flush_run(run_id)
        self._open.discard(run_id)
        if not self._deliver(run_id, lambda real: self.client.set_terminated(real, status=status)):
            self.buffer.append("end_run", run_id=run_id, status=status)

    # -- reads: from the server, else (while it is away) from what this process saw ----------
    def latest_metrics(self, run_id: str) -> dict[str, float]:
        self._flush_run(run_id)
        if self.link.offline(run_id):
            return self.buffer.metrics(run_id)
        real = self.link.real(run_id)
        answered, run = self.link.ask(lambda: self.client.get_run(real))
        if answered and run is not None:
            self.mirror.read_metrics(real, run.data.metrics)
        return self.mirror.latest(real)

    def child_runs(self, run_id: str) -> list[tuple[str, dict[str, str]]]:
        """The runs nested under `run_id` (id and tags), oldest first."""
        if self.link.offline(run_id):
            return self.buffer.children(run_id)
        real = self.link.real(run_id)
        answered, children = self.link.ask(lambda: self._children(real))
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
        if self.link.offline(run_id):
            return self.buffer.artifact(run_id, artifact_file)
        real = self.link.real(run_id)
        answered, data = self.link.ask(lambda: self._download_dict(real, artifact_file))
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
