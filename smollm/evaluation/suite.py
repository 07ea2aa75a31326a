"""The evaluation suite as typed config: which tasks, how many items, which seed.

`conf/eval/*.yaml` holds plain YAML whose keys match these fields; the composed config is
turned into objects at the edge with `EvalSuite.from_dict(OmegaConf.to_container(cfg.eval))`.
Errors are one line naming the field and the bad value, relative to the suite (the caller
prefixes `eval.`):

    ValueError: tasks[2].formulation: 'xyz' is not one of ['cf', 'mcf', 'native']

Two families of tasks: custom ones built from a seed and held-out documents (`math_mcq`,
`continuation_mcq`, `bpb`), and lighteval's built-in benchmarks (`kind: lighteval`, see
`lighteval_builtin`). Validating a suite imports nothing heavy and downloads nothing.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from smollm.schema import check, from_dict, to_dict

KINDS = ("math_mcq", "continuation_mcq", "bpb", "lighteval")
CATEGORIES = ("knowledge", "reasoning", "math", "code", "generative")
FORMULATIONS = ("cf", "mcf", "native")
MAX_CHOICES = 10  # MCF letters A..J; more options than this is not a small-model eval
# lighteval task modules (`lighteval.tasks.tasks.<family>`) whose datasets have a column adapter
# for the cf/mcf log-likelihood formulations; must match `lighteval_builtin.ADAPTERS`.
LOGLIKELIHOOD_FAMILIES = ("arc", "commonsenseqa", "hellaswag", "mmlu", "mmlu_pro", "openbookqa", "piqa", "winogrande")

_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")


def _one_of(value: Any, allowed: tuple[str, ...], field: str) -> None:
    if value not in allowed:
        raise ValueError(f"{field}: {value!r} is not one of {list(allowed)}")


def lighteval_family(task: str) -> str:
    """The lighteval module that declares `task`: `arc:easy` -> `arc`, `mmlu` -> `mmlu`."""
    return task.split(":", 1)[0]


def lighteval_family_file(family: str) -> Path | None:
    """lighteval's `lighteval/tasks/tasks/<family>.py` (or `<family>/main.py`), the module that
    declares the family's tasks, found on disk without importing lighteval (its import takes
    seconds); None if lighteval has no such module."""
    spec = importlib.util.find_spec("lighteval")
    if spec is None or not spec.submodule_search_locations or not re.fullmatch(r"\w+", family):
        return None
    tasks_dir = Path(next(iter(spec.submodule_search_locations))) / "tasks" / "tasks"
    return next((f for f in (tasks_dir / f"{family}.py", tasks_dir / family / "main.py") if f.is_file()), None)


def lighteval_module_exists(family: str) -> bool:
    """Whether lighteval ships a module declaring the tasks of `family` (`lighteval_family_file`)."""
    return lighteval_family_file(family) is not None


@dataclass(frozen=True, kw_only=True)
class EvalTask:
    """One lighteval task: a custom one built from a seed (and a source's held-out documents),
    or one of lighteval's built-in benchmarks (`kind: lighteval`)."""

    name: str
    """Unique task name; metrics are keyed `<name>/<metric>` (lowercase, digits, `_`, `-`)."""
    kind: Literal["math_mcq", "continuation_mcq", "bpb", "lighteval"]
    """`math_mcq`: addition questions; `continuation_mcq`: which chunk continues a held-out
    document; `bpb`: bits per byte on held-out documents (a continuous metric); `lighteval`:
    lighteval's built-in task `task`, on its hub dataset or the local stand-in `dataset_path`."""
    category: Literal["knowledge", "reasoning", "math", "code", "generative"]
    """The category whose average this task's primary metric joins (see `aggregate`)."""
    source: str | None = None
    """Held-out source the items come from (`continuation_mcq`, `bpb`); unset otherwise."""
    formulation: Literal["cf", "mcf", "native"] = "cf"
    """`cf` (cloze): the choices are the answers themselves; `mcf`: the prompt lists lettered
    options and the choices are the letters. Both score log-likelihoods (`acc`, `acc_norm`).
    `native` (`lighteval` only): lighteval's own prompt and metrics, e.g. generative exact match
    for GSM8K. Unused by `bpb`."""
    task: str | None = None
    """`lighteval`: lighteval's task name (`hellaswag`, `arc:easy`, `gsm8k`) or the prefix of a
    group of them (`mmlu`: its 57 subjects, scored as their mean). Only its module,
    `lighteval.tasks.tasks.<name before ':'>`, is imported."""
    num_fewshot: int = 0
    """`lighteval`: solved examples before each question, drawn by lighteval from the task's
    few-shot split."""
    dataset_path: str | None = None
    """`lighteval`: a local dataset standing in for the task's hub dataset (same columns and
    split names): a folder of `<split>.jsonl|.parquet|.csv` files or a `save_to_disk` folder,
    with one such folder per subset, `<dataset_path>/<subset>/`, where present. None: the hub."""
    limit: int | None = None
    """`lighteval`: at most this many items per (sub)task, lighteval's seeded sample; None: all."""
    num_items: int = 100
    """Questions (MCQ) or documents (`bpb`) to evaluate; bpb uses fewer if the source has fewer."""
    num_choices: int = 4
    """Options per MCQ question: the correct one plus `num_choices - 1` distractors."""
    num_digits: int = 1
    """Digits of each addition operand (`math_mcq`)."""
    context_chars: int = 192
    """Length of the document chunk shown before the choices (`continuation_mcq`)."""
    choice_chars: int = 64
    """Longest choice chunk, cut back to a word boundary (`continuation_mcq`)."""
    prefix_chars: int = 16
    """Leading characters of a document given as context and not scored (`bpb`): the first
    token needs something to be conditioned on."""
    max_chars: int = 512
    """Documents are truncated to this many characters (`bpb`), which keeps the eval fast and
    every document inside the model's context."""
    aggregate: bool = True
    """Whether the primary metric counts toward its category average. Off for tasks a tiny
    model is known to score at chance (kept as metrics, left out of the signal the rebalancer
    reads). `bpb` never counts (lower is better)."""

    def __post_init__(self) -> None:
        check(bool(_NAME.fullmatch(self.name)), "name", "must match [a-z0-9][a-z0-9_-]*", self.name)
        _one_of(self.kind, KINDS, "kind")
        _one_of(self.category, CATEGORIES, "category")
        _one_of(self.formulation, FORMULATIONS, "formulation")
        if self.kind == "lighteval":
            self._check_lighteval()
        else:
            self._check_custom()
        check(self.num_items >= 1, "num_items", "must be >= 1", self.num_items)
        check(2 <= self.num_choices <= MAX_CHOICES, "num_choices", f"must be in [2, {MAX_CHOICES}]", self.num_choices)
        check(1 <= self.num_digits <= 6, "num_digits", "must be in [1, 6]", self.num_digits)
        for name in ("context_chars", "choice_chars", "prefix_chars", "max_chars"):
            check(getattr(self, name) >= 1, name, "must be >= 1", getattr(self, name))
        check(
            self.max_chars > self.prefix_chars,
            "max_chars",
            f"must be > prefix_chars={self.prefix_chars}",
            self.max_chars,
        )

    def _check_custom(self) -> None:
        for name in ("task", "dataset_path", "limit"):
            check(
                getattr(self, name) is None,
                name,
                f"is only for kind 'lighteval', not {self.kind!r}",
                getattr(self, name),
            )
        check(
            self.num_fewshot == 0,
            "num_fewshot",
            f"a {self.kind!r} task has no few-shot split (only kind 'lighteval' takes few-shot examples)",
            self.num_fewshot,
        )
        check(self.formulation != "native", "formulation", f"must be 'cf' or 'mcf' for kind {self.kind!r}", "native")
        if self.kind == "math_mcq":
            check(self.source is None, "source", "must be unset for kind 'math_mcq'", self.source)
        else:
            check(bool(self.source), "source", f"is required for kind {self.kind!r}", self.source)

    def _check_lighteval(self) -> None:
        check(self.source is None, "source", "must be unset for kind 'lighteval'", self.source)
        check(bool(self.task), "task", "is required for kind 'lighteval'", self.task)
        family = lighteval_family(str(self.task))
        check(
            lighteval_module_exists(family),
            "task",
            f"is not a lighteval built-in task (no module lighteval.tasks.tasks.{family})",
            self.task,
        )
        if self.formulation != "native":
            check(
                family in LOGLIKELIHOOD_FAMILIES,
                "formulation",
                f"must be 'native' for lighteval task {self.task!r} (cf/mcf adapters: {list(LOGLIKELIHOOD_FAMILIES)})",
                self.formulation,
            )
        check(self.num_fewshot >= 0, "num_fewshot", "must be >= 0", self.num_fewshot)
        check(self.limit is None or self.limit >= 1, "limit", "must be >= 1 or null", self.limit)
        check(
            self.dataset_path is None or bool(self.dataset_path),
            "dataset_path",
            "must be a path or null",
            self.dataset_path,
        )

    @property
    def is_builtin(self) -> bool:
        """A lighteval built-in task (its items come from lighteval, not from `items.py`)."""
        return self.kind == "lighteval"

    @property
    def is_mcq(self) -> bool:
        """Scored by comparing choice log-likelihoods (custom MCQ, built-in cf/mcf)."""
        return self.kind in ("math_mcq", "continuation_mcq") or (self.is_builtin and self.formulation != "native")

    @property
    def primary_metric(self) -> str | None:
        """The metric a category averages: length-normalised accuracy for MCQ, bits per byte
        for bpb; None for `native` built-ins, whose metric is lighteval's first one (known
        once lighteval is imported, see `lighteval_builtin.primary_metric`)."""
        if self.is_mcq:
            return "acc_norm"
        return "bits_per_byte" if self.kind == "bpb" else None


@dataclass(frozen=True, kw_only=True)
class EvalSuite:
    """A named list of tasks, evaluated together on one checkpoint."""

    name: str
    """Suite name, recorded with the results."""
    tasks: tuple[EvalTask, ...]
    """The tasks; at least one per category the rebalancer reads."""
    seed: int = 0
    """Items are a pure function of (seed, task, held-out documents)."""
    batch_size: int = 32
    """Sequences per forward pass. lighteval packs `batch_size // num_choices` questions,
    rounded to a multiple of 8, so keep it a multiple of `8 * num_choices`."""
    device: str = "cpu"
    """Torch device (`cpu`, `cuda`, `cuda:1`); lighteval's own default is cuda."""
    save_details: bool = True
    """Write lighteval's per-item details (parquet) next to the results."""
    only_kinds: tuple[str, ...] = ()
    """Evaluate only the tasks of these kinds (empty: every task). Annealing members whose
    decision reads bits per byte alone evaluate `[bpb]`, not the accuracy tasks too."""

    def __post_init__(self) -> None:
        check(bool(self.name), "name", "must be non-empty", self.name)
        for kind in self.only_kinds:
            _one_of(kind, KINDS, "only_kinds")
        if self.only_kinds:
            kept = tuple(t for t in self.tasks if t.kind in self.only_kinds)
            check(bool(kept), "only_kinds", "selects none of the suite's tasks", list(self.only_kinds))
            object.__setattr__(self, "tasks", kept)
        check(len(self.tasks) >= 1, "tasks", "must list at least one task", list(self.tasks))
        seen: dict[str, int] = {}
        for index, task in enumerate(self.tasks):
            check(isinstance(task, EvalTask), f"tasks[{index}]", "must be an EvalTask", task)
            check(task.name not in seen, f"tasks[{index}].name", f"duplicates tasks[{seen.get(task.name)}]", task.name)
            seen[task.name] = index
        check(self.batch_size >= 1, "batch_size", "must be >= 1", self.batch_size)
        check(
            bool(re.fullmatch(r"cpu|cuda(:\d+)?|mps", self.device)),
            "device",
            "must be cpu, cuda[:N] or mps",
            self.device,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalSuite:
        """Build the suite from a plain dict (e.g. `OmegaConf.to_container(cfg.eval)`)."""
        return from_dict(cls, data)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def sources(self) -> list[str]:
        """The held-out sources the suite reads."""
        return sorted({t.source for t in self.tasks if t.source})

    def needs_hub(self) -> bool:
        """Whether a task reads its dataset from the Hugging Face hub (no local stand-in)."""
        return any(t.is_builtin and not t.dataset_path for t in self.tasks)
