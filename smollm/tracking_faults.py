"""What the MLflow tracker does when the tracking server goes away, and after a killed process.

- `OfflineBuffer`: metric points (and run ends) that could not reach the server are appended to
  a journal per run (`<workdir>/mlflow-buffer/<run id>.jsonl`, fsynced), and delivered in order
  once the server answers again; nothing is dropped, and a process that dies meanwhile leaves
  them for the next one.
- `owner_tags` / `stale_runs`: every run records the host, pid and process start time that own
  it; at the next start, a RUNNING run whose owner process is gone is marked KILLED.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Any


class OfflineBuffer:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _append(self, run_id: str, records: Iterable[dict[str, Any]]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / f"{run_id}.jsonl", "a") as journal:
            for record in records:
                journal.write(json.dumps(record) + "\n")
            journal.flush()
            os.fsync(journal.fileno())

    def add_metrics(self, run_id: str, metrics: list) -> None:
        self._append(
            run_id, ({"key": m.key, "value": m.value, "timestamp": m.timestamp, "step": m.step} for m in metrics)
        )

    def add_end(self, run_id: str, status: str) -> None:
        self._append(run_id, [{"end": status}])

    def __bool__(self) -> bool:
        return self.folder.is_dir() and any(self.folder.glob("*.jsonl"))

    def deliver(self, client, batch_size: int = 1000) -> int:
        """Send every journal, oldest record first; a journal is removed once all of it is sent."""
        from mlflow.entities import Metric

        sent = 0
        for journal in sorted(self.folder.glob("*.jsonl")) if self.folder.is_dir() else []:
            run_id = journal.stem
            records = [json.loads(line) for line in journal.read_text().splitlines() if line.strip()]
            metrics = [Metric(r["key"], r["value"], r["timestamp"], r["step"]) for r in records if "key" in r]
            for start in range(0, len(metrics), batch_size):
                client.log_batch(run_id, metrics=metrics[start : start + batch_size])
            for record in records:
                if "end" in record:
                    client.set_terminated(run_id, status=record["end"])
            journal.unlink()
            sent += len(metrics)
        return sent


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def owner_tags() -> dict[str, str]:
    """The tags naming this process as a run's owner."""
    pid = os.getpid()
    return {"smollm.host": socket.gethostname(), "smollm.pid": str(pid), "smollm.pid_start": str(_start_time(pid))}


def owner_alive(tags: dict[str, str]) -> bool:
    """Whether the process that started a run (on this host) still runs; True for another host."""
    if tags.get("smollm.host") != socket.gethostname() or "smollm.pid" not in tags:
        return True
    return _start_time(int(tags["smollm.pid"])) == tags.get("smollm.pid_start")


def stale_runs(client, experiment_id: str) -> list[str]:
    """RUNNING runs of the experiment whose owner process (on this host) is gone."""
    runs = client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=10000)
    return [run.info.run_id for run in runs if not owner_alive(dict(run.data.tags))]
