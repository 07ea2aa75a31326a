"""What a step's code is: the project modules its entry modules can import, and the libraries.

A step names the modules whose functions compute it (`Step.code`, e.g. `smollm.train`). Its
output depends on every project module those can import, at any depth and from any function
body (`smollm.train` imports `smollm.data.blend` inside a function), and on the installed
versions of the third-party distributions they import.

Both are read from the source with `ast`, never by importing (the evaluation modules import
lighteval, which takes seconds): `closure` follows `import` and `from ... import` statements,
relative ones included; `module_hash` hashes a module's bytes under its dotted name, so the
same tree checked out anywhere gives the same identity. `libraries` maps the closure's
top-level imports to distributions (`importlib.metadata.packages_distributions`) and takes their
installed versions, and the interpreter's. A library's own requirements are not followed: the
versions that compute the step are the ones it imports (torch, transformers, tokenizers,
datasets, lighteval); following `Requires-Dist` would let an upgrade of, say, mlflow's
opentelemetry invalidate weeks of training. `constraints.txt` pins the rest.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata as metadata
import platform
import re
import sys
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
"""The folder holding the project's packages."""
PROJECT = ("smollm",)
"""Top-level packages whose modules are hashed by content (steps are computed by `smollm` only:
it never imports `flows` or `tasks`)."""


def module_file(name: str) -> Path | None:
    """The source file of project module `name` (a module or a package), None if it is not one."""
    if name.split(".")[0] not in PROJECT:
        return None
    base = ROOT.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    base = parts[: len(parts) - node.level + 1]
    return ".".join([*base, *([node.module] if node.module else [])])


@cache
def imported_names(name: str) -> tuple[str, ...]:
    """Every dotted name module `name` imports, anywhere in its source (function bodies too)."""
    path = module_file(name)
    if path is None:
        raise ValueError(f"step code: {name!r} is not a module of {', '.join(PROJECT)} under {ROOT}")
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_bytes(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, name, path.name == "__init__.py")
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return tuple(sorted(n for n in names if n))


def _with_parents(name: str) -> list[str]:
    """`a.b.c` -> `a`, `a.b`, `a.b.c`: importing a module runs its packages' `__init__`."""
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


@cache
def closure(entries: tuple[str, ...]) -> tuple[str, ...]:
    """The project modules `entries` can import, themselves and their packages included."""
    seen: set[str] = set()
    todo = [parent for entry in entries for parent in _with_parents(entry)]
    while todo:
        name = todo.pop()
        if name in seen or module_file(name) is None:
            continue
        seen.add(name)
        todo.extend(p for imported in imported_names(name) for p in _with_parents(imported))
    missing = [e for e in entries if e not in seen]
    if missing:
        raise ValueError(f"step code: no source for module {missing[0]!r} under {ROOT}")
    return tuple(sorted(seen))


@cache
def module_hash(name: str) -> str:
    path = module_file(name)
    assert path is not None, name  # closure() keeps project modules only
    return hashlib.sha256(name.encode() + b"\0" + path.read_bytes()).hexdigest()[:16]


def code_hashes(entries: Iterable[str]) -> dict[str, str]:
    """`{module: hash}` for every project module in the closure of `entries`."""
    return {name: module_hash(name) for name in closure(tuple(sorted(entries)))}


def third_party_imports(modules: Iterable[str]) -> set[str]:
    """The top-level names the modules import that are neither the project's nor the stdlib's."""
    tops = {imported.split(".")[0] for m in modules for imported in imported_names(m)}
    return {t for t in tops if t not in PROJECT and t not in sys.stdlib_module_names and t != "__future__"}


@cache
def _distributions_of() -> Mapping[str, list[str]]:
    return metadata.packages_distributions()


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@cache
def libraries(entries: tuple[str, ...]) -> dict[str, str]:
    """`{distribution: version}` of what the closure of `entries` imports, and the interpreter's."""
    tops = third_party_imports(closure(tuple(sorted(entries))))
    dists = {_canonical(d) for top in tops for d in _distributions_of().get(top, [])}
    versions = {dist: metadata.version(dist) for dist in sorted(dists)}
    return {"python": platform.python_version(), **versions}
