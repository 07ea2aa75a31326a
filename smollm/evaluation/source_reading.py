"""Reading Python source with `ast`: what the suite fingerprint (`fingerprint.py`) hashes.

    from smollm.evaluation.source_reading import declared_group, module_source, source_digest
    source_digest(module_source("smollm.evaluation.lighteval_tasks"), ["mcq_doc"])  # 16 hex digits
    declared_group(path.read_text(), "arc:easy")["metrics"]   # ['Metrics.loglikelihood_acc', ...]

What an evaluation's scores depend on is written in source files: lighteval's built-in task
declarations (the `LightevalTaskConfig(...)` calls of `lighteval/tasks/tasks/<family>.py`), our
prompt functions, metric lists and item builders. They are read here, never imported: importing
lighteval takes seconds and `smollm plan` computes every evaluation's fingerprint. A definition's
hash (`source_digest`) covers its source and that of every module-level name it reaches in its
own module (helpers, constants); a name it imports counts by its name only.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from smollm.step_code import module_file
from smollm.steps import canonical_json

GENERATION_FIELDS = ("generation_size", "stop_sequence", "num_samples")
"""The generation parameters a lighteval declaration fixes (`declared_task`'s `generation`)."""


@functools.cache
def module_source(module: str) -> str:
    """The source of one of our modules (`step_code.module_file`: read, not imported)."""
    path = module_file(module)
    if path is None:
        raise ValueError(f"fingerprint: no source for module {module!r}")
    return path.read_text(encoding="utf-8")


@dataclass(frozen=True)
class ParsedModule:
    """One source file, parsed once (`parsed_module`), with its module-level definitions."""

    source: str
    tree: ast.Module
    defs: dict[str, ast.stmt]
    """Module-level name -> the statement that defines it (def, class, assignment)."""
    data: bytes
    """The source as UTF-8: `ast` offsets count bytes."""
    line_starts: tuple[int, ...]

    def segment(self, node: ast.AST) -> str:
        """`ast.get_source_segment`, without splitting the source again on every call."""
        lineno, end = getattr(node, "lineno", None), getattr(node, "end_lineno", None)
        if lineno is None or end is None:
            return ast.dump(node)
        start = self.line_starts[lineno - 1] + node.col_offset  # type: ignore[attr-defined]
        stop = self.line_starts[end - 1] + node.end_col_offset  # type: ignore[attr-defined]
        return self.data[start:stop].decode()


@functools.lru_cache(maxsize=128)
def parsed_module(source: str) -> ParsedModule:
    """`source` parsed, cached by its text (the fingerprint reads the same files many times)."""
    tree = ast.parse(source)
    data = source.encode()
    starts, offset = [], 0
    for line in data.split(b"\n"):
        starts.append(offset)
        offset += len(line) + 1
    defs: dict[str, ast.stmt] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            defs[node.name] = node
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for name in target.elts if isinstance(target, ast.Tuple) else [target]:
                    if isinstance(name, ast.Name):
                        defs[name.id] = node
    return ParsedModule(source, tree, defs, data, tuple(starts))


def sha(text: str) -> str:
    """The first 16 hex digits of `text`'s SHA-256."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def display(module: ParsedModule, node: ast.AST) -> str:
    """`node`'s source text on one line, whitespace runs as one space."""
    return " ".join(module.segment(node).split())


def _reach_text(module: ParsedModule, names: Sequence[str]) -> str:
    """The source of the module-level definitions of `names` and of every module-level name
    they reach, in file order; a name defined elsewhere (imported) counts by its name."""
    seen: set[str] = set()
    queue, nodes = list(names), {}
    while queue:
        name = queue.pop()
        if name in seen:
            continue
        seen.add(name)
        node = module.defs.get(name)
        if node is not None:
            nodes[node.lineno] = node
            queue.extend(n.id for n in ast.walk(node) if isinstance(n, ast.Name))
    undefined = [f"# {name}: not defined here" for name in names if name not in module.defs]
    return "\n".join([*undefined, *(module.segment(nodes[line]) for line in sorted(nodes))])


def source_digest(source: str, names: Sequence[str]) -> str:
    """Hash of module-level `names` of `source` and of everything of the module they reach."""
    return sha(_reach_text(parsed_module(source), names))


def _expression_digest(module: ParsedModule, node: ast.AST) -> str:
    names = [n.id for n in ast.walk(node) if isinstance(n, ast.Name)]
    return sha(module.segment(node) + "\n" + _reach_text(module, names))


def _value(module: ParsedModule, node: ast.AST | None) -> Any:
    """A keyword's value: the literal (tuples as lists), else its source text."""
    if node is None:
        return None
    try:
        return _plain(ast.literal_eval(node))
    except (ValueError, TypeError, SyntaxError):
        return display(module, node)


def _plain(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def elements(module: ParsedModule, node: ast.AST | None) -> list[str] | None:
    """A list or tuple's elements as `display` text (another expression: a list of one); None for None."""
    if node is None:
        return None
    items = node.elts if isinstance(node, ast.List | ast.Tuple) else [node]
    return [display(module, item) for item in items]


def returned_list(source: str, function: str) -> list[str] | None:
    """The elements of the list module-level `function` returns, as source text (our metric lists)."""
    module = parsed_module(source)
    node = module.defs.get(function)
    returns = [n for n in ast.walk(node) if isinstance(n, ast.Return)] if node is not None else []
    if not returns:
        raise ValueError(f"fingerprint: {function} returns no list in the source read")
    return elements(module, returns[0].value)


@functools.lru_cache(maxsize=128)
def declared_configs(source: str) -> dict[str, ast.Call]:
    """A lighteval task module's `LightevalTaskConfig(name="<literal>", ...)` calls, by name."""
    found = {}
    for node in ast.walk(parsed_module(source).tree):
        if not isinstance(node, ast.Call):
            continue
        callee = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
        name = next((k.value for k in node.keywords if k.arg == "name"), None)
        if callee == "LightevalTaskConfig" and isinstance(name, ast.Constant) and isinstance(name.value, str):
            found[name.value] = node
    return found


def declared_task(source: str, name: str) -> dict[str, Any]:
    """What the declaration of lighteval task `name` in `source` fixes, as fingerprint fields."""
    module, call = parsed_module(source), declared_configs(source)[name]
    kw: dict[str, ast.AST] = {k.arg: k.value for k in call.keywords if k.arg}
    generation = {key: _value(module, kw[key]) for key in GENERATION_FIELDS if key in kw}
    prompt = kw.get("prompt_function")
    return {
        "prompt_function": None if prompt is None else _expression_digest(module, prompt),
        "metrics": elements(module, kw.get("metrics")),
        "fewshot_split": _value(module, kw.get("few_shots_split")),
        "fewshot_select": _value(module, kw.get("few_shots_select")),
        "dataset_path": _value(module, kw.get("hf_repo")),
        "dataset_subset": _value(module, kw.get("hf_subset")),
        "dataset_revision": _value(module, kw.get("hf_revision")),
        "generation": generation or None,
        "declaration": _expression_digest(module, call),
    }


@functools.lru_cache(maxsize=256)
def _declared_group(source: str, task: str) -> tuple[tuple[str, Any], ...]:
    configs = declared_configs(source)
    names = [task] if task in configs else sorted(n for n in configs if n.startswith(f"{task}:"))
    if not names:  # declared in a way `ast` cannot read (a loop, a factory): the whole module counts
        return (("declaration", sha(source) if source else None),)
    declared = [declared_task(source, name) for name in names]
    fields: dict[str, Any] = {"members": len(names)}
    for key in declared[0]:
        values = [d[key] for d in declared]
        same = all(v == values[0] for v in values)
        fields[key] = values[0] if same else f"{len(names)} members, sha256:{sha(canonical_json(values))}"
    return tuple(fields.items())


def declared_group(source: str, task: str) -> dict[str, Any]:
    """`declared_task` for `task`, or merged over a group's members (`mmlu` -> `mmlu:<subject>`)."""
    return dict(_declared_group(source, task))
