"""Document streams for every source kind: built-in offline sources and `datasets` datasets.

Built-in sources exist on any machine with Python, so the embedded default runs offline:
- `stdlib_prose`: the interpreter's documentation topics (`pydoc_data`) and the docstrings of
  the standard library's modules, one document per topic or module;
- `stdlib_code`: the standard library's `.py` files, one document per file;
- `synthetic_math`: seeded arithmetic and word problems (`synthetic_math.py`).
`hf` sources go through `datasets.load_dataset` — a hub id streamed, a local `save_to_disk`
folder, or parquet/json files — so the hub and its local stand-ins share one code path.
"""

from __future__ import annotations

import ast
import platform
import random
import sysconfig
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

from smollm.config import SourceConfig
from smollm.data import synthetic_math

SKIPPED_DIRS = {"site-packages", "test", "tests", "idle_test", "__pycache__"}


def stdlib_files() -> list[Path]:
    """The standard library's own `.py` files (no tests, no site-packages), sorted."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return [path for path in sorted(root.rglob("*.py")) if not SKIPPED_DIRS.intersection(path.relative_to(root).parts)]


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None


def module_docstrings(source: str) -> str:
    """A module's docstrings (module, classes, functions) joined as one prose document."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return ""
    parts = [ast.get_docstring(tree) or ""]
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            parts.append(ast.get_docstring(node) or "")
    return "\n\n".join(part for part in parts if part.strip())


def _shuffled(items: list[Any], seed: int) -> list[Any]:
    items = list(items)
    random.Random(seed).shuffle(items)
    return items


def stdlib_prose(seed: int) -> Iterator[str]:
    from pydoc_data.topics import topics

    docs = [topics[name] for name in sorted(topics)]
    for path in stdlib_files():
        text = _read(path)
        if text:
            docs.append(module_docstrings(text))
    yield from _shuffled(docs, seed)


def stdlib_code(seed: int) -> Iterator[str]:
    for path in _shuffled(stdlib_files(), seed):
        text = _read(path)
        if text:
            yield text


def synthetic_math_docs(seed: int, num_docs: int | None) -> Iterator[str]:
    yield from synthetic_math.generate_documents(seed=seed, num_docs=num_docs or 100_000)


def hf_documents(source: SourceConfig) -> Iterator[str]:
    """Texts of a `datasets` dataset: hub id (streamed), `save_to_disk` folder, or data files."""
    import datasets

    if source.path and Path(source.path).is_dir() and (Path(source.path) / "dataset_info.json").exists():
        dataset: Any = datasets.load_from_disk(source.path)
        if isinstance(dataset, datasets.DatasetDict):
            dataset = dataset[source.split]
    else:
        dataset = datasets.load_dataset(
            source.path,
            name=source.subset,
            data_dir=source.data_dir,
            data_files=source.data_files,
            split=source.split,
            streaming=source.streaming,
        )
    for row in dataset:
        if source.text_field not in row:
            raise ValueError(
                f"data.sources.{source.name}.text_field: {source.text_field!r} is not a column (columns: {sorted(row)})"
            )
        yield row[source.text_field]


def iter_documents(source: SourceConfig) -> Iterator[str]:
    """The source's documents in a deterministic order, filtered and capped."""
    if source.loader == "hf":
        docs: Iterator[str] = hf_documents(source)
    elif source.builtin == "stdlib_prose":
        docs = stdlib_prose(source.seed)
    elif source.builtin == "stdlib_code":
        docs = stdlib_code(source.seed)
    else:
        docs = synthetic_math_docs(source.seed, source.num_docs)
    kept = (doc for doc in docs if len(doc.strip()) >= source.min_chars)
    return islice(kept, source.num_docs) if source.num_docs else kept


def environment_fingerprint(source: SourceConfig) -> dict[str, str]:
    """What a built-in source's content depends on besides its config (the interpreter)."""
    if source.loader == "builtin" and source.builtin in ("stdlib_prose", "stdlib_code"):
        return {"python": platform.python_version(), "stdlib": sysconfig.get_paths()["stdlib"]}
    return {}
