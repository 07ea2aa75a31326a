"""Experiment tracking: the interface every tracker implements, a null one for tests, and the
tracker for a config.

Steps log to a `Tracker`; `make_tracker` gives the MLflow one (`tracking_mlflow.py`: runs by id,
writes journaled while a tracking server is away, stale runs reconciled) or, with
`tracking.enabled: false`, the in-memory `NullTracker`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from smollm.config import TrackingConfig
from smollm.tracking_mlflow import MLflowTracker, flatten, tracking_uri


class Tracker(Protocol):
    """What steps log to: runs addressed by id, nested through `parent_run_id`."""

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
