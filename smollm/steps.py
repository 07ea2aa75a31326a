"""Step identity and atomic, skippable step outputs.

A step is a kind, a name, a JSON config slice, its upstream steps' identities and the code that
computes it: the source of every project module it can import and the versions of the libraries
they import (`smollm.step_code`). Its identity is a content hash of exactly those; its output lives at
`<workdir>/<kind>/<name>-<hash>`, built in a temporary folder, fsynced, renamed into place, with a
completion marker inside. A complete output is never rebuilt, across processes and flow runs
(`docs/architecture.md`, "Step identity and caching").
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from smollm.step_code import code_hashes, libraries

MARKER = "_COMPLETE.json"


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys; anything not plainly serialisable is an error, never skipped."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def content_hash(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


@cache
def git_commit() -> str:
    """The project's git commit (with `+dirty`), or `unknown` outside a checkout."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")


@dataclass(frozen=True)
class Step:
    """An expensive, deterministic unit of work and everything its output depends on."""

    kind: str
    name: str
    config: Mapping[str, Any]
    upstream: Sequence[str] = ()
    code: Sequence[str] = ()
    """The modules that compute the step: every project module they can import, and the
    versions of the libraries those import, are part of the identity (`smollm.step_code`)."""
    _identity: str = field(init=False, repr=False, compare=False, default="")

    def __post_init__(self) -> None:
        payload = {
            "kind": self.kind,
            "config": self.config,
            "upstream": list(self.upstream),
            **code_identity(self.code),
        }
        try:
            object.__setattr__(self, "_identity", content_hash(payload))
        except TypeError as err:
            raise TypeError(f"step {self.kind}/{self.name}: config is not serialisable: {err}") from None

    @property
    def identity(self) -> str:
        return self._identity

    def output_dir(self, workdir: Path) -> Path:
        return Path(workdir) / self.kind / f"{self.name}-{self.identity[:12]}"


def is_complete(output: Path) -> bool:
    return (output / MARKER).is_file()


def fsync_tree(root: Path) -> None:
    """Flush every file and folder under `root` to disk."""
    for path in sorted(root.rglob("*"), reverse=True):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    for folder in [root, *[p for p in root.rglob("*") if p.is_dir()]]:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` via a fsynced temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


@contextlib.contextmanager
def step_lock(output: Path) -> Iterator[None]:
    """Serialise builders of the same step across processes."""
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output.parent / f".{output.name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def atomic_dir_swap(output: Path, build: Callable[[Path], Any]) -> None:
    """Build a folder in a sibling temporary folder, fsync it, then rename it onto `output`."""
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.parent / f".tmp-{output.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        build(tmp)
        fsync_tree(tmp)
        if output.exists():  # an incomplete leftover of a killed build
            shutil.rmtree(output)
        os.replace(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@dataclass(frozen=True)
class StepResult:
    """Where a step's output is and whether this call computed it."""

    output: Path
    identity: str
    computed: bool


def code_identity(entries: Sequence[str]) -> dict[str, Any]:
    """The code part of a step's identity: its modules' closure, hashed, and the libraries'."""
    modules = tuple(sorted(entries))
    return {"code": code_hashes(modules), "libraries": libraries(modules)} if modules else {}


def provenance(step: Step) -> dict[str, Any]:
    return {
        "kind": step.kind,
        "name": step.name,
        "identity": step.identity,
        "config": step.config,
        "upstream": list(step.upstream),
        **code_identity(step.code),
        "git_commit": git_commit(),
        "finished_at": dt.datetime.now(dt.UTC).isoformat(),
    }


def run_step(
    step: Step, workdir: Path, build: Callable[[Path], Any], check: Callable[[Path], str | None] | None = None
) -> StepResult:
    """Return the step's complete output, calling `build(tmp_dir)` only if it does not exist yet.

    The completion marker (with the step's provenance) is the last file written before the
    atomic rename, so a folder without it is an interrupted build and is redone. `check` says
    what is wrong with a complete output (e.g. a corrupted shard); such an output is rebuilt.
    """
    output = step.output_dir(workdir)

    def reusable() -> bool:
        if not is_complete(output):
            return False
        problem = check(output) if check else None
        if problem:
            print(f"warning: {output.name}: {problem}; rebuilding it", file=sys.stderr)
        return problem is None

    if reusable():
        return StepResult(output, step.identity, computed=False)
    with step_lock(output):
        if reusable():  # another process finished it while we waited
            return StepResult(output, step.identity, computed=False)

        def build_and_mark(tmp: Path) -> None:
            build(tmp)
            (tmp / MARKER).write_text(json.dumps(provenance(step), indent=2, sort_keys=True))

        atomic_dir_swap(output, build_and_mark)
    return StepResult(output, step.identity, computed=True)
