"""Exact resume: the real `smollm run` in a subprocess, killed with SIGKILL at random moments
(inside stage 1, at the stage boundary, inside stages 2 and 3) and relaunched, ends with the same
loss trajectory, step for step and bit for bit, as an uninterrupted run of the same config."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import tiny_overrides

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
REPO = Path(__file__).resolve().parent.parent
EVERY = 25  # steps between resume points


def _launch(work: Path) -> subprocess.Popen:
    overrides = [*tiny_overrides(work), f"train.checkpoint_every_steps={EVERY}", "train.num_threads=1"]
    env = {**os.environ, "PREFECT_LOGGING_LEVEL": "WARNING"}
    return subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "run", *overrides],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _trajectories(work: Path) -> dict[str, list[dict]]:
    """Each completed training step's loss record, by stage."""
    out = {}
    for folder in sorted((work / "train").glob("demo-stage*-*")):
        lines = (folder / "losses.jsonl").read_text().splitlines()
        out[folder.name.split("-")[1]] = [json.loads(line) for line in lines]
    return out


def _state(work: Path) -> tuple[set[str], set[str]]:
    """(complete training outputs, resume points) under the work dir."""
    train = work / "train"
    done = {p.parent.name for p in train.glob("*/_COMPLETE.json")} if train.is_dir() else set()
    points = {f"{p.parent.name}/{p.name}" for p in train.glob(".resume-*/step-*")} if train.is_dir() else set()
    return done, points


def _kill_when(process: subprocess.Popen, work: Path, ready, rng: random.Random, timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    while not ready(*_state(work)):
        assert process.poll() is None, f"the run ended before the kill: {process.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "the kill point never came"
        time.sleep(0.05)
    time.sleep(rng.uniform(0, 0.3))
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    done, points = _state(work)
    return f"completed {sorted(d.split('-')[1] for d in done)}, resume points {sorted(points)}"


def test_a_pipeline_killed_at_random_steps_resumes_to_the_same_losses_bit_for_bit(tmp_path):
    reference = _launch(tmp_path / "reference")
    rng = random.Random(11)
    work = tmp_path / "killed"

    def finished(stage):
        return lambda done, points: any(d.startswith(f"demo-{stage}-") for d in done)

    def inside(stage):
        return lambda done, points: any(p.startswith(f".resume-demo-{stage}-") for p in points)

    kill_points = [
        ("inside stage 1", inside("stage1")),
        ("at the stage boundary (stage 1 trained, stage 2 not yet)", finished("stage1")),
        ("inside stage 2", inside("stage2")),
        ("inside stage 3", inside("stage3")),
    ]
    seen = []
    for name, ready in kill_points:
        seen.append(f"{name}: {_kill_when(_launch(work), work, ready, rng)}")
    final = _launch(work)
    _, err = final.communicate(timeout=900)
    assert final.returncode == 0, err[-3000:]
    _, err = reference.communicate(timeout=900)
    assert reference.returncode == 0, err[-3000:]
    print("\n".join(seen))
    expected, resumed = _trajectories(tmp_path / "reference"), _trajectories(work)
    assert sorted(expected) == ["stage1", "stage2", "stage3"]
    for stage_name in expected:
        assert len(resumed[stage_name]) == len(expected[stage_name])
        assert resumed[stage_name] == expected[stage_name], f"{stage_name} diverged after resume"
