"""Architecture rules of the three layers, checked from source with `ast` (nothing of the project is imported).

`smollm` is the library (steps, training, evaluation, tracking: no orchestrator, no Hydra),
`tasks` are Prefect tasks over it, `flows` are the Prefect flows, Hydra composition and the CLI.
The helpers at the top build the import graph of the three packages from every .py file:

- both module-level and function-level imports are edges (a function-level import cannot dodge
  a cycle), and so is `importlib.import_module("<constant>")`; imports under
  `if TYPE_CHECKING:` are not (they never run);
- `from pkg import name` is an edge to the submodule `pkg.name` when `pkg/name.py` (or
  `pkg/name/__init__.py`) exists, else to `pkg` (its `__init__`); `import a.b.c` is an edge to
  the longest project module of that name; relative imports are resolved against the importer.

The rules: no import cycle among project modules; `smollm` imports neither `prefect`, `flows`,
`tasks` nor `hydra`; `tasks` does not import `flows`; no function in `flows/` is longer than
50 lines; every module starts with a docstring and none of their docstrings or comments cites
`DESIGN.md` (the docs live in docs/).
"""

from __future__ import annotations

import ast
import io
import tokenize
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("smollm", "tasks", "flows")
MAX_FLOWS_FUNCTION_LINES = 50


@dataclass(frozen=True)
class Import:
    """One import statement's edge: `module` imports `target` at `where` (path:line)."""

    module: str
    target: str  # a project module once resolved, else the absolute name as written
    where: str
    function_level: bool

    def __str__(self) -> str:
        level = "function-level" if self.function_level else "module-level"
        return f"{self.module} -> {self.target}  ({self.where}, {level})"


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the project's packages by dotted name (a package by its own name)."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def is_project(name: str) -> bool:
    return name.split(".")[0] in PACKAGES


def is_type_checking(test: ast.expr) -> bool:
    """`if TYPE_CHECKING:` / `if typing.TYPE_CHECKING:`."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def import_nodes(tree: ast.AST) -> Iterator[tuple[ast.AST, bool]]:
    """(import node, inside a function?) for each import that can run, `if TYPE_CHECKING:` bodies skipped.

    An `importlib.import_module(...)`/`__import__(...)` call with a constant name counts as an import.
    """

    def visit(node: ast.AST, in_function: bool) -> Iterator[tuple[ast.AST, bool]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and is_type_checking(child.test):
                for other in child.orelse:
                    yield from visit_one(other, in_function)
                continue
            yield from visit_one(child, in_function)

    def visit_one(node: ast.AST, in_function: bool) -> Iterator[tuple[ast.AST, bool]]:
        if isinstance(node, ast.Import | ast.ImportFrom) or dynamic_import(node):
            yield node, in_function
        yield from visit(node, in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda))

    yield from visit(tree, False)


def dynamic_import(node: ast.AST) -> str | None:
    """The constant module name of `importlib.import_module("x")` / `import_module("x")` / `__import__("x")`."""
    if not (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)):
        return None
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    value = node.args[0].value
    return value if name in ("import_module", "__import__") and isinstance(value, str) else None


def relative_base(module: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute module a `from <level dots><name> import ...` in `module` refers to."""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    if level > 1:
        parts = parts[: len(parts) - (level - 1)]
    return ".".join([*parts, name] if name else parts)


def longest_module(name: str, modules: dict[str, Path]) -> str:
    """The longest dotted prefix of `name` that is a project module (`name` itself when not a project one)."""
    if not is_project(name):
        return name
    probe = name
    while probe and probe not in modules:
        probe = probe.rpartition(".")[0]
    return probe or name


def imported_modules(node: ast.AST, module: str, modules: dict[str, Path]) -> list[str]:
    """The modules one import node brings in, resolved as the module docstring says."""
    if isinstance(node, ast.Import):
        return [longest_module(alias.name, modules) for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        is_package = modules[module].name == "__init__.py"
        base = relative_base(module, is_package, node.level, node.module) if node.level else node.module or ""
        targets = []
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            targets.append(submodule if submodule in modules else longest_module(base, modules))
        return targets
    name = dynamic_import(node)
    return [longest_module(name, modules)] if name else []


def project_imports(root: Path = ROOT) -> list[Import]:
    """Every import of every project module (project and third-party targets alike)."""
    modules = module_files(root)
    found = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        where = path.relative_to(root).as_posix()
        for node, function_level in import_nodes(tree):
            for target in imported_modules(node, module, modules):
                if target != module:
                    found.append(Import(module, target, f"{where}:{node.lineno}", function_level))
    return list(dict.fromkeys(found))  # `from m import a, b` is one edge


def import_graph(imports: list[Import]) -> dict[str, set[str]]:
    """Project module -> the project modules it imports."""
    graph: dict[str, set[str]] = {}
    for edge in imports:
        graph.setdefault(edge.module, set())
        if is_project(edge.target):
            graph[edge.module].add(edge.target)
            graph.setdefault(edge.target, set())
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, stack = set(), [start]
    while stack:
        for nxt in graph[stack.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return seen


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (mutual reachability; the graph is small)."""
    reach = {node: reachable(graph, node) for node in graph}
    components, placed = [], set()
    for node in sorted(graph):
        if node in placed or node not in reach[node]:
            continue
        component = sorted(other for other in reach[node] if node in reach[other])
        placed.update(component)
        components.append(component)
    return components


def one_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """A shortest cycle through the component's first module (breadth first), as a module path."""
    start, inside = component[0], set(component)
    paths, seen = [[start]], {start}
    while paths:
        path = paths.pop(0)
        for nxt in sorted(graph[path[-1]] & inside):
            if nxt == start:
                return [*path, start]
            if nxt not in seen:
                seen.add(nxt)
                paths.append([*path, nxt])
    return component


def in_layer(module: str, layer: str) -> bool:
    return module == layer or module.startswith(layer + ".")


def functions(tree: ast.AST) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


def docstring_nodes(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """(line, text) of the module's, every class's and every function's docstring."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                if isinstance(body[0].value.value, str):
                    yield body[0].lineno, body[0].value.value


def comments(source: str) -> Iterator[tuple[int, str]]:
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            yield token.start[0], token.string


def listing(offenders) -> str:
    return "\n  " + "\n  ".join(map(str, offenders))


# --- the helpers themselves -------------------------------------------------------------------


def test_graph_helpers_resolve_submodules_packages_relative_imports_and_type_checking(tmp_path):
    files = {
        "smollm/__init__.py": "",
        "smollm/evaluation/__init__.py": "from smollm.evaluation import items\nfrom smollm.evaluation import Thing\n",
        "smollm/evaluation/items.py": "from . import suite\nfrom .. import config\nfrom ..config import X\n",
        "smollm/evaluation/suite.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import flows.cli\n",
        "smollm/config.py": "import smollm.evaluation.items.missing\ndef f():\n    import importlib\n"
        "    importlib.import_module('prefect.runtime')\n",
        "tasks/__init__.py": "",
        "flows/__init__.py": "",
        "flows/cli.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    edges = {(e.module, e.target, e.function_level) for e in project_imports(tmp_path)}
    assert edges == {
        ("smollm.evaluation", "smollm.evaluation.items", False),  # a submodule, not the package
        ("smollm.evaluation.items", "smollm.evaluation.suite", False),  # relative, a submodule
        ("smollm.evaluation.items", "smollm.config", False),  # `from .. import config`, `from ..config import X`
        ("smollm.evaluation.suite", "typing", False),
        ("smollm.config", "smollm.evaluation.items", False),  # the longest module of a dotted name
        ("smollm.config", "importlib", True),
        ("smollm.config", "prefect.runtime", True),  # a constant `import_module`
    }  # `from smollm.evaluation import Thing` in the package itself and the TYPE_CHECKING import: no edge
    graph = import_graph(project_imports(tmp_path))
    assert cycles(graph) == [["smollm.config", "smollm.evaluation.items"]]
    assert one_cycle(graph, cycles(graph)[0]) == ["smollm.config", "smollm.evaluation.items", "smollm.config"]


# --- the rules --------------------------------------------------------------------------------


def test_no_import_cycle_among_project_modules():
    imports = project_imports()
    graph = import_graph(imports)
    found = cycles(graph)
    report = []
    for component in found:
        members = set(component)
        report.append(f"cycle of {len(component)} modules: {' -> '.join(one_cycle(graph, component))}")
        report += [f"    {e}" for e in imports if e.module in members and e.target in members]
    assert not found, "import cycles (module- and function-level imports both count):" + listing(report)


def test_smollm_imports_neither_prefect_nor_flows_nor_tasks():
    offenders = [
        e
        for e in project_imports()
        if in_layer(e.module, "smollm") and any(in_layer(e.target, layer) for layer in ("prefect", "flows", "tasks"))
    ]
    assert not offenders, "smollm/ must not depend on the orchestrator (prefect, flows, tasks):" + listing(offenders)


def test_smollm_never_imports_hydra():
    offenders = [e for e in project_imports() if in_layer(e.module, "smollm") and in_layer(e.target, "hydra")]
    assert not offenders, "smollm/ must not import hydra (composition is flows/'s job):" + listing(offenders)


def test_tasks_do_not_import_flows():
    offenders = [e for e in project_imports() if in_layer(e.module, "tasks") and in_layer(e.target, "flows")]
    assert not offenders, "tasks/ must not import flows/ (flows call tasks, not the reverse):" + listing(offenders)


def test_no_function_in_flows_is_longer_than_50_lines():
    offenders = []
    for path in sorted((ROOT / "flows").rglob("*.py")):
        for node in functions(ast.parse(path.read_text(), filename=str(path))):
            length = node.end_lineno - node.lineno + 1  # from `def`: decorators excluded
            if length > MAX_FLOWS_FUNCTION_LINES:
                offenders.append(f"{path.relative_to(ROOT).as_posix()}:{node.lineno} {node.name}: {length} lines")
    assert not offenders, f"functions in flows/ over {MAX_FLOWS_FUNCTION_LINES} lines:" + listing(offenders)


def test_every_module_starts_with_a_docstring():
    offenders = []
    for path in module_files().values():
        source = path.read_text()
        if path.name == "__init__.py" and not source.strip():
            continue
        docstring = ast.get_docstring(ast.parse(source, filename=str(path)), clean=False)
        if not (docstring and docstring.strip()):
            offenders.append(path.relative_to(ROOT).as_posix())
    assert not offenders, "modules without a module docstring (as their first statement):" + listing(offenders)


def test_no_docstring_or_comment_mentions_design_md():
    offenders = []
    for path in module_files().values():
        source = path.read_text()
        rel = path.relative_to(ROOT).as_posix()
        for line, text in docstring_nodes(ast.parse(source, filename=str(path))):
            if "DESIGN.md" in text:
                offset = text[: text.index("DESIGN.md")].count("\n")
                offenders.append(f"{rel}:{line + offset} (docstring): {text.splitlines()[offset].strip()}")
        offenders += [f"{rel}:{line} (comment): {text}" for line, text in comments(source) if "DESIGN.md" in text]
    assert not offenders, "DESIGN.md is cited (the docs live in docs/):" + listing(offenders)
