"""Crash-safe checkpoints: a process that does nothing but save resume points (the trainer's own
`save_resume_point`) is killed with SIGKILL at random moments, many times; after every kill the
latest point loads and is exactly the one its name says, or the previous one is used."""

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

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
SAVER = """
import json, sys, torch
from pathlib import Path
from smollm.config import ModelConfig
from smollm.model import build_model
from smollm.schema import from_dict
from smollm.train import latest_resume_point, save_resume_point
shape, tokenizer, resume = from_dict(ModelConfig, json.loads(sys.argv[1])), Path(sys.argv[2]), Path(sys.argv[3])
model = build_model(shape, seed=0)
point = latest_resume_point(resume)
step = int(point.name.split("-")[1]) if point else 0
print("ready", flush=True)
while True:
    step += 1
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(step)  # the content says which step it is
    save_resume_point(resume, step, model, tokenizer, {"step": step, "tokens_seen": step})
"""


def test_a_kill_during_checkpoint_saves_never_leaves_a_checkpoint_that_loads_but_is_wrong(built, tmp_path):
    import torch

    from smollm.schema import to_dict
    from smollm.train import latest_resume_point, load_checkpoint

    cfg, tokenizer, _ = built
    resume = tmp_path / "resume"
    rng = random.Random(7)
    kills, mid_save, steps = 12, 0, []
    for _ in range(kills):
        saver = subprocess.Popen(
            [sys.executable, "-c", SAVER, json.dumps(to_dict(cfg.model)), str(tokenizer.output), str(resume)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert saver.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.3, 2.0))
        os.kill(saver.pid, signal.SIGKILL)
        saver.wait()
        mid_save += any(resume.glob(".tmp-step-*"))  # killed while building a point
        point = latest_resume_point(resume)
        assert point is not None
        model, state = load_checkpoint(point, cfg.model)
        step = int(point.name.split("-")[1])
        assert state["step"] == step
        assert all(torch.equal(p, torch.full_like(p, step)) for p in model.parameters())
        assert not steps or step >= steps[-1]  # never back past a point that was complete
        steps.append(step)
    assert steps[-1] > kills  # it did make progress between kills
    assert mid_save >= kills // 3, f"only {mid_save} of {kills} kills landed inside a save"
    print(f"{kills} kills, {mid_save} during a save; points reached {steps}")
