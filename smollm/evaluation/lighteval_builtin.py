"""lighteval's built-in benchmarks as suite tasks (`kind: lighteval`): import only the modules a
suite names, adapt their configs, and name their metrics.

Imports lighteval at module level; `lighteval_backend` imports this module lazily.

How lighteval 0.13 declares them: each `lighteval/tasks/tasks/<family>.py` holds module-level
`LightevalTaskConfig`s in a `TASKS_TABLE` (`arc.py`: `arc:easy`, `arc:challenge`; `mmlu.py`: one
`mmlu:<subject>` per subject), run as `"<task>|<num_fewshot>"` (the older
`"suite|task|fewshot"` still parses, its suite ignored). lighteval's `Registry` imports every
family, and one downloads a file at import, so only the families a suite names are imported here;
the adapted configs join the custom tasks' `TASKS_TABLE` under the suite's task names (a group
such as `mmlu` becomes `<name>:<subject>`, which lighteval averages as `<name>:_average`).

What is kept and what is changed:
- Always kept: the dataset (repo, subset, splits, filter) and the few-shot split and selection.
- `cf` / `mcf`: lighteval 0.13 ships HellaSwag, PIQA, OpenBookQA, CommonsenseQA and MMLU as
  lettered questions scored by *generated* exact match, and ARC / WinoGrande as cloze scored by
  plain `acc`. RECIPE scores log-likelihood tasks with length-normalised accuracy in both the cloze
  and the lettered formulation, so these use lighteval's own prompt templates
  (`get_mcq_prompt_function` and its continuation and HellaSwag variants, the formats of its
  FineTasks suites) fed by a column adapter per dataset (`ADAPTERS`), scored by `acc` and
  `acc_norm` (log-likelihood per character). Rows without a gold label (PIQA's test split) are
  skipped.
- `native`: lighteval's prompt and metrics as shipped, except MATH: its `maj@4` samples four
  answers, which lighteval's transformers backend refuses at temperature 0; it is scored greedily
  with lighteval's own math pass@1 (the MATH-500 metric).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lighteval.metrics.metrics import Metrics
from lighteval.tasks.lighteval_task import LightevalTaskConfig
from lighteval.tasks.templates.continuation import get_continuation_prompt_function
from lighteval.tasks.templates.hellaswag import get_hellaswag_prompt_function
from lighteval.tasks.templates.multichoice import get_mcq_prompt_function
from lighteval.tasks.templates.utils.formulation import CFFormulation, MCFFormulation
from lighteval.utils.language import Language

from smollm.evaluation.lighteval_tasks import mcq_metrics
from smollm.evaluation.result import metric_key
from smollm.evaluation.suite import EvalTask, lighteval_family

EN = Language.ENGLISH


def _gold_from_key(choices: dict, key: str) -> int | None:
    """Index of answer key `key` among `choices["label"]` (ARC, CSQA, OBQA); None if unlabeled."""
    key = key.strip()
    return choices["label"].index(key) if key in choices["label"] else None


def _mcq(question: str, choices: list, gold: int | None, instruction: str = "") -> dict | None:
    if gold is None or not 0 <= gold < len(choices):
        return None
    mcq = {"question": question, "choices": choices, "gold_idx": gold}
    return {**mcq, "instruction": instruction} if instruction else mcq


def _arc(line: dict) -> dict | None:
    return _mcq(line["question"], line["choices"]["text"], _gold_from_key(line["choices"], line["answerKey"]))


def _commonsenseqa(line: dict) -> dict | None:
    return _mcq(line["question"], line["choices"]["text"], _gold_from_key(line["choices"], line["answerKey"]))


def _openbookqa(line: dict) -> dict | None:
    return _mcq(line["question_stem"], line["choices"]["text"], _gold_from_key(line["choices"], line["answerKey"]))


def _piqa(line: dict) -> dict | None:
    return _mcq(line["goal"], [line["sol1"], line["sol2"]], int(line["label"]))


def _mmlu(line: dict) -> dict | None:
    answer = line["answer"]
    gold = "ABCD".index(answer) if isinstance(answer, str) else int(answer)
    subject = line["subject"].replace("_", " ")
    return _mcq(line["question"], line["choices"], gold, f"The following are questions (with answers) about {subject}.")


def _mmlu_pro(line: dict) -> dict | None:
    topic = line["category"].replace("_", " ")
    return _mcq(
        line["question"],
        line["options"],
        int(line["answer_index"]),
        f"The following are questions (with answers) about {topic}.",
    )


def _hellaswag(line: dict) -> dict | None:
    if str(line["label"]) == "":
        return None
    return {
        "activity_label": line["activity_label"],
        "ctx_a": line["ctx_a"],
        "ctx_b": line["ctx_b"],
        "continuations": line["endings"],
        "gold_idx": int(line["label"]),
    }


def _winogrande(line: dict) -> dict | None:
    """Context = the sentence up to the blank; continuations = each option + the rest, joined as
    lighteval's own `winogrande_prompt` joins them (its multilingual `winogrand_adapter` doubles
    the space)."""
    if line["sentence"].count("_") != 1 or str(line["answer"]) not in ("1", "2"):
        return None
    context, rest = line["sentence"].split("_")
    options = [line["option1"], line["option2"]]
    return {
        "context": context,
        "continuations": [f"{o} {rest.strip()}" for o in options],
        "gold_idx": int(line["answer"]) - 1,
    }


# family -> (lighteval prompt template, column adapter): the datasets `cf`/`mcf` can score
ADAPTERS: dict[str, tuple[Callable[..., Any], Callable[[dict], dict | None]]] = {
    "arc": (get_mcq_prompt_function, _arc),
    "commonsenseqa": (get_mcq_prompt_function, _commonsenseqa),
    "hellaswag": (get_hellaswag_prompt_function, _hellaswag),
    "mmlu": (get_mcq_prompt_function, _mmlu),
    "mmlu_pro": (get_mcq_prompt_function, _mmlu_pro),
    "openbookqa": (get_mcq_prompt_function, _openbookqa),
    "piqa": (get_mcq_prompt_function, _piqa),
    "winogrande": (get_continuation_prompt_function, _winogrande),
}
# family -> metrics replacing lighteval's for `native` (see the module docstring)
NATIVE_METRICS: dict[str, Callable[[], list]] = {
    "math": lambda: [Metrics.pass_at_k_math(sample_params={"k": 1, "n": 1})],
}


@dataclasses.dataclass(frozen=True)
class BuiltinTask:
    """A suite task resolved to the lighteval configs it runs (one, or one per group member)."""

    task: EvalTask
    configs: tuple[LightevalTaskConfig, ...]

    @property
    def is_group(self) -> bool:
        return len(self.configs) > 1

    @property
    def result_key(self) -> str:
        """lighteval's key of the aggregated metrics: the task, or the mean over the group."""
        name = f"{self.task.name}:_average" if self.is_group else self.task.name
        return f"{name}|{self.task.num_fewshot}"

    @property
    def primary_metric(self) -> str:
        """What the category average reads: `acc_norm`, or the first metric lighteval lists."""
        return self.task.primary_metric or metric_key(self.configs[0].metrics[0].metric_name)


def resolve(task: EvalTask, index: int) -> BuiltinTask:
    """Import the task's family module only, and adapt the configs `task.task` names. Errors
    name the suite field (`tasks[<index>].task`), raised before any model is loaded."""
    assert task.task is not None  # EvalTask checks it for kind 'lighteval'
    family = lighteval_family(task.task)
    table = {config.name: config for config in _family_module(family).TASKS_TABLE}
    found = (
        [table[task.task]]
        if task.task in table
        else [c for n, c in sorted(table.items()) if n.startswith(f"{task.task}:")]
    )
    if not found:
        raise ValueError(
            f"tasks[{index}].task: not in lighteval.tasks.tasks.{family} (has {sorted(table)[:10]}), got {task.task!r}"
        )
    if task.dataset_path and not Path(task.dataset_path).is_dir():
        raise ValueError(f"tasks[{index}].dataset_path: is not a directory, got {task.dataset_path!r}")
    group = len(found) > 1
    configs = tuple(_adapt(task, c, f"{task.name}:{c.name.split(':', 1)[-1]}" if group else task.name) for c in found)
    return BuiltinTask(task=task, configs=configs)


def _family_module(family: str) -> Any:
    """`lighteval.tasks.tasks.<family>`, or its `main` where the family is a folder (`ifeval/`)."""
    module = importlib.import_module(f"lighteval.tasks.tasks.{family}")
    return module if hasattr(module, "TASKS_TABLE") else importlib.import_module(f"{module.__name__}.main")


def _adapt(task: EvalTask, config: LightevalTaskConfig, name: str) -> LightevalTaskConfig:
    family = lighteval_family(str(task.task))
    changes: dict[str, Any] = {"name": name}
    if task.formulation != "native":
        template, adapter = ADAPTERS[family]
        formulation = CFFormulation() if task.formulation == "cf" else MCFFormulation()
        changes.update(prompt_function=_no_empty_instruction(template(EN, adapter, formulation)), metrics=mcq_metrics())
    elif family in NATIVE_METRICS:
        changes["metrics"] = NATIVE_METRICS[family]()
    if task.dataset_path:  # a local folder: `lighteval_tasks.load_local` reads it (a subset folder if present)
        changes.update(hf_repo=str(Path(task.dataset_path).resolve()), hf_revision=None)
    return dataclasses.replace(config, **changes)


def _no_empty_instruction(prompt_function: Callable[[dict, str], Any]) -> Callable[[dict, str], Any]:
    """lighteval's plain-text prompt puts `doc.instruction` and a blank line before the query
    whenever the instruction is not None, and its continuation template sets it to "": the
    prompt would start with "\n\n". An empty instruction becomes None."""

    def prompt(line: dict, task_name: str) -> Any:
        doc = prompt_function(line, task_name)
        if doc is not None and doc.instruction == "":
            doc.instruction = None
        return doc

    return prompt
