"""Document streams for every source kind: built-in offline sources and `datasets` datasets.

Built-in sources exist on any machine with Python, so the embedded default runs offline:
- `stdlib_prose`: the interpreter's documentation topics (`pydoc_data`) and the docstrings of
  the standard library's modules, one document per topic or module;
- `stdlib_code`: the standard library's `.py` files, one document per file;
- `synthetic_math`: seeded arithmetic and word problems (`synthetic_math.py`).
`hf` sources go through `datasets.load_dataset` — a hub id streamed, a local folder laid out
like the hub repo (README configs, parquet/jsonl.zst files), a `save_to_disk` folder, or data
files — so a hub dataset and its local stand-in differ only in `path`. Datasets that carry ids
instead of text (Stack-Edu, Python-Edu) are fetched through `content_url` with urllib, so a
`file://` folder of blobs stands in for Software Heritage's bucket. A hub source's declared
`revision` (a branch, tag or commit) is part of its identity; its build asks the hub which
commit that is (`hub_commit`), reads that commit and records it in the manifest.
"""

from __future__ import annotations

import ast
import gzip
import platform
import random
import re
import sysconfig
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import Any
from urllib.parse import quote

from smollm.config import SourceConfig
from smollm.data import noisy_web, synthetic_math

SKIPPED_DIRS = {"site-packages", "test", "tests", "idle_test", "__pycache__"}
FETCH_WORKERS = 16  # requests in flight for `content_url` sources (one blob per document)
FETCH_ATTEMPTS = 4  # a transient network error is retried with backoff 1, 2, 4 s
FETCH_TIMEOUT_S = 60
FETCH_PROBE = 64  # this many missing objects before any is found: the template is wrong


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


def is_saved_dataset(path: str) -> bool:
    """Whether `path` is a `save_to_disk` folder (a `Dataset` or a `DatasetDict`)."""
    folder = Path(path)
    return (folder / "dataset_info.json").is_file() or (folder / "dataset_dict.json").is_file()


def _parts(source: SourceConfig) -> list[tuple[str | None, str | None]]:
    """(subset, data_dir) of each part a source reads; one part unless either is a list."""
    subsets = source.subset if isinstance(source.subset, tuple | list) else (source.subset,)
    data_dirs = source.data_dir if isinstance(source.data_dir, tuple | list) else (source.data_dir,)
    return [(subset, data_dir) for subset in subsets for data_dir in data_dirs]


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_id(path: str | None) -> bool:
    """Whether `path` names a hub dataset (`org/name`), not a local folder or a packaged builder."""
    return bool(path) and HUB_ID.match(path or "") is not None and not Path(path or "").exists()


def hub_commit(source: SourceConfig) -> str | None:
    """The commit the hub's dataset repo is at for the source's `revision` (its default branch
    if None), asked now; None for local data, or offline (`HF_HUB_OFFLINE`), where the build
    reads the cached copy of the declared revision."""
    if source.loader != "hf" or source.path is None or not is_hub_id(source.path):
        return None
    from huggingface_hub import HfApi, constants

    if constants.HF_HUB_OFFLINE:
        return None
    return HfApi().dataset_info(source.path, revision=source.revision).sha


def _load(source: SourceConfig, subset: str | None, data_dir: str | None) -> Any:
    import datasets

    assert source.path is not None  # checked by SourceConfig
    if is_saved_dataset(source.path):
        dataset = datasets.load_from_disk(source.path)
        return dataset[source.split] if isinstance(dataset, datasets.DatasetDict) else dataset
    return datasets.load_dataset(
        source.path,
        name=subset,
        data_dir=data_dir,
        data_files=source.data_files,
        split=source.split,
        streaming=source.streaming,
        revision=source.revision if is_hub_id(source.path) else None,
    )


def round_robin(iterables: list[Iterable[Any]]) -> Iterator[Any]:
    """One item of each iterable in turn until all are exhausted (deterministic interleaving)."""
    active = [iter(it) for it in iterables]
    while active:
        for it in list(active):
            try:
                yield next(it)
            except StopIteration:
                active.remove(it)


def hf_rows(source: SourceConfig) -> Iterator[dict[str, Any]]:
    """Rows of a `datasets` dataset; several configs or folders are interleaved round-robin.
    A `save_to_disk` folder is one dataset already: its subset and data_dir do not apply."""
    parts = _parts(source)
    if len(parts) == 1 or is_saved_dataset(source.path or ""):
        yield from _load(source, *parts[0])
    else:
        yield from round_robin([_load(source, *part) for part in parts])


def _missing_column(source: SourceConfig, field: str, column: str, row: dict[str, Any]) -> ValueError:
    return ValueError(f"data.sources.{source.name}.{field}: {column!r} is not a column (columns: {sorted(row)})")


def row_text(source: SourceConfig, row: dict[str, Any]) -> str:
    """The document in `row[text_field]`: a string, or a list of segments joined by `text_join`."""
    if source.text_field not in row:
        raise _missing_column(source, "text_field", source.text_field, row)
    value = row[source.text_field]
    if isinstance(value, list):
        if source.text_join is None:
            raise ValueError(
                f"data.sources.{source.name}.text_join: column {source.text_field!r} holds a list; "
                "set text_join to join its strings, got None"
            )
        return source.text_join.join(part for part in value if isinstance(part, str))
    if value is not None and not isinstance(value, str):
        raise ValueError(
            f"data.sources.{source.name}.text_field: column {source.text_field!r} holds "
            f"{type(value).__name__}, not text, got {source.text_field!r}"
        )
    return value or ""


def content_url(source: SourceConfig, row: dict[str, Any]) -> str:
    """`content_url` filled from the row (values URL-quoted)."""
    fields = source.content_fields()
    for field in fields:
        if field not in row:
            raise _missing_column(source, "content_url", field, row)
    return (source.content_url or "").format_map({field: quote(str(row[field]), safe="") for field in fields})


def fetch_content(source: SourceConfig, url: str) -> str | None:
    """The object at `url`, decompressed and decoded; None when it does not exist."""
    for attempt in range(FETCH_ATTEMPTS):
        try:
            with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S) as response:
                data = response.read()
            break
        except urllib.error.HTTPError as err:
            if err.code in (403, 404):  # S3 answers 403 for a missing key without list rights
                return None
            failure: Exception = err
        except urllib.error.URLError as err:
            if isinstance(err.reason, FileNotFoundError):
                return None
            failure = err
        except (TimeoutError, ConnectionError) as err:
            failure = err
        if attempt + 1 < FETCH_ATTEMPTS:
            time.sleep(2**attempt)
    else:
        raise OSError(f"data.sources.{source.name}.content_url: fetching {url} failed: {failure}")
    if source.content_compression == "gzip":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as err:
            raise ValueError(
                f"data.sources.{source.name}.content_compression: {url} is not gzip ({err}), got 'gzip'"
            ) from None
    # As the dataset cards' download scripts do: UTF-8, undecodable bytes dropped.
    return data.decode("utf-8", errors="ignore")


def fetched_documents(source: SourceConfig, rows: Iterator[dict[str, Any]]) -> Iterator[str]:
    """Each row's fetched document, in row order, with `FETCH_WORKERS` requests in flight.

    A missing object is skipped (the cards' scripts drop failed downloads too), but if none of
    the first `FETCH_PROBE` exists the template or the bucket is wrong: that is an error.
    """
    pool = ThreadPoolExecutor(FETCH_WORKERS)
    pending: deque[tuple[str, Future[str | None]]] = deque()
    found = missing = 0

    def take() -> str | None:
        nonlocal found, missing
        url, future = pending.popleft()
        text = future.result()
        found, missing = found + (text is not None), missing + (text is None)
        if not found and missing >= FETCH_PROBE:
            raise ValueError(
                f"data.sources.{source.name}.content_url: none of the first {missing} objects exist "
                f"(e.g. {url}), got {source.content_url!r}"
            )
        return text

    try:
        for row in rows:
            url = content_url(source, row)
            pending.append((url, pool.submit(fetch_content, source, url)))
            if len(pending) >= 2 * FETCH_WORKERS and (text := take()) is not None:
                yield text
        while pending:
            if (text := take()) is not None:
                yield text
        if missing and not found:
            raise ValueError(f"data.sources.{source.name}.content_url: no object exists, got {source.content_url!r}")
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def hf_documents(source: SourceConfig) -> Iterator[str]:
    """Texts of a `datasets` dataset (hub id streamed, local folder, or data files), read from
    the text column or fetched through `content_url`."""
    rows = hf_rows(source)
    if source.content_url is not None:
        yield from fetched_documents(source, rows)
    else:
        for row in rows:
            yield row_text(source, row)


def iter_documents(source: SourceConfig) -> Iterator[str]:
    """The source's documents in a deterministic order, filtered and capped."""
    if source.loader == "hf":
        docs: Iterator[str] = hf_documents(source)
    elif source.builtin == "stdlib_prose":
        docs = stdlib_prose(source.seed)
    elif source.builtin == "stdlib_code":
        docs = stdlib_code(source.seed)
    elif source.builtin == "noisy_web":
        docs = noisy_web.generate_documents(seed=source.seed, num_docs=source.num_docs or 100_000)
    else:
        docs = synthetic_math_docs(source.seed, source.num_docs)
    kept = (doc for doc in docs if len(doc.strip()) >= source.min_chars)
    return islice(kept, source.num_docs) if source.num_docs else kept


def environment_fingerprint(source: SourceConfig) -> dict[str, str]:
    """What a built-in source's content depends on besides its config (the interpreter)."""
    if source.loader == "builtin" and source.builtin in ("stdlib_prose", "stdlib_code"):
        return {"python": platform.python_version(), "stdlib": sysconfig.get_paths()["stdlib"]}
    return {}
