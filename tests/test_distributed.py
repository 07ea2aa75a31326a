"""Multi-process training under torchrun (gloo, 2 CPU processes): the same loss trajectory as one
process with the same global batch, only rank 0 writes checkpoints and logs to MLflow, and a
2-process run killed mid-stage resumes to the uninterrupted trajectory."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import stage_run

pytestmark = pytest.mark.slow
STEPS = 16
TOLERANCE = 1e-4
"""Per-step loss difference allowed between 1 and 2 processes: the same arithmetic up to the
order of float additions (two half-gradients averaged vs. one accumulated), which drifts ~1e-6."""

# Installed into the torchrun processes through PYTHONPATH: records, per process, every file
# Python opens for writing and every directory made, renamed or removed (audit events).
AUDIT_HOOK = """
import os, sys
_log = os.path.join(os.environ["SMOLLM_AUDIT_DIR"], f"{os.environ.get('RANK', 'launcher')}-{os.getpid()}.log")
def _hook(event, args):
    if event == "open" and isinstance(args[0], str) and args[1] and any(c in args[1] for c in "wax+"):
        path = args[0]
    elif event in ("os.rename", "os.mkdir", "shutil.rmtree", "os.remove"):
        path = str(args[0])
    else:
        return
    if not path.startswith(os.environ["SMOLLM_AUDIT_DIR"]):
        with open(_log, "a") as handle:
            handle.write(event + " " + path + "\\n")
sys.addaudithook(_hook)
"""


def _train_config(built, processes: int, **changes):
    cfg = built[0]
    return dataclasses.replace(
        cfg.train, grad_accum_steps=2, processes=processes, num_threads=1, progress=False, **changes
    )


def _losses(folder: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (folder / "losses.jsonl").read_text().splitlines()]


def _children(pid: int) -> list[int]:
    """The pids of a process's children (Linux /proc)."""
    tasks = Path(f"/proc/{pid}/task").glob("*/children")
    return sorted(int(child) for task in tasks for child in task.read_text().split())


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, killed and not yet reaped, counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _writes(audit: Path) -> dict[str, list[str]]:
    """Paths written per rank ('0', '1', ...; 'launcher' is the torchrun agent)."""
    out: dict[str, list[str]] = {}
    for log in audit.glob("*.log"):
        paths = [line.split(" ", 1)[1] for line in log.read_text().splitlines()]
        out.setdefault(log.name.split("-")[0], []).extend(paths)
    return out


@pytest.fixture(scope="module")
def one_process(built, tmp_path_factory) -> tuple[Path, dict]:
    from smollm.train import train_stage

    one = tmp_path_factory.mktemp("one")
    return one, train_stage(stage_run(built, STEPS, train=_train_config(built, 1)), one)


def test_two_processes_follow_one_and_only_rank_zero_writes_and_logs(built, one_process, tmp_path, monkeypatch):
    from smollm.tracking import make_tracker
    from smollm.train import train_stage

    cfg = built[0]
    one, single = one_process

    hooks, audit = tmp_path / "hooks", tmp_path / "audit"
    hooks.mkdir(), audit.mkdir()
    (hooks / "sitecustomize.py").write_text(AUDIT_HOOK)
    monkeypatch.setenv("PYTHONPATH", f"{hooks}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    monkeypatch.setenv("SMOLLM_AUDIT_DIR", str(audit))
    work = tmp_path / "work"
    tracking = dataclasses.replace(cfg.tracking, experiment="smollm-ddp")
    tracker = make_tracker(tracking, work)
    run_id = tracker.start_run("train/ddp")
    two = tmp_path / "two"
    two.mkdir()
    resume = tmp_path / "resume"
    run = stage_run(built, STEPS, train=_train_config(built, 2, checkpoint_every_steps=4), resume_dir=resume)
    double = train_stage(run, two, tracker, run_id, tracking=tracking, workdir=work)
    tracker.end_run(run_id)

    assert double["end_step"] == single["end_step"] == STEPS
    assert double["tokens_seen"] == single["tokens_seen"]
    assert double["stage_tokens_per_source"] == single["stage_tokens_per_source"]
    a, b = _losses(one), _losses(two)
    assert len(a) == len(b) == STEPS
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < TOLERANCE
    assert a[-1] < a[0] - 0.5  # it really trains

    # one writer: rank 0 wrote the checkpoint, the resume points and the loss record; rank 1 nothing
    writes = _writes(audit)
    assert {"0", "1"} <= set(writes)
    ours = (str(two), str(resume), str(work))
    assert any(p.startswith(str(two)) for p in writes["0"]) and any(p.startswith(str(resume)) for p in writes["0"])
    assert not [p for p in writes["1"] if p.startswith(ours)]
    # one logger: each step's loss once in the MLflow run
    history = tracker.client.get_metric_history(run_id, "train/loss")
    assert len(history) == STEPS
    assert [round(m.value, 6) for m in sorted(history, key=lambda m: m.step)] == [round(x, 6) for x in b]


def test_a_killed_two_process_run_resumes_to_the_same_trajectory(built, tmp_path):
    from smollm.distributed import job, torchrun_command
    from smollm.train import train_stage

    steps, every = 48, 4  # 40 steps between the first point we wait for and the end: room to kill
    train = _train_config(built, 2, checkpoint_every_steps=every)
    full = tmp_path / "full"  # the same run, with the same resume points (a spike rewinds to them), never killed
    full.mkdir()
    train_stage(stage_run(built, steps, train=train, resume_dir=tmp_path / "full-resume"), full)

    output, resume = tmp_path / "out", tmp_path / "resume"
    output.mkdir()
    run = stage_run(built, steps, train=train, resume_dir=resume)
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps(job(run, output, None, tmp_path, None)))
    process = subprocess.Popen(
        torchrun_command(2, job_file), start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 240
    # only the newest resume point is kept: wait for any at or past step 8, not for step 8 itself
    while not [p for p in resume.glob("step-*") if int(p.name.split("-")[1]) >= 2 * every]:
        assert process.poll() is None, (
            "the run ended before it could be killed: " + process.stderr.read().decode()[-500:]
        )
        assert time.monotonic() < deadline, "no resume point in time"
        time.sleep(0.05)
    workers = _children(process.pid)
    assert len(workers) == 2, workers
    os.killpg(process.pid, signal.SIGKILL)  # torchrun only: it starts each worker in a session of its own
    process.wait()
    # the workers die with their launcher, or they would train on into the resume points below
    gone_by = time.monotonic() + 5
    while [pid for pid in workers if _alive(pid)]:
        assert time.monotonic() < gone_by, f"workers {workers} outlived their killed launcher"
        time.sleep(0.05)
    assert not (output / "summary.json").exists()

    subprocess.run(torchrun_command(2, job_file), check=True, capture_output=True)
    summary = json.loads((output / "summary.json").read_text())
    assert summary["resumed_from"] is not None and summary["resumed_from"].startswith(str(resume))
    assert int(Path(summary["resumed_from"]).name.split("-")[1]) >= 2 * every
    assert _losses(output) == _losses(full)  # bit for bit


def test_fsdp_shards_follow_one_process_and_write_whole_checkpoints(built, one_process, tmp_path):
    import torch

    from smollm.train import load_checkpoint, train_stage

    one, single = one_process
    out, resume = tmp_path / "fsdp", tmp_path / "resume"
    out.mkdir()
    train = _train_config(built, 2, parallelism="fsdp", checkpoint_every_steps=4)
    summary = train_stage(stage_run(built, STEPS, train=train, resume_dir=resume), out)
    assert summary["end_step"] == single["end_step"]
    a, b = _losses(one), _losses(out)
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < TOLERANCE
    # the checkpoint holds the whole model and a one-process optimizer state: it loads anywhere
    sharded, state = load_checkpoint(out)
    whole, whole_state = load_checkpoint(one)
    for (name, p), (_, q) in zip(sharded.state_dict().items(), whole.state_dict().items(), strict=True):
        assert p.shape == q.shape and torch.allclose(p, q, atol=1e-4), name
    assert state["optimizer"]["param_groups"][0]["params"] == whole_state["optimizer"]["param_groups"][0]["params"]
    assert sorted(state["optimizer"]["state"]) == sorted(whole_state["optimizer"]["state"])
    # a 2-shard run restarted on the resume points (the last at step 12) continues to the same end
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    again = train_stage(stage_run(built, STEPS, train=train, resume_dir=resume), resumed)
    assert again["resumed_from"] == str(resume / "step-12")
    assert _losses(resumed) == b
