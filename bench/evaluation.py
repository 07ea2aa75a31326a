"""Benchmark: a checkpoint evaluated through lighteval (`evaluate_checkpoint`) vs. the same
log-likelihoods computed directly, one batched torch loop over the same model, items, batch
size and threads. The direct path is checked to give the same numbers, so both do the same work.

    .venv/bin/python bench/evaluation.py            # the offline suite, demo model shape (~1 min)
    .venv/bin/python bench/evaluation.py --quick    # a few items per task (a smoke run)

Setup (not timed): a random model of the demo shape (`conf/model/debug.yaml`) with a BPE trained
on the builtin sources, saved as training saves checkpoints; the sources' held-out documents;
the suite of `conf/eval/offline.yaml`. Timed, best of 3 alternating runs: the lighteval path end
to end (items, model load, lighteval, metrics, files) and the direct path (items, model load,
scores, metrics). A second row splits both into a fixed cost (the suite with one item per task)
and a cost per item.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import tempfile
from functools import partial
from itertools import islice
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, Row, best_of, ceiling_row, main

THREADS = 2  # torch threads for both paths (the machine's cores)
TOKENIZER_BYTES = 300_000  # per source: enough for the demo's 2048-token BPE, fast to train
QUICK_ITEMS = 16  # items per task (documents per bpb task) in a --quick run


def build_fixture(root: Path, quick: bool):
    """(model_dir, suite, heldout): a checkpoint folder, the offline suite, held-out files."""
    import yaml

    from flows.compose import compose
    from smollm.data.sources import iter_documents
    from smollm.data.tokenizer import train_bpe
    from smollm.evaluation import EvalSuite
    from smollm.model import build_model

    cfg = compose([f"workdir={root / 'work'}"])
    heldout = {}
    for name, source in sorted(cfg.data.sources.items()):
        heldout[name] = root / "heldout" / name / "heldout.jsonl"  # as `tokenize_source` writes it
        heldout[name].parent.mkdir(parents=True)
        docs = islice(iter_documents(source), source.heldout_docs)
        heldout[name].write_text("".join(json.dumps({"text": doc}) + "\n" for doc in docs))
    model_dir = root / "model"
    tokenizer = dataclasses.replace(cfg.tokenizer, train_bytes_per_source=TOKENIZER_BYTES)
    train_bpe(tokenizer, cfg.data.sources.values(), model_dir)
    build_model(cfg.model, seed=0).save_pretrained(model_dir)
    data = yaml.safe_load((ROOT / "conf" / "eval" / "offline.yaml").read_text())
    if quick:
        data["tasks"] = [{**task, "num_items": QUICK_ITEMS} for task in data["tasks"]]
    return model_dir, EvalSuite.from_dict(data), heldout


def direct_evaluate(model_dir: Path, suite, heldout: dict[str, Path]) -> dict[str, float]:
    """The suite's metrics from plain transformers + torch: the same items (built and fitted
    by `lighteval_backend`), the same tokenization (query with the tokenizer's defaults, each
    choice without special tokens, trailing query whitespace moved into the choice), every
    (query, choice) sequence scored in length-sorted, right-padded batches of `suite.batch_size`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from smollm.evaluation.lighteval_backend import build_suite_items, fit_items

    items = build_suite_items(suite, heldout)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    items = fit_items(suite, items, tokenizer, model.config.max_position_embeddings)
    requests = [
        (context, continuation)
        for task in suite.tasks
        for item in items[task.name]
        for context, continuation in _encode(tokenizer, item)
    ]
    scores = iter(loglikelihoods(model, requests, suite.batch_size, tokenizer.pad_token_id))
    metrics = {}
    for task in suite.tasks:
        rows = [([next(scores) for _ in item["choices"]], item) for item in items[task.name]]
        if task.is_mcq:
            metrics[f"{task.name}/acc"] = _accuracy(rows, normalise=False)
            metrics[f"{task.name}/acc_norm"] = _accuracy(rows, normalise=True)
        else:
            logprob = sum(choice_scores[0] for choice_scores, _ in rows)
            num_bytes = sum(len(item["choices"][0].encode()) for _, item in rows)
            metrics[f"{task.name}/bits_per_byte"] = -logprob / num_bytes / math.log(2)
    return metrics


def _encode(tokenizer, item: dict) -> list[tuple[list[int], list[int]]]:
    """(context ids, choice ids) per choice, as lighteval's `tok_encode_pair(pairwise=True)`."""
    query = item["query"].rstrip()
    space = item["query"][len(query) :]
    context = tokenizer(query).input_ids
    if context and context[-1] == tokenizer.eos_token_id:
        context = context[:-1]
    choices = tokenizer([space + c for c in item["choices"]], add_special_tokens=False).input_ids
    return [(context, choice) for choice in choices]


def loglikelihoods(model, requests: list[tuple[list[int], list[int]]], batch_size: int, pad_id: int) -> list[float]:
    """sum log p(continuation | context) per request, in request order: requests sorted by
    tokens, `batch_size` right-padded sequences per forward pass, only the scored positions'
    logits normalised."""
    import torch

    order = sorted(range(len(requests)), key=lambda i: -len(requests[i][0]) - len(requests[i][1]))
    out = [0.0] * len(requests)
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            width = max(len(requests[i][0]) + len(requests[i][1]) for i in batch)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            rows, positions = [], []  # the logits that predict each continuation token
            for row, index in enumerate(batch):
                context, continuation = requests[index]
                ids[row, : len(context) + len(continuation)] = torch.tensor(context + continuation)
                rows += [row] * len(continuation)
                positions += range(len(context) - 1, len(context) + len(continuation) - 1)
            rows_t, positions_t = torch.tensor(rows), torch.tensor(positions)
            logprobs = torch.log_softmax(model(ids, use_cache=False).logits[rows_t, positions_t], dim=-1)
            token_logprobs = logprobs.gather(1, ids[rows_t, positions_t + 1][:, None])[:, 0]
            sums = torch.zeros(len(batch)).index_add_(0, rows_t, token_logprobs)
            for row, index in enumerate(batch):
                out[index] = sums[row].item()
    return out


def _accuracy(rows: list[tuple[list[float], dict]], normalise: bool) -> float:
    """lighteval's `LogLikelihoodAccMetric`: the first best choice (normalised by characters)."""
    correct = 0
    for scores, item in rows:
        values = [s / len(c) if normalise else s for s, c in zip(scores, item["choices"], strict=True)]
        correct += max(range(len(values)), key=values.__getitem__) == item["gold"]
    return correct / len(rows)


def compare(lighteval: dict[str, float], direct: dict[str, float]) -> str:
    """Largest disagreement of accuracies (absolute) and of bits per byte (relative)."""
    assert lighteval.keys() >= direct.keys(), sorted(direct.keys() - lighteval.keys())
    acc = max(abs(lighteval[k] - v) for k, v in direct.items() if not k.endswith("bits_per_byte"))
    bpb = max(abs(lighteval[k] / v - 1) for k, v in direct.items() if k.endswith("bits_per_byte"))
    for key in sorted(direct):
        print(f"  {key:34s} lighteval {lighteval[key]:.6f}  direct {direct[key]:.6f}", flush=True)
    if acc > 0.02 or bpb > 1e-4:  # batching may flip a near-tie; more means different work
        raise AssertionError(f"direct numbers disagree with lighteval's: acc {acc:.3f}, bpb {bpb:.2e}")
    return f"max |acc diff| {acc:.3f}, max bpb rel diff {bpb:.1e}"


def one_item_per_task(suite):
    """The suite with one item per task: what an evaluation costs besides its items."""
    from smollm.evaluation import EvalSuite

    data = suite.to_dict()
    return EvalSuite.from_dict({**data, "tasks": [{**task, "num_items": 1} for task in data["tasks"]]})


def time_both(model_dir: Path, suite, heldout: dict[str, Path], out: Path, repeats: int) -> tuple[float, float]:
    """Best (lighteval, direct) seconds of `repeats` alternating runs (a fresh output dir each)."""
    from smollm.evaluation.lighteval_backend import evaluate_checkpoint

    lighteval, direct = [], []
    for index in range(repeats):  # alternating: a busy spell of the machine slows both alike
        lighteval.append(best_of(partial(evaluate_checkpoint, model_dir, suite, heldout, out / str(index)), 1))
        direct.append(best_of(partial(direct_evaluate, model_dir, suite, heldout), 1))
    return min(lighteval), min(direct)


def run(quick: bool) -> list[Row]:
    import torch

    from smollm.evaluation.lighteval_backend import evaluate_checkpoint

    torch.set_num_threads(THREADS)
    repeats = 2 if quick else 3
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir, suite, heldout = build_fixture(root, quick)
        # the first call of each path imports lighteval / transformers: warm both, untimed
        result = evaluate_checkpoint(model_dir, suite, heldout, root / "warm")
        agreement = compare(result.metrics, direct_evaluate(model_dir, suite, heldout))
        lighteval_s, direct_s = time_both(model_dir, suite, heldout, root / "full", repeats)
        fixed = time_both(model_dir, one_item_per_task(suite), heldout, root / "fixed", repeats)
    num_items = sum(result.num_items.values())
    scored = num_items - len(suite.tasks)  # items beyond the one per task of `fixed`
    per_item = [(total - fixed[k]) / scored * 1000 for k, total in enumerate((lighteval_s, direct_s))]
    note = f"{num_items} items of {len(suite.tasks)} tasks, batch {suite.batch_size}, {THREADS} threads; {agreement}"
    split = Row(
        "evaluation: fixed cost (1 item per task) + per item, lighteval vs direct",
        f"{fixed[0]:.2f} s + {per_item[0]:.2f} ms/item",
        f"{fixed[1]:.2f} s + {per_item[1]:.2f} ms/item",
        None,
        "-",
        None,
    )
    return [ceiling_row("evaluation: lighteval / direct log-likelihood", lighteval_s, direct_s, 1.2, note=note), split]


if __name__ == "__main__":
    main(run)
