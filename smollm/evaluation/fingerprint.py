"""The suite fingerprint: what an evaluation's scores depend on besides the checkpoint.

    from smollm.evaluation.fingerprint import suite_fingerprint
    fingerprint = suite_fingerprint(suite, heldout={"stdlib_code": "<its data step's identity>"})
    fingerprint.digest                           # 16 hex digits, the same in every process
    fingerprint.tasks["hellaswag_cf"].metrics    # ['LogLikelihoodAccMetric()', ...]

Per task (`TaskFingerprint`): a hash of its prompt function's source, its metrics, its few-shot
count and seed, its dataset (path, subset, revision, a digest of a local copy), its generation
parameters and what picks its items; per suite: lighteval's version and a hash of our scoring
code. Evaluations with equal fingerprints ran the same evaluation, so their scores compare; the
rebalance refuses a rule that compares scores across stages whose fingerprints differ
(`smollm.rebalance.drift`). The fingerprint is part of the evaluation step's identity
(`smollm.stage.eval_step`), written to `results.json` (`EvalResult.fingerprint`) and logged on
the stage run (`smollm.runs.tracked_evaluate`).

Nothing here imports lighteval (seconds) or runs a prompt function. lighteval's version is its
package metadata; its built-in tasks' declarations (the `LightevalTaskConfig(...)` calls of
`lighteval/tasks/tasks/<family>.py`), our prompt functions, metric lists and item builders are
read from source with `ast`. A prompt function's hash covers its source and that of every
module-level name it reaches in its own module (helpers, constants); what it imports from
lighteval is covered by lighteval's version, our other code by the scoring-code hash.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import importlib.metadata
import importlib.util
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smollm.evaluation.suite import EvalSuite, EvalTask, lighteval_family, lighteval_family_file
from smollm.schema import ConfigError, to_dict
from smollm.step_code import code_hashes
from smollm.steps import canonical_json, content_hash

SCORING_CODE = ("smollm.evaluation.lighteval_backend",)
"""The evaluation step's entry module: its import closure (items, prompts, scores, the math
items' generator) is our scoring code (`smollm.step_code`)."""
TASKS_MODULE = "smollm.evaluation.lighteval_tasks"
BUILTIN_MODULE = "smollm.evaluation.lighteval_builtin"
ITEMS_MODULE = "smollm.evaluation.items"
CUSTOM_PROMPTS: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "math_mcq": (
        (TASKS_MODULE, ("mcq_doc",)),
        (ITEMS_MODULE, ("task_rng", "_math_question", "_mcq")),
        ("smollm.data.synthetic_math", ("addition",)),
    ),
    "continuation_mcq": ((TASKS_MODULE, ("mcq_doc",)), (ITEMS_MODULE, ("task_rng", "_continuation_questions", "_mcq"))),
    "bpb": ((TASKS_MODULE, ("bpb_doc",)), (ITEMS_MODULE, ("task_rng", "_bpb_items"))),
}
"""What writes a custom task's prompts, by kind: (module, its module-level names), the lighteval
prompt function (`lighteval_tasks.task_config`) and the item builders (`items.build_items`)."""
ITEM_FIELDS = ("num_items", "num_choices", "num_digits", "context_chars", "choice_chars", "prefix_chars", "max_chars")
GENERATION_FIELDS = ("generation_size", "stop_sequence", "num_samples")
FEWSHOT_SEED = 0
"""lighteval 0.13 draws a task's few-shot examples with variance seed 0 from a sampler seeded 42
(`LightevalTask.get_docs`); neither is a setting, so lighteval's version pins both."""
DIGEST_MAX_BYTES = 256 * 2**20
"""A local dataset up to this size is hashed by content; a larger one by its files' names and sizes."""


@dataclass(frozen=True, kw_only=True)
class TaskFingerprint:
    """What one task's scores depend on, in the order a change is reported. Values read from a
    lighteval declaration that are not literals are their source text; a group's (`mmlu`) field
    whose members differ is a digest of the members' values."""

    kind: str
    task: str | None
    """lighteval's task name (`kind: lighteval`)."""
    category: str
    averaged: bool
    """Whether its primary metric joins the category average (`aggregate`, and not bpb)."""
    formulation: str
    prompt_function: str | None = None
    """Hash of the source that turns a row or an item into a prompt."""
    metrics: Any = None
    """The metrics as declared: lighteval's `Metrics.<name>` or our constructor calls."""
    num_fewshot: int
    fewshot_seed: int | None
    """None without few-shot examples."""
    fewshot_split: Any = None
    fewshot_select: Any = None
    dataset_path: Any = None
    """The hub dataset, a local stand-in's `dataset_path`, or `heldout:<source>` (custom tasks)."""
    dataset_subset: Any = None
    dataset_revision: Any = None
    """The hub revision declared (None: the latest), or the held-out source's data identity."""
    dataset_digest: str | None = None
    """A local stand-in's files (`dataset_path`), hashed."""
    items: dict[str, Any]
    """What picks the items: the suite seed and the item settings (custom), `limit` (built-in)."""
    generation: dict[str, Any] | None = None
    members: int = 1
    """Tasks of a group (`mmlu`: 57), else 1."""
    declaration: str | None = None
    """Hash of the whole lighteval declaration (and what it reaches in its module)."""


@dataclass(frozen=True, kw_only=True)
class SuiteFingerprint:
    """lighteval's version, our scoring code and each task's fingerprint, by task name."""

    lighteval: str | None
    scoring_code: str
    tasks: dict[str, TaskFingerprint]

    @property
    def digest(self) -> str:
        return content_hash(to_dict(self))[:16]

    def to_dict(self) -> dict[str, Any]:
        return {"digest": self.digest, **to_dict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SuiteFingerprint:
        """Read `to_dict()`'s form back (its `digest` is recomputed, not read). Values are JSON
        as recorded (any of them may be null), so only the field names are checked."""
        known = {f.name for f in dataclasses.fields(TaskFingerprint)}
        tasks = {}
        for name, task in data["tasks"].items():
            unknown = sorted(set(task) - known)
            if unknown:
                raise ConfigError(f"fingerprint.tasks.{name}.{unknown[0]}: unknown field (known: {sorted(known)})")
            tasks[name] = TaskFingerprint(**task)
        return cls(lighteval=data["lighteval"], scoring_code=data["scoring_code"], tasks=tasks)

    def compared(self, task: str) -> dict[str, Any] | None:
        """Everything task `task`'s scores depend on, field by field; None if it is not in the suite."""
        if task not in self.tasks:
            return None
        return {"lighteval": self.lighteval, "scoring_code": self.scoring_code, **to_dict(self.tasks[task])}


def suite_fingerprint(suite: EvalSuite, heldout: Mapping[str, str] | None = None) -> SuiteFingerprint:
    """The suite's fingerprint; `heldout` names the revision of each held-out source's documents
    (the identity of its data step, or a digest of its file), recorded as the custom tasks'
    `dataset_revision`."""
    return SuiteFingerprint(
        lighteval=lighteval_version(),
        scoring_code=scoring_code(),
        tasks={task.name: task_fingerprint(task, suite.seed, heldout or {}) for task in suite.tasks},
    )


def task_fingerprint(task: EvalTask, seed: int, heldout: Mapping[str, str]) -> TaskFingerprint:
    common: dict[str, Any] = {
        "kind": task.kind,
        "task": task.task,
        "category": task.category,
        "averaged": task.aggregate and task.kind != "bpb",
        "formulation": task.formulation,
        "num_fewshot": task.num_fewshot,
        "fewshot_seed": FEWSHOT_SEED if task.num_fewshot else None,
    }
    return TaskFingerprint(**common, **(_builtin(task) if task.is_builtin else _custom(task, seed, heldout)))


@functools.cache
def lighteval_version() -> str | None:
    try:
        return importlib.metadata.version("lighteval")
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.cache
def scoring_code() -> str:
    return content_hash(code_hashes(SCORING_CODE))[:16]


@functools.cache
def module_source(module: str) -> str:
    """The source of one of our modules, from the file the import system would load (not imported)."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ValueError(f"fingerprint: no source for module {module!r}")
    return Path(spec.origin).read_text(encoding="utf-8")


def _custom(task: EvalTask, seed: int, heldout: Mapping[str, str]) -> dict[str, Any]:
    parts = [source_digest(module_source(module), names) for module, names in CUSTOM_PROMPTS[task.kind]]
    return {
        "prompt_function": _sha(canonical_json(parts)),
        "metrics": returned_list(module_source(TASKS_MODULE), "mcq_metrics" if task.is_mcq else "bpb_metrics"),
        "dataset_path": f"heldout:{task.source}" if task.source else None,
        "dataset_revision": heldout.get(task.source) if task.source else None,
        "items": {"seed": seed, **{name: getattr(task, name) for name in ITEM_FIELDS}},
    }


def _builtin(task: EvalTask) -> dict[str, Any]:
    """A built-in task: its lighteval declaration(s), then what `lighteval_builtin._adapt`
    changes (our cf/mcf prompts and metrics, lighteval's MATH metric, a local dataset)."""
    assert task.task is not None  # EvalTask checks it for kind 'lighteval'
    family = lighteval_family(task.task)
    path = lighteval_family_file(family)
    fields = declared_group(path.read_text(encoding="utf-8") if path else "", task.task)
    if task.formulation != "native":
        template, adapter = builtin_tables().adapters[family]
        own = source_digest(module_source(BUILTIN_MODULE), (adapter, "_no_empty_instruction"))
        fields["prompt_function"] = _sha(canonical_json([template, task.formulation, own]))
        fields["metrics"] = returned_list(module_source(TASKS_MODULE), "mcq_metrics")
    elif family in builtin_tables().native_metrics:
        fields["metrics"] = builtin_tables().native_metrics[family]
    if task.dataset_path:
        fields.update(dataset_path=task.dataset_path, dataset_revision=None)
        fields["dataset_digest"] = folder_digest(Path(task.dataset_path))
    return {**fields, "items": {"limit": task.limit}}


# --- reading source with ast ----------------------------------------------------------------


@dataclass(frozen=True)
class _Module:
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
def _module(source: str) -> _Module:
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
    return _Module(source, tree, defs, data, tuple(starts))


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _display(module: _Module, node: ast.AST) -> str:
    return " ".join(module.segment(node).split())


def _reach_text(module: _Module, names: Sequence[str]) -> str:
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
    return _sha(_reach_text(_module(source), names))


def _expression_digest(module: _Module, node: ast.AST) -> str:
    names = [n.id for n in ast.walk(node) if isinstance(n, ast.Name)]
    return _sha(module.segment(node) + "\n" + _reach_text(module, names))


def _value(module: _Module, node: ast.AST | None) -> Any:
    """A keyword's value: the literal (tuples as lists), else its source text."""
    if node is None:
        return None
    try:
        return _plain(ast.literal_eval(node))
    except (ValueError, TypeError, SyntaxError):
        return _display(module, node)


def _plain(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _elements(module: _Module, node: ast.AST | None) -> list[str] | None:
    if node is None:
        return None
    items = node.elts if isinstance(node, ast.List | ast.Tuple) else [node]
    return [_display(module, item) for item in items]


def returned_list(source: str, function: str) -> list[str] | None:
    """The elements of the list module-level `function` returns, as source text (our metric lists)."""
    module = _module(source)
    node = module.defs.get(function)
    returns = [n for n in ast.walk(node) if isinstance(n, ast.Return)] if node is not None else []
    if not returns:
        raise ValueError(f"fingerprint: {function} returns no list in the source read")
    return _elements(module, returns[0].value)


@functools.lru_cache(maxsize=128)
def declared_configs(source: str) -> dict[str, ast.Call]:
    """A lighteval task module's `LightevalTaskConfig(name="<literal>", ...)` calls, by name."""
    found = {}
    for node in ast.walk(_module(source).tree):
        if not isinstance(node, ast.Call):
            continue
        callee = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
        name = next((k.value for k in node.keywords if k.arg == "name"), None)
        if callee == "LightevalTaskConfig" and isinstance(name, ast.Constant) and isinstance(name.value, str):
            found[name.value] = node
    return found


def declared_task(source: str, name: str) -> dict[str, Any]:
    """What the declaration of lighteval task `name` in `source` fixes, as fingerprint fields."""
    module, call = _module(source), declared_configs(source)[name]
    kw: dict[str, ast.AST] = {k.arg: k.value for k in call.keywords if k.arg}
    generation = {key: _value(module, kw[key]) for key in GENERATION_FIELDS if key in kw}
    prompt = kw.get("prompt_function")
    return {
        "prompt_function": None if prompt is None else _expression_digest(module, prompt),
        "metrics": _elements(module, kw.get("metrics")),
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
        return (("declaration", _sha(source) if source else None),)
    declared = [declared_task(source, name) for name in names]
    fields: dict[str, Any] = {"members": len(names)}
    for key in declared[0]:
        values = [d[key] for d in declared]
        same = all(v == values[0] for v in values)
        fields[key] = values[0] if same else f"{len(names)} members, sha256:{_sha(canonical_json(values))}"
    return tuple(fields.items())


def declared_group(source: str, task: str) -> dict[str, Any]:
    """`declared_task` for `task`, or merged over a group's members (`mmlu` -> `mmlu:<subject>`)."""
    return dict(_declared_group(source, task))


@dataclass(frozen=True)
class BuiltinTables:
    """`lighteval_builtin`'s tables, read from its source: family -> (template, adapter) names,
    and family -> the metrics replacing lighteval's for `native`."""

    adapters: dict[str, tuple[str, str]]
    native_metrics: dict[str, list[str]]


@functools.cache
def builtin_tables() -> BuiltinTables:
    module = _module(module_source(BUILTIN_MODULE))

    def table(name: str) -> ast.Dict:
        node = module.defs[name]
        assert isinstance(node, ast.Assign | ast.AnnAssign) and isinstance(node.value, ast.Dict), name
        return node.value

    adapters, native = {}, {}
    for key, value in zip(table("ADAPTERS").keys, table("ADAPTERS").values, strict=True):
        assert isinstance(key, ast.Constant) and isinstance(value, ast.Tuple)
        adapters[str(key.value)] = (_display(module, value.elts[0]), _display(module, value.elts[1]))
    for key, value in zip(table("NATIVE_METRICS").keys, table("NATIVE_METRICS").values, strict=True):
        assert isinstance(key, ast.Constant)
        body = value.body if isinstance(value, ast.Lambda) else value
        native[str(key.value)] = _elements(module, body) or []
    return BuiltinTables(adapters, native)


# --- local datasets ---------------------------------------------------------------------------


def folder_digest(path: Path) -> str | None:
    """Hash of a local dataset's files (names, sizes and, up to `DIGEST_MAX_BYTES` in all, their
    bytes; past it `names+sizes:<hash>`); None if the folder does not exist."""
    if not path.is_dir():
        return None
    files = sorted(p for p in path.rglob("*") if p.is_file())
    stats = tuple((p.relative_to(path).as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    return _folder_digest(str(path.resolve()), stats)


@functools.lru_cache(maxsize=64)
def _folder_digest(root: str, stats: tuple[tuple[str, int, int], ...]) -> str:
    by_content = sum(size for _, size, _ in stats) <= DIGEST_MAX_BYTES
    digest = hashlib.sha256()
    for name, size, _ in stats:
        digest.update(f"{name}\0{size}\0".encode())
        if by_content:
            with open(Path(root) / name, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return ("" if by_content else "names+sizes:") + digest.hexdigest()[:16]
