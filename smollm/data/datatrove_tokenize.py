"""Tokenize a source on datatrove's executors: the same files as `shards.tokenize_source`, in parallel.

Each datatrove task reads the source's training documents (after the held-out slice), keeps the
batches of `ENCODE_BATCH_DOCS` documents dealt to it round-robin (batch b goes to task
b % tasks) and writes their tokens and per-document lengths as a part file in a scratch folder of
the build. The parent then writes `heldout.jsonl` and streams the parts back in document order
through the same `ShardWriter`, so shards are cut at the same places and every file is
byte-identical to the inline build (tests/test_datatrove_tokenize.py); the scratch is removed.

`datatrove_local` runs the tasks on `LocalPipelineExecutor` (`workers` processes at once; they
start by forkserver and import `__main__`, so a script that builds this way needs an
`if __name__ == "__main__":` guard, as with any multiprocessing).
`datatrove_slurm` submits them as a `SlurmPipelineExecutor` job array and waits for every task's
completion marker: the workdir must be on a filesystem the nodes share and smollm installed in the
environment `env_command` activates. Every task reads the whole document stream and skips the
other tasks' batches: tokenizing is what is split, reading is not (a `content_url` source fetches
its blobs in every task, so build those inline).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from itertools import count
from pathlib import Path
from typing import Any

import numpy as np
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from smollm.config import SourceConfig, TokenizeExecutorConfig
from smollm.data.shards import ENCODE_BATCH_DOCS, Encoder, ShardWriter, batched, finish_source, split_heldout
from smollm.data.sources import iter_documents

SCRATCH = ".datatrove"
SLURM_POLL_S = 30


def part_paths(parts: Path, rank: int) -> tuple[Path, Path, Path]:
    """A task's tokens (flat, the source's dtype), document lengths (int64 .npy) and totals (json)."""
    stem = parts / f"part-{rank:05d}"
    return stem.with_suffix(".bin"), stem.with_suffix(".lengths.npy"), stem.with_suffix(".json")


class TokenizeShare(PipelineStep):
    """Tokenize this task's share of a source's training documents into a part file."""

    name = "smollm tokenize share"
    type = "🔢 - TOKENIZER"

    def __init__(self, source: SourceConfig, tokenizer_dir: Path, parts: Path) -> None:
        super().__init__()
        self.source, self.tokenizer_dir, self.parts = source, Path(tokenizer_dir), Path(parts)

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        encoder = Encoder(self.tokenizer_dir)
        docs = split_heldout(self.source, iter_documents(self.source))
        tokens_path, lengths_path, totals_path = part_paths(self.parts, rank)
        lengths, num_bytes = [np.zeros(0, np.int64)], 0
        with open(tokens_path, "wb") as handle:
            for index, batch in enumerate(batched(docs)):
                if index % world_size != rank:
                    continue
                encoded = encoder.encode(batch)
                encoded.tokens.tofile(handle)
                lengths.append(encoded.lengths)
                num_bytes += encoded.num_bytes
                self.stat_update("documents", value=len(batch), unit="batch")
                self.stat_update("tokens", value=len(encoded.tokens), unit="batch")
        np.save(lengths_path, np.concatenate(lengths))
        totals_path.write_text(json.dumps({"num_bytes": num_bytes}))  # written last: the part is whole
        return data


def merge_parts(
    source: SourceConfig, encoder: Encoder, parts: Path, tasks: int, output: Path, shard_tokens: int
) -> dict:
    """Write the shards, doc index and manifest from the tasks' part files, in document order."""
    tokens, lengths, num_bytes = [], [], 0
    for rank in range(tasks):
        tokens_path, lengths_path, totals_path = part_paths(parts, rank)
        if not totals_path.is_file():
            raise RuntimeError(f"datatrove task {rank} of {source.name} left no complete part in {parts}")
        num_bytes += json.loads(totals_path.read_text())["num_bytes"]
        size = tokens_path.stat().st_size
        tokens.append(np.memmap(tokens_path, dtype=encoder.dtype, mode="r") if size else np.zeros(0, encoder.dtype))
        lengths.append(np.load(lengths_path))
    writer = ShardWriter(output, encoder.dtype, shard_tokens)
    offsets, ordered = [0] * tasks, []
    for batch in count():  # batch b is round b // tasks of task b % tasks
        rank, first = batch % tasks, (batch // tasks) * ENCODE_BATCH_DOCS
        doc_lengths = lengths[rank][first : first + ENCODE_BATCH_DOCS]
        if not len(doc_lengths):
            break
        end = offsets[rank] + int(doc_lengths.sum())
        writer.add(tokens[rank][offsets[rank] : end])
        offsets[rank] = end
        ordered.append(doc_lengths)
    if offsets != [len(t) for t in tokens] or sum(map(len, ordered)) != sum(map(len, lengths)):
        raise RuntimeError(f"datatrove parts of {source.name} in {parts} do not tile the document stream")
    all_lengths = np.concatenate(ordered) if ordered else np.zeros(0, np.int64)
    return finish_source(source, encoder, output, all_lengths, num_bytes, writer.close())


def make_executor(config: TokenizeExecutorConfig, step: TokenizeShare, logging_dir: Path) -> Any:
    if config.kind == "datatrove_local":
        import multiprocess
        from datatrove.executor import LocalPipelineExecutor

        # The workers fork from a server that has imported this module: they start without
        # importing the stack again (about a second per build on 2 cores).
        multiprocess.set_forkserver_preload([__name__])
        workers = min(config.workers, config.tasks)
        return LocalPipelineExecutor(pipeline=[step], tasks=config.tasks, workers=workers, logging_dir=str(logging_dir))
    if config.kind == "datatrove_slurm":
        from datatrove.executor import SlurmPipelineExecutor

        assert config.partition is not None  # checked by TokenizeExecutorConfig
        return SlurmPipelineExecutor(
            pipeline=[step],
            tasks=config.tasks,
            workers=config.workers,
            time=config.time,
            partition=config.partition,
            cpus_per_task=config.cpus_per_task,
            mem_per_cpu_gb=config.mem_per_cpu_gb,
            job_name=f"smollm-tokenize-{step.source.name}",
            env_command=config.env_command or f"source {Path(sys.prefix) / 'bin' / 'activate'}",
            logging_dir=str(logging_dir),
        )
    raise ValueError(f"data.executor.kind: not a datatrove executor, got {config.kind!r}")


def slurm_job_queued(job_id: str) -> bool:
    """Whether a Slurm job (or any task of its array) is still pending or running."""
    try:
        result = subprocess.run(["squeue", "-h", "-j", str(job_id)], capture_output=True, text=True)
    except FileNotFoundError:
        raise RuntimeError("data.executor.kind: 'datatrove_slurm' needs Slurm's squeue on PATH") from None
    return result.returncode == 0 and bool(result.stdout.strip())


def wait_for_tasks(executor: Any, poll_s: float = SLURM_POLL_S) -> None:
    """Block until every task of a launched Slurm executor has its completion marker."""
    while incomplete := executor.get_incomplete_ranks():
        if not slurm_job_queued(executor.job_id) and (incomplete := executor.get_incomplete_ranks()):
            raise RuntimeError(
                f"datatrove Slurm job {executor.job_id} ended with tasks {incomplete[:8]} incomplete; "
                f"see {executor.logging_dir.path}/logs"
            )
        time.sleep(poll_s)


def run_tasks(config: TokenizeExecutorConfig, step: TokenizeShare, logging_dir: Path) -> None:
    executor = make_executor(config, step, logging_dir)
    executor.run()  # local: runs every task; Slurm: submits the job array
    if config.kind == "datatrove_slurm":
        wait_for_tasks(executor)


def logging_folder(config: TokenizeExecutorConfig, scratch: Path, output: Path) -> Path:
    """A fresh folder per build: datatrove skips the tasks whose completion marker it finds."""
    if config.logging_dir is None:
        return scratch / "logs"
    return Path(config.logging_dir).resolve() / output.name.lstrip(".")


def tokenize_source_datatrove(
    source: SourceConfig,
    tokenizer_dir: Path,
    output: Path,
    shard_tokens: int,
    config: TokenizeExecutorConfig,
) -> dict:
    """`tokenize_source` with the tokenizing split into `config.tasks` datatrove tasks."""
    encoder = Encoder(tokenizer_dir)
    scratch = output / SCRATCH
    parts = scratch / "parts"
    parts.mkdir(parents=True)
    step = TokenizeShare(source, Path(tokenizer_dir).resolve(), parts.resolve())
    run_tasks(config, step, logging_folder(config, scratch, output))
    split_heldout(source, iter_documents(source), output)
    manifest = merge_parts(source, encoder, parts, config.tasks, output, shard_tokens)
    shutil.rmtree(scratch)
    return manifest
