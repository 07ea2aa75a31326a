"""Step identity, atomic outputs and skipping of complete steps, across processes."""

import json
import subprocess
import sys

import pytest

from smollm.steps import MARKER, Step, is_complete, run_step


def test_identity_depends_on_config_upstream_and_kind_only():
    a = Step("tokens", "x", {"a": 1, "b": [1, 2]}, upstream=("u",))
    assert a.identity == Step("tokens", "x", {"b": [1, 2], "a": 1}, upstream=("u",)).identity
    assert a.identity != Step("tokens", "x", {"a": 2, "b": [1, 2]}, upstream=("u",)).identity
    assert a.identity != Step("tokens", "x", {"a": 1, "b": [1, 2]}, upstream=("v",)).identity
    assert a.identity != Step("train", "x", {"a": 1, "b": [1, 2]}, upstream=("u",)).identity


def test_unserialisable_config_is_an_error_not_a_silent_key():
    with pytest.raises(TypeError, match="not serialisable"):
        Step("train", "x", {"model": object()})


def test_complete_step_is_skipped_and_incomplete_redone(tmp_path):
    step = Step("tokens", "demo", {"n": 1})
    calls = []

    def build(out):
        calls.append(out)
        (out / "data.txt").write_text("hello")

    first = run_step(step, tmp_path, build)
    assert first.computed and is_complete(first.output)
    assert json.loads((first.output / MARKER).read_text())["identity"] == step.identity
    second = run_step(step, tmp_path, build)
    assert not second.computed and len(calls) == 1
    (first.output / MARKER).unlink()  # as if killed before the marker
    third = run_step(step, tmp_path, build)
    assert third.computed and len(calls) == 2


def test_failed_build_leaves_nothing(tmp_path):
    step = Step("tokens", "demo", {"n": 2})

    def build(out):
        (out / "partial.bin").write_bytes(b"xx")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        run_step(step, tmp_path, build)
    assert not step.output_dir(tmp_path).exists()
    assert list((tmp_path / "tokens").glob(".tmp-*")) == []


def test_skip_holds_across_processes(tmp_path):
    code = (
        "import sys, pathlib; from smollm.steps import Step, run_step;"
        "r = run_step(Step('tokens', 'p', {'n': 3}), pathlib.Path(sys.argv[1]),"
        " lambda o: (o / 'f').write_text('x')); print(r.computed)"
    )
    outs = [
        subprocess.run(
            [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True
        ).stdout.strip()
        for _ in range(2)
    ]
    assert outs == ["True", "False"]
