"""What the MLflow tracker does when the tracking server is away, and after a killed process.

- `Journal`: while the server is unreachable (at start or mid-run), every write (a new run, its
  params, tags, metrics, artifacts, its end) is appended to this process's journal in
  `<workdir>/mlflow-buffer/` (fsynced). A run started offline gets a local id (`offline-…`).
  When the server answers again the journals are replayed in order, oldest first: offline runs
  are created (their local ids mapped to real ones, kept in `ids.json`, so other processes'
  journals resolve them too), then everything else; nothing is dropped, and a process that dies
  meanwhile leaves its journal to the next one. Reads of an offline run are answered from it.
- `owner_tags` / `stale_runs`: every run records the host, pid and process start time that own
  it; at the next start, a RUNNING run whose owner process is gone is marked KILLED.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

OFFLINE_PREFIX = "offline-"


class Journal:
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
            if r["op"] == "start_run" and r["tags"].get("mlflow.parentRunId") == run_id
        ]


def process_start_time(pid: int) -> int | None:
    """When process `pid` started (clock ticks after boot; None if it is gone or a zombie): with
    the pid, this names one process for good, whatever later reuses the pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else int(fields[19])


def owner_tags() -> dict[str, str]:
    """The tags naming this process as a run's owner."""
    pid = os.getpid()
    return {
        "smollm.host": socket.gethostname(),
        "smollm.pid": str(pid),
        "smollm.pid_start": str(process_start_time(pid)),
    }


def owner_alive(tags: dict[str, str]) -> bool:
    """Whether the process that started a run (on this host) still runs; True for another host."""
    if tags.get("smollm.host") != socket.gethostname() or "smollm.pid" not in tags:
        return True
    return str(process_start_time(int(tags["smollm.pid"]))) == tags.get("smollm.pid_start")


def stale_runs(client, experiment_id: str) -> list[str]:
    """RUNNING runs of the experiment whose owner process (on this host) is gone."""
    runs = client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=10000)
    return [run.info.run_id for run in runs if not owner_alive(dict(run.data.tags))]
