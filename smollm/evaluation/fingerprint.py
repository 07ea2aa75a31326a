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
read from source with `ast` (`source_reading.py`). A prompt function's hash covers its source and
that of every module-level name it reaches in its own module (helpers, constants); what it
imports from lighteval is covered by lighteval's version, our other code by the scoring-code hash.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import importlib.metadata
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smollm.evaluation.source_reading import (
    declared_group,
    display,
    elements,
    module_source,
    parsed_module,
    returned_list,
    sha,
    source_digest,
)
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


def _custom(task: EvalTask, seed: int, heldout: Mapping[str, str]) -> dict[str, Any]:
    parts = [source_digest(module_source(module), names) for module, names in CUSTOM_PROMPTS[task.kind]]
    return {
        "prompt_function": sha(canonical_json(parts)),
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
        fields["prompt_function"] = sha(canonical_json([template, task.formulation, own]))
        fields["metrics"] = returned_list(module_source(TASKS_MODULE), "mcq_metrics")
    elif family in builtin_tables().native_metrics:
        fields["metrics"] = builtin_tables().native_metrics[family]
    if task.dataset_path:
        fields.update(dataset_path=task.dataset_path, dataset_revision=None)
        fields["dataset_digest"] = folder_digest(Path(task.dataset_path))
    return {**fields, "items": {"limit": task.limit}}


# --- lighteval_builtin's tables, read from its source -----------------------------------------


@dataclass(frozen=True)
class BuiltinTables:
    """`lighteval_builtin`'s tables, read from its source: family -> (template, adapter) names,
    and family -> the metrics replacing lighteval's for `native`."""

    adapters: dict[str, tuple[str, str]]
    native_metrics: dict[str, list[str]]


@functools.cache
def builtin_tables() -> BuiltinTables:
    module = parsed_module(module_source(BUILTIN_MODULE))

    def table(name: str) -> ast.Dict:
        node = module.defs[name]
        assert isinstance(node, ast.Assign | ast.AnnAssign) and isinstance(node.value, ast.Dict), name
        return node.value

    adapters, native = {}, {}
    for key, value in zip(table("ADAPTERS").keys, table("ADAPTERS").values, strict=True):
        assert isinstance(key, ast.Constant) and isinstance(value, ast.Tuple)
        adapters[str(key.value)] = (display(module, value.elts[0]), display(module, value.elts[1]))
    for key, value in zip(table("NATIVE_METRICS").keys, table("NATIVE_METRICS").values, strict=True):
        assert isinstance(key, ast.Constant)
        body = value.body if isinstance(value, ast.Lambda) else value
        native[str(key.value)] = elements(module, body) or []
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
