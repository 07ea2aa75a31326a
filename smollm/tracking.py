"""Experiment tracking: a small interface, an MLflow implementation and a null one for tests.

Runs are addressed by id and nested through `parent_run_id` (MLflow's active-run stack is
thread-local, and Prefect tasks run in threads), so nothing here relies on `mlflow.start_run`.
Metrics are buffered and sent with `log_batch`, a thousand at a time. While a tracking server
is unreachable they go to an on-disk journal and are delivered when it is back; RUNNING runs
whose process was killed are marked KILLED when a tracker next starts (`tracking_faults.py`).
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from smollm.config import TrackingConfig
from smollm.tracking_faults import OFFLINE_PREFIX, Journal, owner_tags, stale_runs

MAX_BATCH = 1000


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
    """Talks to an MLflow tracking store through `MlflowClient`; journals writes while a
    tracking server is away (`tracking_faults.Journal`) and replays them when it is back."""

    def __init__(self, config: TrackingConfig, workdir: Path) -> None:
        from mlflow.tracking import MlflowClient

        self.uri = tracking_uri(config, workdir)
        self.client = MlflowClient(tracking_uri=self.uri)
        self.experiment_name, self.workdir = config.experiment, Path(workdir)
        self.experiment_id: str | None = None
        self._pending: dict[str, list] = {}
        self.buffer = Journal(self.workdir / "mlflow-buffer")
        self._down, self._replaying = False, False
        if self._online():
            for run_id in stale_runs(self.client, self._experiment_id()):
                self._reconcile(run_id)

    def _reconcile(self, run_id: str) -> None:
        """Mark a RUNNING run whose process is gone KILLED. Processes starting together (a
        sweep's members) may reconcile the same run at once: the second finds it done."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.set_tag(run_id, "smollm.reconciled", "its process was gone at the next start")
            self.client.set_terminated(run_id, status="KILLED")
        except MlflowException:
            if self.client.get_run(run_id).data.tags.get("smollm.reconciled") is None:
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

    def _online(self) -> bool:
        """Whether to talk to the server now: it answers, and what was journaled has been sent."""
        if self._replaying:
            return True
        if not self._reachable():
            if not self._down:
                print(
                    f"warning: MLflow at {self.uri} is unreachable; training goes on, runs and metrics are "
                    f"kept in {self.buffer.folder} and sent when it is back",
                    file=sys.stderr,
                )
            self._down = True
            return False
        self._down = False
        if self.buffer:
            self._replaying = True
            try:
                self._experiment_id()
                sent = self.buffer.replay(self._apply)
            finally:
                self._replaying = False
            print(f"MLflow at {self.uri} is back: delivered {sent} journaled records", file=sys.stderr)
        return True

    def _real(self, run_id: str) -> str:
        return self.buffer.ids.get(run_id, run_id) if run_id.startswith(OFFLINE_PREFIX) else run_id

    def _offline(self, run_id: str) -> bool:
        """A run that exists only in the journal so far."""
        return self._real(run_id).startswith(OFFLINE_PREFIX)

    def _apply(self, record: dict[str, Any]) -> None:
        op = record.pop("op")
        if op == "start_run":
            tags = dict(record["tags"])
            if "mlflow.parentRunId" in tags:
                tags["mlflow.parentRunId"] = self._real(tags["mlflow.parentRunId"])
            run = self.client.create_run(self._experiment_id(), run_name=record["name"], tags=tags)
            self.buffer.map_id(record["local_id"], run.info.run_id)
            return
        if op == "metrics":
            from mlflow.entities import Metric

            points = [Metric(*point) for point in record.pop("points")]
            self._send_metrics(self._real(record["run_id"]), points)
            return
        record["run_id"] = self._real(record["run_id"])
        getattr(self, op)(**record)

    # -- writes ---------------------------------------------------------------------------
    def start_run(self, name: str, *, parent_run_id: str | None = None, tags: Mapping[str, str] | None = None) -> str:
        all_tags = {**owner_tags(), **dict(tags or {})}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        if self._online() and not (parent_run_id and self._offline(parent_run_id)):
            if parent_run_id:
                all_tags["mlflow.parentRunId"] = self._real(parent_run_id)
            run = self.client.create_run(self._experiment_id(), run_name=name, tags=all_tags)
            return run.info.run_id
        local_id = f"{OFFLINE_PREFIX}{uuid.uuid4().hex}"
        self.buffer.append("start_run", local_id=local_id, name=name, tags=all_tags)
        return local_id

    def _write(self, op: str, run_id: str, **fields: Any) -> bool:
        """True to send now; else the call is journaled."""
        if self._online() and not self._offline(run_id):
            return True
        self.buffer.append(op, run_id=run_id, **fields)
        return False

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        flat = {str(k): str(v)[:6000] for k, v in flatten(params).items()}
        if self._write("log_params", run_id, params=flat):
            items = [Param(k, v) for k, v in flat.items()]
            for start in range(0, len(items), 100):
                self.client.log_batch(self._real(run_id), params=items[start : start + 100])

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = self._pending.setdefault(run_id, [])
        batch.extend(Metric(k, float(v), now, int(step)) for k, v in metrics.items())
        if len(batch) >= MAX_BATCH:
            self._flush_run(run_id)

    def _flush_run(self, run_id: str) -> None:
        batch = self._pending.pop(run_id, [])
        if not batch:
            return
        if self._online() and not self._offline(run_id):
            try:
                self._send_metrics(self._real(run_id), batch)
                return
            except Exception:
                if self._reachable():
                    raise  # not an outage: a real error
        points = [[m.key, m.value, m.timestamp, m.step] for m in batch]
        self.buffer.append("metrics", run_id=run_id, points=points)

    def _send_metrics(self, run_id: str, batch: list) -> None:
        for start in range(0, len(batch), MAX_BATCH):
            self.client.log_batch(run_id, metrics=batch[start : start + MAX_BATCH])

    def flush(self) -> None:
        for run_id in list(self._pending):
            self._flush_run(run_id)

    def log_dict(self, run_id: str, data: Any, artifact_file: str) -> None:
        if self._write("log_dict", run_id, data=json.loads(json.dumps(data)), artifact_file=artifact_file):
            self.client.log_dict(self._real(run_id), data, artifact_file)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        if self._write("log_text", run_id, text=text, artifact_file=artifact_file):
            self.client.log_text(self._real(run_id), text, artifact_file)

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        if self._replaying or (self._online() and not self._offline(run_id)):
            self.client.log_artifact(self._real(run_id), str(path), artifact_path)
            return
        self.buffer.append("log_artifact", run_id=run_id, path=self.buffer.keep_file(path), artifact_path=artifact_path)

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        clean = {k: str(v) for k, v in tags.items()}
        if self._write("set_tags", run_id, tags=clean):
            self.client.log_batch(self._real(run_id), tags=[RunTag(k, v) for k, v in clean.items()])

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self._flush_run(run_id)
        if self._write("end_run", run_id, status=status):
            self.client.set_terminated(self._real(run_id), status=status)

    # -- reads ----------------------------------------------------------------------------
    def latest_metrics(self, run_id: str) -> dict[str, float]:
        self._flush_run(run_id)
        if self._offline(run_id):
            return self.buffer.metrics(run_id)
        return dict(self.client.get_run(self._real(run_id)).data.metrics)

    def child_runs(self, run_id: str) -> list[tuple[str, dict[str, str]]]:
        """The runs nested under `run_id` (id and tags), oldest first."""
        if self._offline(run_id):
            return self.buffer.children(run_id)
        parent = self.client.get_run(self._real(run_id))
        runs = self.client.search_runs(
            [parent.info.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
            order_by=["attributes.start_time ASC"],
            max_results=10000,
        )
        return [(r.info.run_id, dict(r.data.tags)) for r in runs]

    def load_dict(self, run_id: str, artifact_file: str) -> Any | None:
        """A JSON artifact of the run (None if it has none at that path)."""
        import tempfile

        if self._offline(run_id):
            return self.buffer.artifact(run_id, artifact_file)
        run_id = self._real(run_id)
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
