"""The datatrove tokenize path (`data.executor`) writes the same source as the inline one.

Both paths build through `stage.build_source` with a small BPE; the outputs are compared file by
file (shards, doc index, held-out docs, manifest), and the executor must not enter the identity.
"""

from __future__ import annotations

import dataclasses
import filecmp

import numpy as np
import pytest

from flows.compose import compose
from smollm import stage
from smollm.config import TokenizeExecutorConfig, TokenizerConfig
from smollm.data import datatrove_tokenize
from smollm.data.datatrove_tokenize import TokenizeShare, merge_parts, part_paths
from smollm.data.shards import Encoder, TokenizedSource
from smollm.data.tokenizer import train_bpe
from smollm.schema import ConfigError
from smollm.steps import MARKER, StepResult
from tests.conftest import tiny_overrides

SMALL = [
    "data.sources.synthetic_math.num_docs=3000",  # 6 batches of 512 documents: 2 per task
    "data.sources.synthetic_math.heldout_docs=50",
    "data.sources.stdlib_code.num_docs=40",  # 1 batch: tasks 1 and 2 get nothing
    "data.sources.stdlib_code.heldout_docs=5",
    "data.shard_tokens=5000",
]
DATATROVE = ["data.executor.kind=datatrove_local", "data.executor.tasks=3", "data.executor.workers=2"]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """The tiny config on small sources, and a 512-token BPE trained on the two built here."""
    root = tmp_path_factory.mktemp("datatrove")
    cfg = compose([*tiny_overrides(root / "inline"), *SMALL])
    output = root / "tokenizer"
    sources = [cfg.data.sources[name] for name in ("stdlib_code", "synthetic_math")]
    train_bpe(
        TokenizerConfig(name="t", kind="train_bpe", vocab_size=512, train_bytes_per_source=200_000), sources, output
    )
    return root, cfg, StepResult(output, "tokenizer-under-test", computed=True)


@pytest.mark.parametrize("name", ["synthetic_math", "stdlib_code"])
def test_datatrove_local_writes_the_same_source_as_inline(small, name):
    root, cfg, tokenizer = small
    inline = stage.build_source(cfg, name, tokenizer)
    spread = compose([*tiny_overrides(root / "datatrove"), *SMALL, *DATATROVE])
    built = stage.build_source(spread, name, tokenizer)

    assert built.computed and built.identity == inline.identity
    assert built.output != inline.output  # two workdirs: both were really built
    files = sorted(p.name for p in built.output.iterdir())
    assert files == sorted(p.name for p in inline.output.iterdir())  # no scratch left behind
    assert {"manifest.json", "docs.npy", "heldout.jsonl", "shard-00000.bin"} <= set(files)
    same, differ, missing = filecmp.cmpfiles(inline.output, built.output, files, shallow=False)
    assert differ == [MARKER] and missing == []  # only the marker's timestamp differs

    ours, theirs = TokenizedSource.open(built.output, verify=True), TokenizedSource.open(inline.output)
    assert ours.manifest == theirs.manifest
    assert ours.num_tokens == sum(s["num_tokens"] for s in theirs.manifest["shards"]) > 0
    if name == "synthetic_math":
        assert len(ours.manifest["shards"]) > 3 and ours.manifest["num_docs"] == 2950
    starts = np.load(built.output / "docs.npy")
    np.testing.assert_array_equal(starts, np.load(inline.output / "docs.npy"))
    eos = Encoder(tokenizer.output).eos_id
    stream = np.concatenate(ours.shards)
    assert (stream[starts[1:] - 1] == eos).all() and stream[-1] == eos


def test_executor_is_not_part_of_the_source_identity(small):
    root, cfg, tokenizer = small
    identities = {
        stage.source_step(
            compose([*tiny_overrides(root / "inline"), *SMALL, *extra]), "synthetic_math", tokenizer
        ).identity
        for extra in (
            [],
            DATATROVE,
            ["data.executor.kind=datatrove_slurm", "data.executor.partition=cpu", "data.executor.tasks=64"],
        )
    }
    assert len(identities) == 1
    assert stage.source_step(cfg, "synthetic_math", tokenizer).identity in identities


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.executor.kind=ray", "data.executor.kind: 'ray' is not one of"),
        ("data.executor.tasks=0", "data.executor.tasks: must be >= 1, got 0"),
        ("data.executor.workers=-2", "data.executor.workers: must be >= 1, got -2"),
        ("data.executor.kind=datatrove_slurm", "data.executor.partition: is required for kind 'datatrove_slurm'"),
        ("data.executor.time=4h", "data.executor.time: must look like [D-]HH:MM:SS, got '4h'"),
        ("data.executor.cpus_per_task=0", "data.executor.cpus_per_task: must be >= 1, got 0"),
    ],
)
def test_bad_executor_values_fail_naming_the_field(tmp_path, override, message):
    with pytest.raises(ConfigError) as err:
        compose([*tiny_overrides(tmp_path), override])
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_a_missing_part_is_an_error_not_a_short_source(small, tmp_path):
    _, cfg, tokenizer = small
    source = cfg.data.sources["synthetic_math"]
    step = TokenizeShare(source, tokenizer.output, tmp_path)
    for rank in (0, 2):  # task 1 never ran
        step.run(None, rank, 3)
    assert part_paths(tmp_path, 0)[0].stat().st_size > 0
    with pytest.raises(RuntimeError, match="task 1 of synthetic_math left no complete part"):
        merge_parts(source, Encoder(tokenizer.output), tmp_path, 3, tmp_path, 5000)


def test_slurm_executor_is_configured_and_awaited(tmp_path, monkeypatch):
    config = TokenizeExecutorConfig(kind="datatrove_slurm", tasks=8, workers=4, partition="cpu", time="01:00:00")
    step = TokenizeShare(compose(tiny_overrides(tmp_path)).data.sources["stdlib_code"], tmp_path, tmp_path)
    executor = datatrove_tokenize.make_executor(config, step, tmp_path / "logs")
    assert (executor.partition, executor.time, executor.tasks, executor.workers) == ("cpu", "01:00:00", 8, 4)
    assert executor.env_command.startswith("source ") and executor.env_command.endswith("bin/activate")

    class Launched:  # a launched job array whose tasks finish one poll at a time
        job_id, logging_dir = "42", dataclasses.make_dataclass("Dir", ["path"])(str(tmp_path))

        def __init__(self, incomplete: list[list[int]]) -> None:
            self.incomplete = incomplete

        def get_incomplete_ranks(self) -> list[int]:
            return self.incomplete.pop(0) if len(self.incomplete) > 1 else self.incomplete[0]

    monkeypatch.setattr(datatrove_tokenize, "slurm_job_queued", lambda job_id: True)
    datatrove_tokenize.wait_for_tasks(Launched([[0, 1], [1], []]), poll_s=0)
    monkeypatch.setattr(datatrove_tokenize, "slurm_job_queued", lambda job_id: False)
    with pytest.raises(RuntimeError, match=r"job 42 ended with tasks \[1\] incomplete"):
        datatrove_tokenize.wait_for_tasks(Launched([[1]]), poll_s=0)


def test_scratch_and_logs_go_where_configured(tmp_path):
    output = tmp_path / ".tmp-synthetic_math-abc-123"
    inline_logs = datatrove_tokenize.logging_folder(TokenizeExecutorConfig(), output / ".datatrove", output)
    assert inline_logs == output / ".datatrove" / "logs"
    kept = TokenizeExecutorConfig(logging_dir=str(tmp_path / "logs"))
    assert datatrove_tokenize.logging_folder(kept, output / ".datatrove", output) == (
        tmp_path / "logs" / "tmp-synthetic_math-abc-123"
    )
