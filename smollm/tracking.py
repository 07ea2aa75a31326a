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
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from smollm.config import TrackingConfig
from smollm.tracking_faults import OfflineBuffer, owner_tags, stale_runs

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
    """Talks to an MLflow tracking store through `MlflowClient`."""

    def __init__(self, config: TrackingConfig, workdir: Path) -> None:
        from mlflow.tracking import MlflowClient

        self.uri = tracking_uri(config, workdir)
        self.client = MlflowClient(tracking_uri=self.uri)
        self.experiment_id = self._experiment(config.experiment, Path(workdir))
        self._pending: dict[str, list] = {}
        self.buffer = OfflineBuffer(Path(workdir) / "mlflow-buffer")
        self._down = False
        self._deliver()
        for run_id in stale_runs(self.client, self.experiment_id):
            self.client.set_tag(run_id, "smollm.reconciled", "its process was gone at the next start")
            self.client.set_terminated(run_id, status="KILLED")

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

    def start_run(self, name: str, *, parent_run_id: str | None = None, tags: Mapping[str, str] | None = None) -> str:
        all_tags = {**owner_tags(), **dict(tags or {})}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = self.client.create_run(self.experiment_id, run_name=name, tags=all_tags)
        return run.info.run_id

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(str(k), str(v)[:6000]) for k, v in flatten(params).items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[start : start + 100])

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = self._pending.setdefault(run_id, [])
        batch.extend(Metric(k, float(v), now, int(step)) for k, v in metrics.items())
        if len(batch) >= MAX_BATCH:
            self._flush_run(run_id)

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

    def _deliver(self) -> bool:
        """Send what the journal holds; False (and a warning, once) while the server is away."""
        if not self._reachable():
            if not self._down:
                print(
                    f"warning: MLflow at {self.uri} is unreachable; training goes on, metrics are kept "
                    f"in {self.buffer.folder} and sent when it is back",
                    file=sys.stderr,
                )
            self._down = True
            return False
        if self.buffer:
            sent = self.buffer.deliver(self.client, MAX_BATCH)
            print(f"MLflow at {self.uri} is back: delivered {sent} buffered metric points", file=sys.stderr)
        self._down = False
        return True

    def _flush_run(self, run_id: str) -> None:
        batch = self._pending.pop(run_id, [])
        if not batch:
            return
        if self._deliver():
            try:
                for start in range(0, len(batch), MAX_BATCH):
                    self.client.log_batch(run_id, metrics=batch[start : start + MAX_BATCH])
                return
            except Exception:  # went away mid-send: journal the batch (MLflow deduplicates none; resending
                if self._reachable():  # a partly sent batch only repeats identical points)
                    raise
        self.buffer.add_metrics(run_id, batch)

    def flush(self) -> None:
        for run_id in list(self._pending):
            self._flush_run(run_id)

    def log_dict(self, run_id: str, data: Any, artifact_file: str) -> None:
        self.client.log_dict(run_id, data, artifact_file)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.client.log_text(run_id, text, artifact_file)

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self._flush_run(run_id)
        if self._deliver():
            self.client.set_terminated(run_id, status=status)
        else:
            self.buffer.add_end(run_id, status)

    def latest_metrics(self, run_id: str) -> dict[str, float]:
        self._flush_run(run_id)
        return dict(self.client.get_run(run_id).data.metrics)

    def child_runs(self, run_id: str) -> list[tuple[str, dict[str, str]]]:
        """The runs nested under `run_id` (id and tags), oldest first."""
        parent = self.client.get_run(run_id)
        runs = self.client.search_runs(
            [parent.info.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{run_id}'",
            order_by=["attributes.start_time ASC"],
            max_results=10000,
        )
        return [(r.info.run_id, dict(r.data.tags)) for r in runs]

    def load_dict(self, run_id: str, artifact_file: str) -> Any | None:
        """A JSON artifact of the run (None if it has none at that path)."""
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
