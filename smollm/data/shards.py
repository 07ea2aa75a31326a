"""Tokenize a source once into token shards with a document index and a manifest.

Layout of a built source (`<workdir>/tokens/<source>-<hash>/`):
    manifest.json        tokenizer, dtype, token/doc counts, per-shard sha256
    shard-00000.bin      flat token ids (uint16 when the vocab fits, else uint32), EOS after each doc
    docs.npy             int64 start offset of every document in the concatenated token stream
    heldout.jsonl        the held-out documents ({"text": ...}), never trained on
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np

from smollm.config import SourceConfig
from smollm.data.sources import iter_documents
from smollm.data.tokenizer import load_fast

ENCODE_BATCH_DOCS = 512


def _batched(docs: Iterator[str], size: int) -> Iterator[list[str]]:
    while batch := list(islice(docs, size)):
        yield batch


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ShardWriter:
    """Appends token arrays, cutting a new shard file every `shard_tokens` tokens."""

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


def tokenize_source(source: SourceConfig, tokenizer_dir: Path, output: Path, shard_tokens: int) -> dict:
    """Write the source's held-out docs, token shards, doc index and manifest into `output`."""
    tokenizer = load_fast(tokenizer_dir)
    eos_id = tokenizer.token_to_id("<|endoftext|>")
    vocab = tokenizer.get_vocab_size()
    dtype = np.dtype(np.uint16 if vocab <= np.iinfo(np.uint16).max + 1 else np.uint32)
    docs = iter_documents(source)
    with open(output / "heldout.jsonl", "w") as handle:
        for doc in islice(docs, source.heldout_docs):
            handle.write(json.dumps({"text": doc}) + "\n")
    writer = ShardWriter(output, dtype, shard_tokens)
    starts, position, num_bytes = [], 0, 0
    for batch in _batched(docs, ENCODE_BATCH_DOCS):
        encodings = tokenizer.encode_batch_fast(batch, add_special_tokens=False)
        flat: list[int] = []
        for doc, encoding in zip(batch, encodings, strict=True):
            starts.append(position + len(flat))
            flat.extend(encoding.ids)
            flat.append(eos_id)
            num_bytes += len(doc.encode())
        position += len(flat)
        writer.add(np.asarray(flat, dtype=dtype))
    if not starts:
        raise ValueError(f"data.sources.{source.name}: no training documents after the held-out slice")
    np.save(output / "docs.npy", np.asarray(starts, dtype=np.int64))
    manifest = {
        "source": source.name,
        "tokenizer": str(tokenizer_dir),
        "vocab_size": vocab,
        "dtype": dtype.name,
        "num_tokens": position,
        "num_docs": len(starts),
        "num_bytes": num_bytes,
        "heldout_docs": source.heldout_docs,
        "heldout_sha256": sha256_file(output / "heldout.jsonl"),
        "shards": writer.close(),
    }
    (output / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


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
