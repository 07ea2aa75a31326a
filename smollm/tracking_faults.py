"""What goes wrong around the MLflow tracker: the tracking server going away, and processes
that die with runs open.

- `is_outage`: an error means the server could not be reached or went away during a call (a
  refused, reset or timed-out connection, a 503/504 from a proxy), as opposed to an answer
  refusing the call (a bad value, a missing run), which still raises. The tracker journals the
  writes an outage stops (`tracking_journal.py`, `tracking_link.py`).
- `owner_tags` / `stale_runs` / `reconcile_stale_runs`: every run records the host, pid and
  process start time that own it, and a heartbeat (`smollm.heartbeat`, unix seconds) that the
  owning process refreshes on its open runs while it writes, at most every
  `tracking.heartbeat_seconds`. At the next start a RUNNING run is marked KILLED when its owner
  is gone: on this host, its process has ended; on another host, neither it nor a RUNNING run
  nested under it has beaten for `tracking.stale_after_seconds` (one with no heartbeat in it or
  under it, from older code, is left alone).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path

HEARTBEAT = "smollm.heartbeat"
PARENT = "mlflow.parentRunId"


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


def reconcile_stale_runs(client, experiment_id: str, stale_after: float) -> None:
    """Mark KILLED the RUNNING runs of the experiment whose owner is gone (`stale_runs`)."""
    for run_id in stale_runs(client, experiment_id, stale_after):
        reconcile(client, run_id, stale_after)


def reconcile(client, run_id: str, stale_after: float) -> None:
    """Mark a RUNNING run whose owner is gone KILLED. Processes starting together (a sweep's
    members) may reconcile the same run at once: the second finds it done."""
    from mlflow.exceptions import MlflowException

    try:
        client.set_tag(
            run_id,
            "smollm.reconciled",
            "its process was gone at the next start (ended on this host, or no heartbeat from another host "
            f"for {stale_after:g} s)",
        )
        client.set_terminated(run_id, status="KILLED")
    except MlflowException as error:
        if is_outage(error) or client.get_run(run_id).data.tags.get("smollm.reconciled") is None:
            raise
