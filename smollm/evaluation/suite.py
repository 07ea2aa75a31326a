"""The evaluation suite as typed config: which tasks, how many items, which seed.

`conf/eval/*.yaml` holds plain YAML whose keys match these fields; the composed config is
turned into objects at the edge with `EvalSuite.from_dict(OmegaConf.to_container(cfg.eval))`.
Errors are one line naming the field and the bad value, relative to the suite (the caller
prefixes `eval.`):

    ValueError: tasks[2].formulation: 'xyz' is not one of ['cf', 'mcf']
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from smollm.schema import check, from_dict, to_dict

KINDS = ("math_mcq", "continuation_mcq", "bpb")
CATEGORIES = ("knowledge", "reasoning", "math", "code")
FORMULATIONS = ("cf", "mcf")
MAX_CHOICES = 10  # MCF letters A..J; more options than this is not a small-model eval

_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")


def _one_of(value: Any, allowed: tuple[str, ...], field: str) -> None:
    if value not in allowed:
        raise ValueError(f"{field}: {value!r} is not one of {list(allowed)}")


@dataclass(frozen=True, kw_only=True)
class EvalTask:
    """One custom lighteval task built from a seed (and a source's held-out documents)."""

    name: str
    """Unique task name; metrics are keyed `<name>/<metric>` (lowercase, digits, `_`, `-`)."""
    kind: Literal["math_mcq", "continuation_mcq", "bpb"]
    """`math_mcq`: addition questions; `continuation_mcq`: which chunk continues a held-out
    document; `bpb`: bits per byte on held-out documents (a continuous metric)."""
    category: Literal["knowledge", "reasoning", "math", "code"]
    """The category whose average this task's accuracy joins (see `aggregate`)."""
    source: str | None = None
    """Held-out source the items come from (`continuation_mcq`, `bpb`); unused by `math_mcq`."""
    formulation: Literal["cf", "mcf"] = "cf"
    """`cf` (cloze): the choices are the answers themselves; `mcf`: the prompt lists lettered
    options and the choices are the letters. Unused by `bpb`."""
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
    """Whether the accuracy counts toward its category average. Off for tasks a tiny model is
    known to score at chance (kept as metrics, left out of the signal the rebalancer reads)."""

    def __post_init__(self) -> None:
        check(bool(_NAME.fullmatch(self.name)), "name", "must match [a-z0-9][a-z0-9_-]*", self.name)
        _one_of(self.kind, KINDS, "kind")
        _one_of(self.category, CATEGORIES, "category")
        _one_of(self.formulation, FORMULATIONS, "formulation")
        if self.kind == "math_mcq":
            check(self.source is None, "source", "must be unset for kind 'math_mcq'", self.source)
        else:
            check(bool(self.source), "source", f"is required for kind {self.kind!r}", self.source)
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

    @property
    def is_mcq(self) -> bool:
        return self.kind != "bpb"

    @property
    def primary_metric(self) -> str:
        """The metric a category averages: length-normalised accuracy for MCQ, else bpb."""
        return "acc_norm" if self.is_mcq else "bits_per_byte"


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

    def __post_init__(self) -> None:
        check(bool(self.name), "name", "must be non-empty", self.name)
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
