"""What the MLflow tracker does when the tracking server is away, and after a killed process.

- `Journal`: while the server is unreachable (at start or mid-run), or when it goes away between
  the tracker's health check and a call (a refused, reset or timed-out connection: `is_outage`),
  every write (a new run, its params, tags, metrics, artifacts, its end) is appended to this
  process's journal in `<workdir>/mlflow-buffer/` (fsynced) instead of raising. A run started
  offline gets a local id (`offline-…`). When the server answers again the journals are replayed
  in order, oldest first: offline runs are created (their local ids mapped to real ones, kept in
  `ids.json`, so other processes' journals resolve them too), then everything else; nothing is
  dropped, and a process that dies meanwhile leaves its journal to the next one. A replay the
  server drops midway stops at that record and goes on from it next time. An error the server
  answers with (a bad value) still raises.
- `Mirror`: reads while the server is away. A run that exists only in the journal is read from
  it; any other run from what this process wrote to it or read of it before (latest metrics,
  JSON artifacts, nested runs). What it has not seen raises `TrackingServerAway`, one line (an
  `OSError`, so Prefect retries the task).
- `owner_tags` / `stale_runs`: every run records the host, pid and process start time that own
  it, and a heartbeat (`smollm.heartbeat`, unix seconds) that the owning process refreshes on its
  open runs while it writes, at most every `tracking.heartbeat_seconds`. At the next start a
  RUNNING run is marked KILLED when its owner is gone: on this host, its process has ended; on
  another host, neither it nor a RUNNING run nested under it has beaten for
  `tracking.stale_after_seconds` (one with no heartbeat in it or under it, from older code, is
  left alone).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OFFLINE_PREFIX = "offline-"
HEARTBEAT = "smollm.heartbeat"
PARENT = "mlflow.parentRunId"


class TrackingServerAway(OSError):
    """A read that only the tracking server can answer, while it is away."""


def is_outage(error: BaseException) -> bool:
    """The server could not be reached or went away during the call (a refused, reset or timed-out
    connection, 5xx answers until the retries ran out, a 503 or 504 from a proxy in front of it;
    MLflow's client wraps them in an `MlflowException`), as opposed to an answer refusing the call
    (a bad value, a missing run) or a local error (a missing file)."""
    import requests.exceptions as http

    lost = (
        ConnectionError,
        TimeoutError,
        http.ConnectionError,
        http.Timeout,
        http.RetryError,
        http.ChunkedEncodingError,
    )
    seen: BaseException | None = error
    while seen is not None:
        status = getattr(seen, "get_http_status_code", None)  # an MlflowException's
        if isinstance(seen, lost) or (callable(status) and status() in (503, 504)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


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


def process_start_time(pid: int) -> int | None:
    """When process `pid` started (clock ticks after boot; None if it is gone or a zombie): with
    the pid, this names one process for good, whatever later reuses the pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else int(fields[19])


def heartbeat() -> str:
    """The heartbeat tag's value now: unix seconds."""
    return f"{time.time():.3f}"


def owner_tags() -> dict[str, str]:
    """The tags naming this process as a run's owner, with its first heartbeat."""
    pid = os.getpid()
    return {
        "smollm.host": socket.gethostname(),
        "smollm.pid": str(pid),
        "smollm.pid_start": str(process_start_time(pid)),
        HEARTBEAT: heartbeat(),
    }


def owner_alive(tags: Mapping[str, str]) -> bool:
    """Whether the process that started a run (on this host) still runs; True for another host."""
    if tags.get("smollm.host") != socket.gethostname() or "smollm.pid" not in tags:
        return True
    return str(process_start_time(int(tags["smollm.pid"]))) == tags.get("smollm.pid_start")


def freshest_beats(runs: Mapping[str, Mapping[str, str]]) -> dict[str, float]:
    """Per run, its latest heartbeat or that of a run nested under it (among `runs`, by id): a
    process waiting on another (torchrun, an evaluation) keeps its runs alive through it."""
    freshest: dict[str, float] = {}
    for run_id, tags in runs.items():
        if HEARTBEAT not in tags:
            continue
        beat, current, seen = float(tags[HEARTBEAT]), run_id, set()
        while current in runs and current not in seen:  # up to the outermost run (a cycle ends it)
            seen.add(current)
            freshest[current] = max(beat, freshest.get(current, beat))
            current = runs[current].get(PARENT, "")
    return freshest


def stale_runs(client, experiment_id: str, stale_after: float) -> list[str]:
    """RUNNING runs of the experiment whose owner is gone: on this host, its process has ended; on
    another host, no heartbeat of it or of a run nested under it for `stale_after` seconds."""
    found = client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=10000)
    runs = {run.info.run_id: dict(run.data.tags) for run in found}
    now = time.time()
    silent = {run_id for run_id, beat in freshest_beats(runs).items() if now - beat > stale_after}
    here = socket.gethostname()
    return [
        run_id
        for run_id, tags in runs.items()
        if (not owner_alive(tags) if tags.get("smollm.host") == here else run_id in silent)
    ]
