"""Checkpoint folders: write (atomically, optionally in the background) and read them.

    model/               save_pretrained weights + config + the tokenizer (AutoModel/lighteval load it)
    trainer_state.pt     optimizer, step, tokens seen, sampler position, RNG states

A resume point is written by a background thread (`BackgroundWriter`) from a snapshot of the
weights and optimizer state taken between two steps, so training goes on while it is
serialised and fsynced (torch.distributed.checkpoint's `async_save` does the same for its own
format; ours stays `save_pretrained` + one state file, which lighteval and AutoModel load).
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

from smollm.config import ModelConfig
from smollm.model import llama_config
from smollm.steps import atomic_dir_swap

STATE_FILE = "trainer_state.pt"


def save_checkpoint(
    folder: Path, model, tokenizer_dir: Path, state: dict[str, Any], weights: dict[str, Any] | None = None
) -> None:
    """Weights (save_pretrained; `weights` if given, e.g. gathered from shards) + tokenizer +
    trainer state into `folder`."""
    import torch
    from transformers import AutoTokenizer

    model.save_pretrained(folder / "model", state_dict=weights)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(folder / "model")
    torch.save(state, folder / STATE_FILE)


def load_checkpoint(folder: Path, shape: ModelConfig | None = None) -> tuple[Any, dict[str, Any]]:
    """The model and trainer state of a checkpoint folder; a clear error if it is missing.

    With `shape`, the weights load into that shape's config (RoPE θ and context length may
    differ from the checkpoint's; a weight of another size is a RuntimeError)."""
    import torch
    from transformers import LlamaForCausalLM

    if not (folder / STATE_FILE).is_file() or not (folder / "model" / "config.json").is_file():
        raise FileNotFoundError(f"checkpoint {folder}: missing {STATE_FILE} or model/ (not a complete checkpoint)")
    config = {"config": llama_config(shape)} if shape is not None else {}
    model = LlamaForCausalLM.from_pretrained(folder / "model", **config)
    state = torch.load(folder / STATE_FILE, weights_only=False, map_location="cpu")
    return model, state


def moments_digest(optimizer_state: dict[str, Any]) -> dict[str, Any]:
    """What an AdamW state holds, measured: how many parameters have moments, and a sha256 of
    every state tensor (step, exp_avg, exp_avg_sq) in parameter order. Equal digests of a
    checkpoint's saved state and of a live optimizer show the state was loaded, bit for bit."""
    import hashlib

    import torch

    digest, states = hashlib.sha256(), optimizer_state.get("state", {})
    for index in sorted(states):
        for key in sorted(states[index]):
            value = states[index][key]
            tensor = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            digest.update(f"{index}.{key}:{tensor.dtype}:{list(tensor.shape)}".encode())
            digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return {"parameters": len(states), "sha256": digest.hexdigest()[:16]}


def save_resume_point(
    resume_dir: Path,
    step: int,
    model,
    tokenizer_dir: Path,
    state: dict[str, Any],
    weights: dict[str, Any] | None = None,
) -> Path:
    """`<resume_dir>/step-<step>`, built aside, fsynced and renamed into place; then the older
    points go. A kill at any moment leaves the previous point or this one, complete."""
    for leftover in resume_dir.glob(".tmp-step-*"):  # a save killed half-way: never loaded
        shutil.rmtree(leftover, ignore_errors=True)
    folder = resume_dir / f"step-{step}"
    atomic_dir_swap(folder, lambda tmp: save_checkpoint(tmp, model, tokenizer_dir, state, weights))
    for old in resume_dir.glob("step-*"):
        if old != folder:
            shutil.rmtree(old, ignore_errors=True)
    return folder


def latest_resume_point(resume_dir: Path | None) -> Path | None:
    if resume_dir is None or not resume_dir.is_dir():
        return None
    points = sorted(resume_dir.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    points = [p for p in points if (p / STATE_FILE).is_file()]
    return points[-1] if points else None


def snapshot(value: Any) -> Any:
    """A copy of nested dicts/lists of tensors that later optimizer steps do not change (on CPU)."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: snapshot(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(snapshot(v) for v in value)
    return value


class BackgroundWriter:
    """Writes resume points on a thread, one at a time; `wait()` before anything reads them.
    A failed write is raised at the next `submit` or `wait`."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, write) -> None:
        self.wait()

        def run() -> None:
            try:
                write()
            except BaseException as err:  # re-raised in the training thread
                self._error = err

        self._thread = threading.Thread(target=run, name="smollm-checkpoint", daemon=True)
        self._thread.start()

    def wait(self, raise_errors: bool = True) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None and raise_errors:
            error, self._error = self._error, None
            raise error
