"""Tasks of a sweep: one member (an annealing run or a data ablation), and the sweep's summary.

A member may run in a process of Prefect's process pool (`flows/workers.py`): everything it
needs arrives in its `MemberJob` (its thread count included, so concurrent members share the
cores), and it opens its own tracker in that process (a warm worker has opened it already). Its
MLflow run records the process: `smollm.worker.pid`, `smollm.worker.warmed` (its libraries were
imported before its first member) and `smollm.worker.members_before`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run

from smollm import preload
from smollm.results import MemberJob, MemberResult
from smollm.runs import tracked_member
from smollm.steps import atomic_write_text
from smollm.sweep import format_table, plot_deltas
from smollm.tracking import Tracker, make_tracker
from tasks.common import TASK_OPTIONS, artifact_key


@task(name="sweep-member", task_run_name="member-{job.name}", **TASK_OPTIONS)
def member_task(job: MemberJob) -> MemberResult:
    tracker = make_tracker(job.cfg.tracking, Path(job.cfg.workdir))
    # `preload.RECORD`, not a name bound here: Prefect's pool pickles this function by value
    tracker.set_tags(job.run_id, preload.RECORD.tags())
    preload.RECORD.members += 1
    return tracked_member(job, tracker, flow_run_id=flow_run.id)


@task(name="sweep-summary", **TASK_OPTIONS)
def summary_task(
    folder: Path, rows: list[dict[str, Any]], records: list[dict[str, Any]], tracker: Tracker, run_id: str, title: str
) -> Path | None:
    """The summary as JSON + Markdown + PNG in `folder` (atomic), on the sweep's MLflow run, and
    as Prefect artifacts; the chart's path (None without deltas)."""
    table = format_table(rows)
    tracker.log_dict(run_id, records, "sweep/runs.json")
    atomic_write_text(folder / "summary.json", json.dumps(rows, indent=2))
    atomic_write_text(folder / "summary.md", f"# {title}\n\n{table}\n")
    tmp = plot_deltas(rows, folder / ".deltas.png.tmp.png", title)
    chart = None
    if tmp is not None:
        chart = folder / "deltas.png"
        os.replace(tmp, chart)
        tracker.log_artifact(run_id, chart, "sweep")
    tracker.log_dict(run_id, rows, "sweep/summary.json")
    tracker.log_artifact(run_id, folder / "summary.md", "sweep")
    for row in rows:
        tracker.log_metrics(
            run_id, {f"{row['member']}/{k}": v for k, v in row.items() if k.startswith(("score/", "delta/"))}, step=0
        )
    key = artifact_key("sweep", folder.name)
    create_table_artifact(key=key, table=rows, description=f"{title}: score and delta vs control per category")
    chart_line = f"\n\nChart of the deltas: `{chart}`" if chart else ""
    create_markdown_artifact(key=f"{key}-summary", markdown=f"### {title}\n\n{table}{chart_line}")
    return chart
