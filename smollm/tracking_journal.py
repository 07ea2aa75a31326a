"""Where the MLflow tracker keeps what a tracking server that is away did not get, and what it
answers reads with meanwhile.

- `Journal`: every write the server did not get (a new run, its params, tags, metrics,
  artifacts, its end) is appended to this process's journal in `<workdir>/mlflow-buffer/`
  (fsynced) instead of raising. A run started offline gets a local id (`offline-…`). When the
  server answers again the journals are replayed in order, oldest first: offline runs are
  created (their local ids mapped to real ones, kept in `ids.json`, so other processes' journals
  resolve them too), then everything else; nothing is dropped, and a process that dies meanwhile
  leaves its journal to the next one. A replay the server drops midway stops at that record and
  goes on from it next time.
- `Mirror`: reads while the server is away. A run that exists only in the journal is read from
  it; any other run from what this process wrote to it or read of it before (latest metrics,
  JSON artifacts, nested runs). What it has not seen raises `TrackingServerAway`, one line (an
  `OSError`, so Prefect retries the task).

When to journal and when to replay is `tracking_link.py`'s; what an outage is, `tracking_faults.py`'s.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smollm.tracking_faults import PARENT, process_start_time

OFFLINE_PREFIX = "offline-"


class TrackingServerAway(OSError):
    """A read that only the tracking server can answer, while it is away."""


class Journal:
    """This process's append-only record of the writes the server did not get."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / f"{time.time_ns()}-{os.getpid()}.jsonl"

    def append(self, op: str, **fields: Any) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as journal:
            journal.write(json.dumps({"op": op, **fields}) + "\n")
            journal.flush()
            os.fsync(journal.fileno())

    def keep_file(self, path: Path) -> str:
        """A copy of an artifact file that must outlive the outage."""
        kept = self.folder / "files" / uuid.uuid4().hex / Path(path).name
        kept.parent.mkdir(parents=True)
        shutil.copy2(path, kept)
        return str(kept)

    def journals(self) -> list[Path]:
        return sorted(self.folder.glob("*.jsonl")) if self.folder.is_dir() else []

    def __bool__(self) -> bool:
        return bool(self.journals())

    def records(self) -> Iterator[dict[str, Any]]:
        for journal in self.journals():
            for line in journal.read_text().splitlines():
                if line.strip():
                    yield json.loads(line)

    @property
    def ids(self) -> dict[str, str]:
        file = self.folder / "ids.json"
        return json.loads(file.read_text()) if file.is_file() else {}

    def map_id(self, local: str, real: str) -> None:
        ids = {**self.ids, local: real}
        tmp = self.folder / f".ids.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(ids))
        os.replace(tmp, self.folder / "ids.json")

    def replay(self, apply: Callable[[dict[str, Any]], None]) -> int:
        """Apply every record in order: this process's journal and those of processes that are
        gone (a live one replays its own). A journal is removed once all of it is applied;
        progress is kept per record, so an interrupted replay does not repeat what it sent."""
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            return self._replay(apply)

    def _replay(self, apply: Callable[[dict[str, Any]], None]) -> int:
        applied = 0
        for journal in self.journals():
            pid = int(journal.stem.split("-")[1])
            if journal != self.path and pid != os.getpid() and process_start_time(pid) is not None:
                continue  # another live process's: it replays it itself
            progress = journal.with_suffix(".done")
            done = int(progress.read_text()) if progress.is_file() else 0
            lines = [line for line in journal.read_text().splitlines() if line.strip()]
            for index in range(done, len(lines)):
                apply(json.loads(lines[index]))
                progress.write_text(str(index + 1))
                applied += 1
            journal.unlink()
            progress.unlink(missing_ok=True)
        return applied

    # reads of runs that exist only here
    def metrics(self, run_id: str) -> dict[str, float]:
        latest: dict[str, tuple[int, float]] = {}
        for record in self.records():
            if record["op"] == "metrics" and record["run_id"] == run_id:
                for key, value, _, step in record["points"]:
                    if key not in latest or step >= latest[key][0]:
                        latest[key] = (step, value)
        return {key: value for key, (_, value) in latest.items()}

    def artifact(self, run_id: str, artifact_file: str) -> Any | None:
        found = None
        for record in self.records():
            if record["op"] == "log_dict" and record["run_id"] == run_id and record["artifact_file"] == artifact_file:
                found = record["data"]
        return found

    def children(self, run_id: str) -> list[tuple[str, dict[str, str]]]:
        return [
            (r["local_id"], r["tags"])
            for r in self.records()
            if r["op"] == "start_run" and r["tags"].get(PARENT) == run_id
        ]


@dataclass
class Seen:
    """What this process knows of one run. None: never read, nor written by this process."""

    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, tuple[float, float]] | None = None
    """The latest value of each metric, with its step (-inf for one read from the server)."""
    dicts: dict[str, Any] = field(default_factory=dict)
    """JSON artifacts by path; None for one the server said the run does not have."""
    children: list[str] | None = None


class Mirror:
    """What this process wrote to the tracking server and read from it, per run: the answers to
    reads while it is away."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.runs: dict[str, Seen] = {}

    def _run(self, run_id: str) -> Seen:
        return self.runs.setdefault(run_id, Seen())

    def started(self, run_id: str, tags: Mapping[str, str]) -> None:
        self._run(run_id).tags.update(tags)
        if PARENT in tags:
            parent = self._run(tags[PARENT])
            parent.children = [*(parent.children or []), run_id]

    def tagged(self, run_id: str, tags: Mapping[str, str]) -> None:
        self._run(run_id).tags.update(tags)

    def logged(self, run_id: str, points: Iterable[tuple[str, float, float]]) -> None:
        """Metric points (key, value, step) written: the one at the highest step is the latest."""
        seen = self._run(run_id)
        latest = seen.metrics if seen.metrics is not None else {}
        for key, value, step in points:
            if key not in latest or step >= latest[key][0]:
                latest[key] = (step, value)
        seen.metrics = latest

    def read_metrics(self, run_id: str, metrics: Mapping[str, float]) -> None:
        self._run(run_id).metrics = {key: (float("-inf"), value) for key, value in metrics.items()}

    def stored(self, run_id: str, artifact_file: str, data: Any) -> None:
        self._run(run_id).dicts[artifact_file] = json.loads(json.dumps(data))

    def read_children(self, run_id: str, children: list[tuple[str, dict[str, str]]]) -> None:
        for child, tags in children:
            self._run(child).tags = dict(tags)
        self._run(run_id).children = [child for child, _ in children]

    def rename(self, local: str, real: str) -> None:
        """An offline run was created on the server: what was kept under its local id moves."""
        if local in self.runs:
            seen = self.runs.pop(local)
            self.runs[real] = seen
        for seen in self.runs.values():
            if seen.children and local in seen.children:
                seen.children = [real if child == local else child for child in seen.children]

    # answers
    def latest(self, run_id: str) -> dict[str, float]:
        metrics = self.runs[run_id].metrics if run_id in self.runs else None
        if metrics is None:
            raise self._away("the metrics", run_id)
        return {key: value for key, (_, value) in metrics.items()}

    def artifact(self, run_id: str, artifact_file: str) -> Any | None:
        if run_id not in self.runs or artifact_file not in self.runs[run_id].dicts:
            raise self._away(artifact_file, run_id)
        return json.loads(json.dumps(self.runs[run_id].dicts[artifact_file]))

    def children(self, run_id: str) -> list[tuple[str, dict[str, str]]]:
        children = self.runs[run_id].children if run_id in self.runs else None
        if children is None:
            raise self._away("the runs nested under", run_id)
        return [(child, dict(self._run(child).tags)) for child in children]

    def _away(self, what: str, run_id: str) -> TrackingServerAway:
        return TrackingServerAway(
            f"the MLflow tracking server at {self.uri} is away, and this process has not seen {what} of run {run_id}"
        )
