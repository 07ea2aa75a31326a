"""Tests of smollm.evaluation: suite validation, item building, and real lighteval runs.

    PYTHONPATH=. python -m pytest tests/test_evaluation.py -q            # all (~1 min)
    PYTHONPATH=. python -m pytest tests/test_evaluation.py -q -m "not slow"

The slow tests run lighteval on tiny random Llamas and check its numbers against a direct
torch computation of the same log-likelihoods, so they prove what the wiring scores.
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
import random
import sysconfig
from pathlib import Path

import pytest
import yaml

from smollm.data.synthetic_math import generate_documents
from smollm.evaluation import EvalResult, EvalSuite, EvalTask
from smollm.evaluation.fingerprint import suite_fingerprint
from smollm.evaluation.items import LETTERS, build_items, read_heldout
from smollm.evaluation.lighteval_backend import build_suite_items, evaluate_checkpoint, fit_items
from smollm.evaluation.result import category_means

REPO = Path(__file__).resolve().parents[1]
STDLIB = Path(sysconfig.get_paths()["stdlib"])
CODE_FILES = (
    "json/encoder.py",
    "textwrap.py",
    "shlex.py",
    "fnmatch.py",
    "bisect.py",
    "heapq.py",
    "glob.py",
    "string.py",
    "calendar.py",
    "colorsys.py",
    "gettext.py",
    "netrc.py",
)


def _docstrings(path: Path) -> str:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef))]
    return "\n\n".join(d for d in (ast.get_docstring(n) for n in nodes) if d)


def write_heldout(root: Path) -> dict[str, Path]:
    """Small held-out files shaped like the embedded sources' (one document per line)."""
    docs = {
        "stdlib_prose": [_docstrings(STDLIB / f) for f in CODE_FILES],
        "stdlib_code": [(STDLIB / f).read_text(encoding="utf-8") for f in CODE_FILES],
        "synthetic_math": list(generate_documents(seed=7, num_docs=200)),
    }
    paths = {}
    for source, texts in docs.items():
        paths[source] = root / source / "heldout.jsonl"
        paths[source].parent.mkdir(parents=True)
        paths[source].write_text("".join(json.dumps({"text": t}) + "\n" for t in texts if t.strip()))
    return paths


def mcq(name: str, **kw) -> dict:
    return {"name": name, "kind": "math_mcq", "category": "math", **kw}


# --- suite validation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "message"),
    [
        (mcq("a", formulation="xyz"), "tasks[1].formulation: 'xyz' is not one of ['cf', 'mcf', 'native']"),
        (mcq("a", num_items=0), "tasks[1].num_items: must be >= 1, got 0"),
        (mcq("a", category="poetry"), "tasks[1].category: 'poetry' is not one of"),
        (mcq("a", kind="essay"), "tasks[1].kind: 'essay' is not one of"),
        (mcq("a", num_choices=1), "tasks[1].num_choices: must be in [2, 10], got 1"),
        (mcq("a", source="stdlib_code"), "tasks[1].source: must be unset for kind 'math_mcq'"),
        ({"name": "a", "kind": "bpb", "category": "code"}, "tasks[1].source: is required for kind 'bpb'"),
        (mcq("a", colour="red"), "tasks[1].colour: unknown field"),
        (mcq("math_add1_cf"), "tasks[1].name: duplicates tasks[0], got 'math_add1_cf'"),
        (mcq("Bad Name"), "tasks[1].name: must match"),
    ],
)
def test_suite_errors_name_field_and_value(task: dict, message: str) -> None:
    data = {"name": "s", "tasks": [mcq("math_add1_cf"), task]}
    with pytest.raises(ValueError) as err:
        EvalSuite.from_dict(data)
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value)


def test_suite_level_errors() -> None:
    with pytest.raises(ValueError, match=r"^batch_size: must be >= 1, got 0$"):
        EvalSuite.from_dict({"name": "s", "tasks": [mcq("a")], "batch_size": 0})
    with pytest.raises(ValueError, match=r"^tasks: must list at least one task"):
        EvalSuite.from_dict({"name": "s", "tasks": []})
    with pytest.raises(ValueError, match=r"^device: must be cpu, cuda\[:N\] or mps, got 'tpu'$"):
        EvalSuite.from_dict({"name": "s", "tasks": [mcq("a")], "device": "tpu"})
    with pytest.raises(ValueError, match=r"^formulation: 'xyz' is not one of"):
        EvalTask(name="a", kind="math_mcq", category="math", formulation="xyz")


def test_offline_yaml_loads_and_covers_every_category() -> None:
    suite = EvalSuite.from_dict(yaml.safe_load((REPO / "conf/eval/offline.yaml").read_text()))
    assert suite.name == "offline"
    assert {t.category for t in suite.tasks if t.is_mcq and t.aggregate} == {"knowledge", "math", "code"}
    assert {t.source for t in suite.tasks if t.kind == "bpb"} == {"stdlib_prose", "stdlib_code", "synthetic_math"}
    assert all(t.num_items == 100 for t in suite.tasks if t.is_mcq)
    assert EvalSuite.from_dict(suite.to_dict()) == suite


def test_only_kinds_keeps_the_tasks_of_those_kinds_and_refuses_an_empty_selection() -> None:
    data = yaml.safe_load((REPO / "conf/eval/offline.yaml").read_text())
    bpb = EvalSuite.from_dict({**data, "only_kinds": ["bpb"]})
    assert [t.name for t in bpb.tasks] == ["bpb_stdlib_prose", "bpb_stdlib_code", "bpb_synthetic_math"]
    assert EvalSuite.from_dict(bpb.to_dict()) == bpb  # the selection is recorded and idempotent
    assert set(suite_fingerprint(bpb).tasks) == {t.name for t in bpb.tasks}  # the identity follows the tasks
    with pytest.raises(ValueError, match=r"^only_kinds: 'accuracy' is not one of"):
        EvalSuite.from_dict({**data, "only_kinds": ["accuracy"]})
    with pytest.raises(ValueError, match=r"^only_kinds: selects none of the suite's tasks"):
        EvalSuite.from_dict({"name": "s", "tasks": [mcq("a")], "only_kinds": ["bpb"]})


# --- items -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def heldout(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_heldout(tmp_path_factory.mktemp("heldout"))


@pytest.fixture(scope="module")
def offline_suite() -> EvalSuite:
    return EvalSuite.from_dict(yaml.safe_load((REPO / "conf/eval/offline.yaml").read_text()))


def test_items_are_deterministic_and_depend_on_the_seed(offline_suite: EvalSuite, heldout: dict) -> None:
    first = build_suite_items(offline_suite, heldout)
    assert build_suite_items(offline_suite, heldout) == first
    other = build_suite_items(EvalSuite.from_dict({**offline_suite.to_dict(), "seed": 99}), heldout)
    for task in offline_suite.tasks:
        if len(first[task.name]) < task.num_items:  # bpb on a small source: every document
            assert task.kind == "bpb" and other[task.name] == first[task.name]
        else:
            assert len(first[task.name]) == task.num_items
            assert other[task.name] != first[task.name], task.name


def test_mcq_items_have_their_answer_among_distinct_choices(offline_suite: EvalSuite, heldout: dict) -> None:
    items = build_suite_items(offline_suite, heldout)
    for item in items["math_add1_cf"]:
        a, b = map(int, item["query"].removeprefix("Question: ").split(" = ?")[0].split(" + "))
        assert item["choices"][item["gold"]] == f" {a + b}"
        assert len(set(item["choices"])) == 4 and all(int(c) >= 0 for c in item["choices"])
    golds = [item["gold"] for item in items["math_add1_cf"]]
    assert set(golds) == {0, 1, 2, 3}  # the answer is not always in one place
    for task in ("prose_next_cf", "code_next_cf"):
        for item in items[task]:
            assert len(set(item["choices"])) == 4 and all(c.strip() for c in item["choices"])
            assert not item["query"][-1].isspace() and item["choices"][item["gold"]][0].isspace()


def test_continuation_gold_is_the_true_next_chunk(offline_suite: EvalSuite, heldout: dict) -> None:
    docs = read_heldout(heldout["stdlib_code"])
    for item in build_suite_items(offline_suite, heldout)["code_next_cf"]:
        true_text = item["query"] + item["choices"][item["gold"]]
        assert any(true_text in doc for doc in docs)
        for index, choice in enumerate(item["choices"]):
            if index != item["gold"]:
                assert not any(item["query"] + choice in doc for doc in docs)


def test_mcf_letters_match_cf_options(offline_suite: EvalSuite, heldout: dict) -> None:
    data = offline_suite.to_dict()
    code_cf = next(t for t in data["tasks"] if t["name"] == "code_next_cf")
    data["tasks"].append({**code_cf, "name": "code_next_mcf", "formulation": "mcf"})
    items = build_suite_items(EvalSuite.from_dict(data), heldout)
    for cf, mcf in [("math_add1_cf", "math_add1_mcf"), ("code_next_cf", "code_next_mcf")]:
        for a, b in zip(items[cf], items[mcf], strict=True):
            assert b["gold"] == a["gold"]
            assert b["choices"] == [f" {LETTERS[i]}" for i in range(4)]
            for letter, option in zip(LETTERS, a["choices"], strict=False):
                assert f"\n{letter}. {' '.join(option.split())}\n" in b["query"]
            assert b["query"].endswith("\nAnswer:")


def test_bpb_items_split_documents_and_respect_limits(offline_suite: EvalSuite, heldout: dict) -> None:
    items = build_suite_items(offline_suite, heldout)["bpb_stdlib_code"]
    task = next(t for t in offline_suite.tasks if t.name == "bpb_stdlib_code")
    docs = read_heldout(heldout["stdlib_code"])
    assert len(items) == len(docs)  # fewer documents than num_items: all of them
    for item, doc in zip(items, docs, strict=True):
        assert item["query"] + item["choices"][0] == doc[: task.max_chars]
        assert len(item["query"]) >= task.prefix_chars and item["gold"] == 0


def test_too_few_documents_is_a_clear_error() -> None:
    task = EvalTask(name="t", kind="continuation_mcq", category="code", source="x")
    with pytest.raises(ValueError, match="t: source 'x' has 1 documents"):
        build_items(task, 0, ["word " * 200])


class CharTokenizer:
    """One token per character, plus a leading bos when asked: enough to test fitting."""

    class Encoded:
        def __init__(self, input_ids: list) -> None:
            self.input_ids = input_ids

    def __call__(self, text, add_special_tokens: bool = True):
        bos = [0] if add_special_tokens else []
        if isinstance(text, list):
            return self.Encoded([bos + [1] * len(t) for t in text])
        return self.Encoded(bos + [1] * len(text))


def test_fit_items_cuts_bpb_documents_and_rejects_long_mcq() -> None:
    suite = EvalSuite.from_dict(
        {"name": "s", "tasks": [mcq("m"), {"name": "b", "kind": "bpb", "category": "code", "source": "x"}]}
    )
    short, long = {"query": "ab", "choices": ["cdef"], "gold": 0}, {"query": "ab", "choices": ["c" * 100], "gold": 0}
    fitted = fit_items(suite, {"m": [short], "b": [short, long]}, CharTokenizer(), max_length=40)
    assert fitted["m"] == [short] and fitted["b"][0] == short
    assert fitted["b"][1]["choices"][0] == "c" * 36  # 100, 90, 81, .., 40, 36: the first <= 40 - 3
    with pytest.raises(ValueError, match="m: an item has 103 tokens, more than the model's 40"):
        fit_items(suite, {"m": [long], "b": []}, CharTokenizer(), max_length=40)


def test_result_json_round_trip_and_categories(offline_suite: EvalSuite) -> None:
    metrics = {f"{t.name}/{t.primary_metric}": 0.25 + i / 100 for i, t in enumerate(offline_suite.tasks)}
    categories = category_means(offline_suite, metrics)
    assert categories == {
        "code": metrics["code_next_cf/acc_norm"],
        "knowledge": metrics["prose_next_cf/acc_norm"],
        "math": metrics["math_add1_cf/acc_norm"],
    }
    result = EvalResult(suite="offline", metrics=metrics, categories=categories, num_items={"a": 3})
    assert EvalResult.from_json(result.to_json()) == result


def test_importing_the_package_is_cheap() -> None:
    import subprocess
    import sys

    code = "import smollm.evaluation, sys; print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'lighteval', 'transformers', 'datasets'}))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO)},
    )
    assert out.stdout.strip() == "[]"


# --- real lighteval on tiny random models ------------------------------------------------------


def make_checkpoint(path: Path, texts: list[str], seed: int, max_positions: int = 256) -> Path:
    """A tiny random Llama plus a byte-level BPE (vocab 2048) saved together, as training does."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2048,
        special_tokens=["<|endoftext|>"],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(texts, trainer)
    eos = "<|endoftext|>"
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token=eos, eos_token=eos, unk_token=eos, pad_token=eos
    )
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=max_positions,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # a spread-out random init, so choices get clearly different scores
        for param in model.parameters():
            param.mul_(3.0) if param.dim() > 1 else None
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def direct_scores(model_dir: Path, items: list[dict]) -> list[list[tuple[float, int, str]]]:
    """(sum log p(choice | query), bytes, choice) per choice, computed with plain torch: the
    query tokenized with the tokenizer's defaults, each choice without special tokens."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    scores = []
    with torch.no_grad():
        for item in items:
            context = tokenizer(item["query"]).input_ids
            row = []
            for choice in item["choices"]:
                tokens = tokenizer(choice, add_special_tokens=False).input_ids
                logits = model(torch.tensor([context + tokens])).logits[0].float()
                logprobs = torch.log_softmax(logits[len(context) - 1 : -1], dim=-1)
                row.append((logprobs[torch.arange(len(tokens)), tokens].sum().item(), len(choice.encode()), choice))
            scores.append(row)
    return scores


def direct_accuracy(scores: list, items: list[dict], normalise: bool) -> float:
    correct = 0
    for row, item in zip(scores, items, strict=True):
        values = [lp / len(choice) if normalise else lp for lp, _, choice in row]
        correct += max(range(len(values)), key=values.__getitem__) == item["gold"]
    return correct / len(items)


def direct_bpb(scores: list) -> float:
    return -sum(row[0][0] for row in scores) / sum(row[0][1] for row in scores) / math.log(2)


SMALL_SUITE = {
    "name": "small",
    "seed": 3,
    "tasks": [
        mcq("math_add1_cf", num_items=48),
        mcq("math_add1_mcf", num_items=48, formulation="mcf"),
        {
            "name": "prose_next_cf",
            "kind": "continuation_mcq",
            "category": "knowledge",
            "source": "stdlib_prose",
            "num_items": 32,
        },
        {
            "name": "code_next_mcf",
            "kind": "continuation_mcq",
            "category": "code",
            "source": "stdlib_code",
            "num_items": 16,
            "formulation": "mcf",
            "context_chars": 96,
            "choice_chars": 40,
        },
        {"name": "bpb_stdlib_code", "kind": "bpb", "category": "code", "source": "stdlib_code", "max_chars": 300},
        {"name": "bpb_synthetic_math", "kind": "bpb", "category": "math", "source": "synthetic_math", "num_items": 24},
    ],
}


def read_items(out: Path, task: str) -> list[dict]:
    return [json.loads(line) for line in (out / "items" / task / "test.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory: pytest.TempPathFactory, heldout: dict) -> dict:
    """Two checkpoints (different seeds) evaluated one after the other in this process, from
    the same folder: only the weights differ, so a prediction cache keyed on the model config
    (lighteval's) would hand the second the first one's scores. The direct torch scores of
    each are taken right after its evaluation."""
    import numpy as np
    import torch

    root = tmp_path_factory.mktemp("eval")
    texts = [doc for path in heldout.values() for doc in read_heldout(path)]
    suite = EvalSuite.from_dict(SMALL_SUITE)
    runs = []
    random.seed(11)
    np.random.seed(11)
    before = (random.random(), np.random.rand())
    random.seed(11)
    np.random.seed(11)
    for seed in (0, 1):
        model_dir = make_checkpoint(root / "model", texts, seed)
        out = root / f"eval{seed}"
        result = evaluate_checkpoint(model_dir, suite, heldout, out)
        direct = {task.name: direct_scores(model_dir, read_items(out, task.name)) for task in suite.tasks}
        runs.append((result, out, direct))
    after = (random.random(), np.random.rand())
    return {"suite": suite, "runs": runs, "grad": torch.is_grad_enabled(), "rng": (before, after), "heldout": heldout}


@pytest.mark.slow
def test_lighteval_accuracy_equals_direct_computation(two_checkpoints: dict) -> None:
    for result, out, direct in two_checkpoints["runs"]:
        for task in (t.name for t in two_checkpoints["suite"].tasks if t.is_mcq):
            items = read_items(out, task)
            assert result.metrics[f"{task}/acc"] == direct_accuracy(direct[task], items, normalise=False), task
            assert result.metrics[f"{task}/acc_norm"] == direct_accuracy(direct[task], items, normalise=True), task


@pytest.mark.slow
def test_lighteval_bits_per_byte_equals_direct_computation(two_checkpoints: dict) -> None:
    for result, _, direct in two_checkpoints["runs"]:
        for task in ("bpb_stdlib_code", "bpb_synthetic_math"):
            expected = direct_bpb(direct[task])
            assert result.metrics[f"{task}/bits_per_byte"] == pytest.approx(expected, rel=1e-5)
            assert 1.0 < expected < 12.0  # a random model over a 2048 vocab: ~log2(2048)/bytes-per-token


@pytest.mark.slow
def test_each_checkpoint_is_scored_from_its_own_weights(two_checkpoints: dict) -> None:
    (first, _, _), (second, _, _) = two_checkpoints["runs"]
    assert first.metrics.keys() == second.metrics.keys()
    bpb = [k for k in first.metrics if k.endswith("bits_per_byte")]
    assert all(first.metrics[k] != second.metrics[k] for k in bpb)
    assert any(first.metrics[k] != second.metrics[k] for k in first.metrics if k.endswith("acc"))


@pytest.mark.slow
def test_reevaluating_changed_weights_in_place_is_not_served_from_a_cache(tmp_path: Path, heldout: dict) -> None:
    """Same model folder, same output folder, same config: only the weights change. lighteval's
    prediction cache keys on (model config, task config) and would return the old scores. The
    model's context (48 tokens) is shorter than the documents: they are cut to fit."""
    texts = read_heldout(heldout["stdlib_code"])
    task = {"name": "bpb_code", "kind": "bpb", "category": "code", "source": "stdlib_code", "max_chars": 400}
    suite = EvalSuite.from_dict({"name": "tiny", "tasks": [task]})
    values = []
    for seed in (0, 1):
        model_dir = make_checkpoint(tmp_path / "model", texts, seed, max_positions=48)
        result = evaluate_checkpoint(model_dir, suite, heldout, tmp_path / "eval")
        items = read_items(tmp_path / "eval", "bpb_code")
        assert len(items) == len(texts) and all(len(i["query"] + i["choices"][0]) < 400 for i in items)
        expected = direct_bpb(direct_scores(model_dir, items))
        assert result.metrics["bpb_code/bits_per_byte"] == pytest.approx(expected, rel=1e-5)
        values.append(expected)
    assert values[0] != pytest.approx(values[1], rel=1e-3)


@pytest.mark.slow
def test_results_files_and_categories(two_checkpoints: dict) -> None:
    suite = two_checkpoints["suite"]
    for result, out, _ in two_checkpoints["runs"]:
        assert EvalResult.from_json((out / "results.json").read_text()) == result
        assert result.model_dir.endswith("model") and result.suite == "small"
        assert result.categories == {
            "code": result.metrics["code_next_mcf/acc_norm"],
            "knowledge": result.metrics["prose_next_cf/acc_norm"],
            "math": (result.metrics["math_add1_cf/acc_norm"] + result.metrics["math_add1_mcf/acc_norm"]) / 2,
        }
        assert result.num_items["math_add1_cf"] == 48 and result.num_items["bpb_stdlib_code"] == len(CODE_FILES)
        assert set(result.stderr) <= set(result.metrics) and "math_add1_cf/acc" in result.stderr
        assert EvalSuite.from_dict(json.loads((out / "suite.json").read_text())) == suite
        assert len(list((out / "lighteval" / "details").rglob("*.parquet"))) == len(suite.tasks)
    # what was measured: the suite's fingerprint, each held-out file's digest as its revision
    heldout = two_checkpoints["heldout"]
    digests = {name: hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16] for name, path in heldout.items()}
    expected = suite_fingerprint(suite, {s: digests[s] for s in suite.sources()}).to_dict()
    assert [result.fingerprint for result, _, _ in two_checkpoints["runs"]] == [expected, expected]
    assert expected["tasks"]["prose_next_cf"]["dataset_revision"] == digests["stdlib_prose"]


@pytest.mark.slow
def test_evaluation_leaves_autograd_and_global_rngs_alone(two_checkpoints: dict) -> None:
    assert two_checkpoints["grad"] is True  # lighteval's import turns it off for the thread
    before, after = two_checkpoints["rng"]
    assert before == after  # lighteval's Pipeline reseeds random and numpy with 1234


def test_unknown_heldout_source_fails_before_any_compute(tmp_path: Path) -> None:
    suite = EvalSuite.from_dict(SMALL_SUITE)
    with pytest.raises(ValueError, match=r"tasks\[2\].source: 'stdlib_prose' has no held-out data"):
        evaluate_checkpoint(tmp_path / "missing", suite, {"stdlib_code": tmp_path / "x.jsonl"}, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_math_cloze_follows_the_worked_solution_format_of_the_training_documents() -> None:
    from smollm.data.synthetic_math import Problem

    task = EvalTask(name="add1", kind="math_mcq", category="math", num_items=20)
    for item in build_items(task, seed=0, documents=None):
        question = item["query"].split("\n")[0].removeprefix("Question: ")
        a, b = (int(x) for x in question.removesuffix(" = ?").split(" + "))
        document = Problem(question, a + b, f"{a} + {b} = {a + b}.").document()
        assert document.startswith(item["query"] + item["choices"][item["gold"]])
