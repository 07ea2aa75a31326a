"""Tokenize a source once into token shards with a document index and a manifest.

Layout of a built source (`<workdir>/tokens/<source>-<hash>/`):
    manifest.json        tokenizer, dtype, token/doc counts, per-shard sha256
    shard-00000.bin      flat token ids (uint16 when the vocab fits, else uint32), EOS after each doc
    docs.npy             int64 start offset of every document in the concatenated token stream
    heldout.jsonl        the held-out documents ({"text": ...}), never trained on

`datatrove_tokenize` writes the same files with the tokenizing split over datatrove's executors,
through the pieces here (`Encoder`, `split_heldout`, `ShardWriter`, `finish_source`).
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np

from smollm.config import SourceConfig
from smollm.data.sources import iter_documents
from smollm.data.tokenizer import load_fast

ENCODE_BATCH_DOCS = 512


def batched(docs: Iterator[str], size: int = ENCODE_BATCH_DOCS) -> Iterator[list[str]]:
    while batch := list(islice(docs, size)):
        yield batch


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ShardWriter:
    """Appends token arrays, cutting a new shard file every `shard_tokens` tokens (where the cuts
    fall depends only on the concatenated stream, not on how it is split into `add` calls)."""

    def __init__(self, output: Path, dtype: np.dtype, shard_tokens: int) -> None:
        self.output, self.dtype, self.shard_tokens = output, dtype, shard_tokens
        self.shards: list[dict] = []
        self.pending: list[np.ndarray] = []
        self.pending_tokens = 0

    def add(self, tokens: np.ndarray) -> None:
        self.pending.append(tokens.astype(self.dtype, copy=False))
        self.pending_tokens += len(tokens)
        while self.pending_tokens >= self.shard_tokens:
            flat = np.concatenate(self.pending)
            self._write(flat[: self.shard_tokens])
            rest = flat[self.shard_tokens :]
            self.pending, self.pending_tokens = [rest], len(rest)

    def close(self) -> list[dict]:
        if self.pending_tokens:
            self._write(np.concatenate(self.pending))
        self.pending, self.pending_tokens = [], 0
        return self.shards

    def _write(self, tokens: np.ndarray) -> None:
        path = self.output / f"shard-{len(self.shards):05d}.bin"
        tokens.tofile(path)
        self.shards.append({"file": path.name, "num_tokens": int(len(tokens)), "sha256": sha256_file(path)})


@dataclass(frozen=True)
class Encoded:
    """A batch of documents as tokens: the flat stream (EOS after each document), each
    document's length in tokens (EOS included) and the batch's UTF-8 size."""

    tokens: np.ndarray
    lengths: np.ndarray
    num_bytes: int


class Encoder:
    """The build's tokenizer: documents to token ids in the smallest dtype the vocab fits."""

    def __init__(self, tokenizer_dir: Path) -> None:
        self.tokenizer_dir = Path(tokenizer_dir)
        self.tokenizer = load_fast(self.tokenizer_dir)
        self.eos_id: int = self.tokenizer.token_to_id("<|endoftext|>")
        self.vocab_size: int = self.tokenizer.get_vocab_size()
        fits_uint16 = self.vocab_size <= np.iinfo(np.uint16).max + 1
        self.dtype = np.dtype(np.uint16 if fits_uint16 else np.uint32)

    def encode(self, batch: list[str]) -> Encoded:
        # One flat list and one numpy conversion per batch: per-document arrays cost more.
        flat: list[int] = []
        lengths: list[int] = []
        for encoding in self.tokenizer.encode_batch_fast(batch, add_special_tokens=False):
            ids = encoding.ids
            ids.append(self.eos_id)
            flat += ids
            lengths.append(len(ids))
        tokens = np.array(flat, dtype=self.dtype)
        return Encoded(tokens, np.array(lengths, dtype=np.int64), len("".join(batch).encode()))


def split_heldout(source: SourceConfig, docs: Iterator[str], output: Path | None = None) -> Iterator[str]:
    """The training documents of `docs`: the first `heldout_docs` are held out (written to
    `output/heldout.jsonl` when given, else skipped)."""
    heldout = islice(docs, source.heldout_docs)
    if output is None:
        deque(heldout, maxlen=0)
        return docs
    with open(output / "heldout.jsonl", "w") as handle:
        for doc in heldout:
            handle.write(json.dumps({"text": doc}) + "\n")
    return docs


def finish_source(
    source: SourceConfig, encoder: Encoder, output: Path, lengths: np.ndarray, num_bytes: int, shards: list[dict]
) -> dict:
    """Write the doc index and the manifest of a source whose shards and held-out docs are written."""
    if not len(lengths):
        raise ValueError(f"data.sources.{source.name}: no training documents after the held-out slice")
    ends = np.cumsum(lengths, dtype=np.int64)
    np.save(output / "docs.npy", ends - lengths)
    manifest = {
        "source": source.name,
        "tokenizer": str(encoder.tokenizer_dir),
        "vocab_size": encoder.vocab_size,
        "dtype": encoder.dtype.name,
        "num_tokens": int(ends[-1]),
        "num_docs": len(lengths),
        "num_bytes": num_bytes,
        "heldout_docs": source.heldout_docs,
        "revision": source.revision,
        "heldout_sha256": sha256_file(output / "heldout.jsonl"),
        "shards": shards,
    }
    (output / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def tokenize_source(source: SourceConfig, tokenizer_dir: Path, output: Path, shard_tokens: int) -> dict:
    """Write the source's held-out docs, token shards, doc index and manifest into `output`."""
    encoder = Encoder(tokenizer_dir)
    docs = split_heldout(source, iter_documents(source), output)
    writer = ShardWriter(output, encoder.dtype, shard_tokens)
    lengths, num_bytes = [], 0
    for batch in batched(docs):
        encoded = encoder.encode(batch)
        writer.add(encoded.tokens)
        lengths.append(encoded.lengths)
        num_bytes += encoded.num_bytes
    all_lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    return finish_source(source, encoder, output, all_lengths, num_bytes, writer.close())


@dataclass(frozen=True)
class TokenizedSource:
    """A built source, memory-mapped read-only."""

    name: str
    path: Path
    manifest: dict
    shards: tuple[np.ndarray, ...]

    @staticmethod
    def problem(path: Path, *, checksum: bool = True) -> str | None:
        """What is wrong with a built source folder (a missing, truncated or corrupted shard), or None."""
        try:
            manifest = json.loads((path / "manifest.json").read_text())
        except (OSError, ValueError) as err:
            return f"unreadable manifest ({err})"
        itemsize = np.dtype(manifest["dtype"]).itemsize
        for shard in manifest["shards"]:
            file = path / shard["file"]
            if not file.is_file():
                return f"shard {shard['file']} is missing"
            if file.stat().st_size != shard["num_tokens"] * itemsize:
                return f"shard {shard['file']} has {file.stat().st_size} bytes, the manifest says {shard['num_tokens'] * itemsize}"
            if checksum and sha256_file(file) != shard["sha256"]:
                return f"shard {shard['file']} fails its sha256 checksum (corrupted)"
        return None

    @classmethod
    def open(cls, path: Path, *, verify: bool = False) -> TokenizedSource:
        path = Path(path)
        manifest = json.loads((path / "manifest.json").read_text())
        shards = []
        for shard in manifest["shards"]:
            file = path / shard["file"]
            if verify and sha256_file(file) != shard["sha256"]:
                raise ValueError(f"{file}: checksum mismatch (corrupted shard)")
            array = np.memmap(file, dtype=manifest["dtype"], mode="r")
            if len(array) != shard["num_tokens"]:
                raise ValueError(f"{file}: {len(array)} tokens, manifest says {shard['num_tokens']}")
            shards.append(array)
        return cls(manifest["source"], path, manifest, tuple(shards))

    @property
    def num_tokens(self) -> int:
        return int(self.manifest["num_tokens"])

    @property
    def heldout_path(self) -> Path:
        return self.path / "heldout.jsonl"
