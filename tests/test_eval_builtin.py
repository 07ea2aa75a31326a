"""Tests of lighteval's built-in tasks in a suite (`kind: lighteval`), offline.

    PYTHONPATH=. python -m pytest tests/test_eval_builtin.py -q

The shipped SmolLM2 suite is checked against RECIPE.md; the same code path then runs built-in
tasks (HellaSwag, ARC with few-shot, the MMLU group in both formulations, GSM8K) on small local
stand-ins with the hub datasets' columns and split names, scoring a tiny random Llama.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from smollm.evaluation import EvalResult, EvalSuite
from smollm.evaluation.lighteval_backend import evaluate_checkpoint
from smollm.evaluation.suite import LOGLIKELIHOOD_FAMILIES, lighteval_module_exists
from tests.test_evaluation import direct_accuracy, direct_scores, make_checkpoint

REPO = Path(__file__).resolve().parents[1]
SMOLLM2_BASE = REPO / "conf/eval/smollm2_base.yaml"
# RECIPE.md's suite: lighteval task -> (formulations, few-shot); MMLU both ways, GSM8K 5-shot, MATH 4-shot
RECIPE = {
    "hellaswag": ({"cf"}, 0),
    "arc:easy": ({"cf"}, 0),
    "arc:challenge": ({"cf"}, 0),
    "piqa": ({"cf"}, 0),
    "commonsenseqa": ({"cf"}, 0),
    "winogrande": ({"cf"}, 0),
    "openbookqa": ({"cf"}, 0),
    "mmlu": ({"cf", "mcf"}, 0),
    "mmlu_pro": ({"mcf"}, 0),
    "triviaqa": ({"native"}, 0),
    "natural_questions": ({"native"}, 0),
    "gsm8k": ({"native"}, 5),
    "math": ({"native"}, 4),
}


def lighteval_task(name: str, task: str, category: str = "knowledge", **kw) -> dict:
    return {"name": name, "kind": "lighteval", "task": task, "category": category, **kw}


@pytest.fixture(autouse=True)
def keep_autograd_on():
    """Importing lighteval here (outside `evaluate_checkpoint`, which restores it) switches
    autograd off for the thread; later tests in the session must not inherit that."""
    import torch

    enabled = torch.is_grad_enabled()
    yield
    torch.set_grad_enabled(enabled)


# --- the shipped suite -------------------------------------------------------------------------


def test_smollm2_base_suite_has_every_recipe_task() -> None:
    suite = EvalSuite.from_dict(yaml.safe_load(SMOLLM2_BASE.read_text()))
    found: dict[str, tuple[set[str], set[int]]] = {}
    for task in suite.tasks:
        assert task.is_builtin and task.dataset_path is None and task.limit is None and task.aggregate, task.name
        formulations, shots = found.setdefault(str(task.task), (set(), set()))
        formulations.add(task.formulation)
        shots.add(task.num_fewshot)
    assert {name: (forms, shots) for name, (forms, shots) in found.items()} == {
        name: (forms, {shots}) for name, (forms, shots) in RECIPE.items()
    }
    categories = {t.task: t.category for t in suite.tasks}
    assert {categories[t] for t in ("gsm8k", "math")} == {"math"}
    assert {categories[t] for t in ("triviaqa", "natural_questions")} == {"generative"}
    assert {c for t, c in categories.items() if RECIPE[str(t)][0] != {"native"}} == {"knowledge"}
    assert suite.device == "cuda" and suite.needs_hub()
    assert EvalSuite.from_dict(suite.to_dict()) == suite
    # the YAML says lighteval 0.13 has no HumanEval / MultiPL-E: keep it true
    assert not any(lighteval_module_exists(m) for m in ("humaneval", "multipl_e", "multiple", "mbpp"))


def test_validating_the_suite_imports_nothing_heavy() -> None:
    """No lighteval, datasets or torch import (so no download) just to check a config."""
    code = (
        "import sys, yaml; from smollm.evaluation import EvalSuite; "
        f"EvalSuite.from_dict(yaml.safe_load(open({str(SMOLLM2_BASE)!r}))); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'lighteval', 'transformers', 'datasets'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_adapter_table_matches_the_families_validation_accepts() -> None:
    from smollm.evaluation.lighteval_builtin import ADAPTERS

    assert sorted(ADAPTERS) == sorted(LOGLIKELIHOOD_FAMILIES)


@pytest.mark.parametrize(
    ("task", "message"),
    [
        (lighteval_task("a", "humaneval"), "tasks[0].task: is not a lighteval built-in task"),
        (lighteval_task("a", "gsm8k", "math"), "tasks[0].formulation: must be 'native' for lighteval task 'gsm8k'"),
        (lighteval_task("a", "arc:easy", source="x"), "tasks[0].source: must be unset for kind 'lighteval'"),
        (lighteval_task("a", "arc:easy", limit=0), "tasks[0].limit: must be >= 1 or null, got 0"),
        (lighteval_task("a", "arc:easy", num_fewshot=-1), "tasks[0].num_fewshot: must be >= 0, got -1"),
        ({"name": "a", "kind": "lighteval", "category": "knowledge"}, "tasks[0].task: is required"),
        (
            {"name": "a", "kind": "math_mcq", "category": "math", "num_fewshot": 3},
            "tasks[0].num_fewshot: a 'math_mcq' task has no few-shot split (only kind 'lighteval' takes few-shot examples), got 3",
        ),
        ({"name": "a", "kind": "math_mcq", "category": "math", "formulation": "native"}, "tasks[0].formulation:"),
    ],
)
def test_builtin_task_errors_name_field_and_value(task: dict, message: str) -> None:
    with pytest.raises(ValueError) as err:
        EvalSuite.from_dict({"name": "s", "tasks": [task]})
    assert str(err.value).startswith(message) and "\n" not in str(err.value), str(err.value)


# --- built-in tasks on local stand-ins ---------------------------------------------------------

WORDS = "stone river apple cloud garden window paper silver forest candle bread music".split()


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def hellaswag_rows(n: int) -> list[dict]:
    """Rowan/hellaswag's columns; `label` is a string there."""
    return [
        {
            "ind": i,
            "activity_label": f"Making {WORDS[i % 12]}",
            "ctx_a": f"A person holds a {WORDS[i % 12]} near the {WORDS[(i + 3) % 12]}.",
            "ctx_b": "they",
            "ctx": "",
            "endings": [f"put the {WORDS[(i + k) % 12]} on the table." for k in range(4)],
            "source_id": "standin",
            "split": "val",
            "split_type": "indomain",
            "label": str(i % 4),
        }
        for i in range(n)
    ]


def arc_rows(n: int, offset: int = 0) -> list[dict]:
    """allenai/ai2_arc's columns: lettered choices and an `answerKey`."""
    rows = []
    for i in range(offset, offset + n):
        text = [WORDS[(i + k) % 12] for k in range(4)]
        rows.append(
            {
                "id": f"q{i}",
                "question": f"Which word names a thing like a {WORDS[i % 12]}?",
                "choices": {"text": text, "label": ["A", "B", "C", "D"]},
                "answerKey": "ABCD"[i % 4],
            }
        )
    return rows


def mmlu_rows(n: int, subject: str, offset: int = 0) -> list[dict]:
    """lighteval/mmlu's columns: `choices` list, integer `answer`, `subject`."""
    return [
        {
            "question": f"In {subject.replace('_', ' ')}, what is {i} plus {i % 7}?",
            "subject": subject,
            "choices": [str(i + (i + k) % 7) for k in range(4)],
            "answer": i % 4,
        }
        for i in range(offset, offset + n)
    ]


def gsm8k_rows(n: int) -> list[dict]:
    """openai/gsm8k's columns: the answer ends with `#### <number>`."""
    return [
        {
            "question": f"Tom has {i} apples and buys {i + 2} more. How many now?",
            "answer": f"{i} + {i + 2} = {2 * i + 2}\n#### {2 * i + 2}",
        }
        for i in range(n)
    ]


STANDIN_SUITE = [
    lighteval_task("hellaswag_cf", "hellaswag"),
    lighteval_task("arc_easy_cf", "arc:easy", num_fewshot=2),
    lighteval_task("mmlu_cf", "mmlu", limit=2),
    lighteval_task("mmlu_mcf", "mmlu", formulation="mcf", limit=2),
    lighteval_task("gsm8k", "gsm8k", "math", formulation="native", limit=3),
]


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Stand-ins written as a user would: HellaSwag as a `validation` file (one row unlabeled,
    as in its test split); ARC with its `ARC-Easy/` subset folder and a `train` split for the
    few-shot examples; MMLU with one folder per subject (`test`, `dev`); GSM8K with `train`
    for its few-shot pool."""
    from lighteval.tasks.tasks.mmlu import TASKS_TABLE as MMLU

    root = tmp_path_factory.mktemp("standin")
    write_jsonl(root / "hellaswag" / "validation.jsonl", hellaswag_rows(12) + [{**hellaswag_rows(1)[0], "label": ""}])
    write_jsonl(root / "arc" / "ARC-Easy" / "test.jsonl", arc_rows(10))
    write_jsonl(root / "arc" / "ARC-Easy" / "train.jsonl", arc_rows(6, offset=20))
    for index, subject in enumerate(config.hf_subset for config in MMLU):
        write_jsonl(root / "mmlu" / subject / "test.jsonl", mmlu_rows(3, subject, offset=3 * index))
        write_jsonl(root / "mmlu" / subject / "dev.jsonl", mmlu_rows(2, subject, offset=500))
    write_jsonl(root / "gsm8k" / "test.jsonl", gsm8k_rows(4))
    write_jsonl(root / "gsm8k" / "train.jsonl", gsm8k_rows(4))
    tasks = [{**t, "dataset_path": str(root / str(t["task"]).split(":")[0])} for t in STANDIN_SUITE]
    suite = EvalSuite.from_dict({"name": "standin", "tasks": tasks})
    texts = [json.dumps(row) for rows in (hellaswag_rows(12), arc_rows(26), gsm8k_rows(4)) for row in rows]
    model_dir = make_checkpoint(root / "model", texts, seed=0, max_positions=512)
    result = evaluate_checkpoint(model_dir, suite, {}, root / "eval")
    loaded = {m.rsplit(".", 1)[-1] for m in sys.modules if m.startswith("lighteval.tasks.tasks.")}
    return {"suite": suite, "result": result, "out": root / "eval", "model_dir": model_dir, "loaded": loaded}


@pytest.mark.slow
def test_builtin_tasks_score_the_standins(standin: dict) -> None:
    result: EvalResult = standin["result"]
    assert result.num_items == {
        "hellaswag_cf": 12,
        "arc_easy_cf": 10,
        "mmlu_cf": 57 * 2,
        "mmlu_mcf": 57 * 2,
        "gsm8k": 3,
    }
    for name in ("hellaswag_cf", "arc_easy_cf", "mmlu_cf", "mmlu_mcf"):
        for metric in ("acc", "acc_norm"):
            assert 0.0 <= result.metrics[f"{name}/{metric}"] <= 1.0
            assert f"{name}/{metric}" in result.stderr
    assert 0.0 <= result.metrics["gsm8k/extractive_match"] <= 1.0
    assert set(result.metrics) == {
        f"{n}/{m}" for n in result.num_items if n != "gsm8k" for m in ("acc", "acc_norm")
    } | {"gsm8k/extractive_match"}
    # only the families the suite names were imported (`tiny_benchmarks` downloads at import)
    assert standin["loaded"] <= {"hellaswag", "arc", "mmlu", "gsm8k"}


@pytest.mark.slow
def test_builtin_categories_average_their_primary_metrics(standin: dict) -> None:
    result: EvalResult = standin["result"]
    knowledge = [result.metrics[f"{n}/acc_norm"] for n in ("hellaswag_cf", "arc_easy_cf", "mmlu_cf", "mmlu_mcf")]
    assert result.categories == {
        "knowledge": pytest.approx(math.fsum(knowledge) / 4),
        "math": result.metrics["gsm8k/extractive_match"],
    }
    assert EvalResult.from_json((standin["out"] / "results.json").read_text()) == result


@pytest.mark.slow
def test_hellaswag_cloze_accuracy_equals_direct_computation(standin: dict) -> None:
    """lighteval's own HellaSwag template (cloze): the same numbers as plain torch on its prompts."""
    from smollm.evaluation.lighteval_builtin import resolve

    task = next(t for t in standin["suite"].tasks if t.name == "hellaswag_cf")
    config = resolve(task, 0).configs[0]
    docs = [config.prompt_function(row, "t") for row in hellaswag_rows(12)]
    items = [{"query": d.query, "choices": d.choices, "gold": d.gold_index[0]} for d in docs]
    assert items[0]["query"] == "Making stone:\nA person holds a stone near the cloud. They"
    assert items[0]["choices"][0] == " put the stone on the table."
    scores = direct_scores(standin["model_dir"], items)
    result = standin["result"]
    assert result.metrics["hellaswag_cf/acc"] == direct_accuracy(scores, items, normalise=False)
    assert result.metrics["hellaswag_cf/acc_norm"] == direct_accuracy(scores, items, normalise=True)


@pytest.mark.slow
def test_mmlu_group_is_the_mean_of_its_subjects(standin: dict) -> None:
    results = json.loads(next((standin["out"] / "lighteval" / "results").rglob("results_*.json")).read_text())[
        "results"
    ]
    subjects = [key for key in results if key.startswith("mmlu_cf:") and "_average" not in key]
    assert len(subjects) == 57
    mean = math.fsum(results[key]["acc_norm"] for key in subjects) / 57
    assert standin["result"].metrics["mmlu_cf/acc_norm"] == pytest.approx(mean)


def test_unknown_builtin_task_fails_before_any_compute(tmp_path: Path) -> None:
    suite = EvalSuite.from_dict({"name": "s", "tasks": [lighteval_task("a", "arc:medium", dataset_path=str(tmp_path))]})
    with pytest.raises(ValueError, match=r"^tasks\[0\]\.task: not in lighteval.tasks.tasks.arc .*got 'arc:medium'$"):
        evaluate_checkpoint(tmp_path / "missing", suite, {}, tmp_path / "out")
    suite = EvalSuite.from_dict(
        {"name": "s", "tasks": [lighteval_task("a", "arc:easy", dataset_path=str(tmp_path / "no"))]}
    )
    with pytest.raises(ValueError, match=r"^tasks\[0\]\.dataset_path: is not a directory"):
        evaluate_checkpoint(tmp_path / "missing", suite, {}, tmp_path / "out")
    assert not (tmp_path / "out").exists()
