"""Evaluate one checkpoint on a suite with lighteval: custom tasks from local files, built-in
tasks (`kind: lighteval`) from the hub or their local stand-ins.

    from smollm.evaluation import EvalSuite, evaluate_checkpoint
    suite = EvalSuite.from_dict(yaml.safe_load(open("conf/eval/offline.yaml")))
    result = evaluate_checkpoint(model_dir, suite, {"stdlib_code": Path(".../heldout.jsonl"), ...}, out)

A suite whose every dataset is local runs with the HF libraries offline; one with a built-in
task on the hub leaves the environment as it is (set `HF_DATASETS_OFFLINE=1` to use a warm cache).

`output_dir` (unique per checkpoint) receives:

    items/<task>/test.jsonl   custom tasks' items (fitted to the model's context), the dataset lighteval loads
    suite.json                the suite evaluated (provenance)
    lighteval/                lighteval's results and per-item details
    results.json              `EvalResult.to_json()` (with the suite fingerprint), written last and atomically

lighteval's prediction cache is switched off: it keys on the model config, not the weights;
with a path as `model_name` it writes into the checkpoint folder; it made this suite ~4x
slower (a parquet round trip per task); and skipping a finished evaluation is the step
executor's job (docs/architecture.md, "Step identity and caching"). Its `cache_dir` still
points into `output_dir`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import signal
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from smollm.evaluation.fingerprint import SuiteFingerprint, suite_fingerprint
from smollm.evaluation.items import build_items, read_heldout, write_items
from smollm.evaluation.result import EvalResult, category_means, metric_key
from smollm.evaluation.suite import EvalSuite

if TYPE_CHECKING:
    from smollm.evaluation.lighteval_builtin import BuiltinTask

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
MODEL_NAME = "checkpoint"  # lighteval's name for the model in its own output paths


def _default_sigterm() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


# lighteval bootstraps corpus metrics' stderr in a forked multiprocessing pool (drawn in-process
# since `lighteval_tasks.SerialBootstrap`), whose teardown SIGTERMs its workers; a forked worker
# must not run the parent's handler (Prefect's raises TerminationSignal and prints a traceback per
# worker).
os.register_at_fork(after_in_child=_default_sigterm)


def evaluate_checkpoint(
    model_dir: Path,
    suite: EvalSuite,
    heldout: Mapping[str, Path],
    output_dir: Path,
    fingerprint: SuiteFingerprint | None = None,
    *,
    progress: str | None = None,
) -> EvalResult:
    """Score the checkpoint in `model_dir` (model + tokenizer, `save_pretrained`) on `suite`.
    `fingerprint` is the suite's as the evaluation step computed it (its held-out revisions are
    the sources' data identities); by default each held-out file's digest stands for its revision.
    `progress` labels a progress bar over the scored batches (None: no bar)."""
    model_dir, output_dir = Path(model_dir), Path(output_dir)
    for index, task in enumerate(suite.tasks):
        if task.source and task.source not in heldout:
            raise ValueError(f"tasks[{index}].source: {task.source!r} has no held-out data (have {sorted(heldout)})")
    if fingerprint is None:
        fingerprint = suite_fingerprint(suite, {s: _file_digest(Path(heldout[s])) for s in suite.sources()})
    items = build_suite_items(suite, heldout)

    start = time.perf_counter()
    environment = contextlib.nullcontext() if suite.needs_hub() else _offline_env()
    with environment, _preserved_global_state():
        builtins = _resolve_builtins(suite)  # imports their lighteval modules; a bad name fails here
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "suite.json").write_text(json.dumps(suite.to_dict(), indent=2))
        aggregated, num_items = _run_lighteval(model_dir, suite, items, builtins, output_dir, progress)
    metrics, stderr = _split_metrics(suite, aggregated, builtins)
    primary = {name: builtin.primary_metric for name, builtin in builtins.items()}
    result = EvalResult(
        suite=suite.name,
        metrics=metrics,
        categories=category_means(suite, metrics, primary),
        stderr=stderr,
        num_items=num_items,
        model_dir=str(model_dir),
        seconds=round(time.perf_counter() - start, 3),
        fingerprint=fingerprint.to_dict(),
    )
    tmp = output_dir / "results.json.tmp"
    tmp.write_text(result.to_json())
    tmp.replace(output_dir / "results.json")
    return result


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def build_suite_items(suite: EvalSuite, heldout: Mapping[str, Path]) -> dict[str, list[dict]]:
    """Items of every custom task, a pure function of (suite, held-out files); each source read
    once. Built-in tasks have none: lighteval reads their datasets."""
    documents = {source: read_heldout(Path(heldout[source])) for source in suite.sources()}
    return {
        t.name: build_items(t, suite.seed, documents.get(t.source) if t.source else None)
        for t in suite.tasks
        if not t.is_builtin
    }


def fit_items(suite: EvalSuite, items: dict[str, list[dict]], tokenizer, max_length: int) -> dict[str, list[dict]]:
    """Make every query + choice fit the model's context, in tokens (lighteval would cut the
    query from the left, and score a choice longer than the context on garbage). An MCQ item
    that does not fit is a config error; a bpb document is cut shorter until it fits (how
    far depends on the tokenizer, which is the same for every checkpoint of a pipeline)."""
    fitted: dict[str, list[dict]] = {}
    for task in (t for t in suite.tasks if not t.is_builtin):
        fitted[task.name] = []
        for item in items[task.name]:
            query = len(tokenizer(item["query"]).input_ids)
            choices = [len(ids) for ids in tokenizer(item["choices"], add_special_tokens=False).input_ids]
            if query + max(choices) <= max_length:
                fitted[task.name].append(item)
            elif task.is_mcq:
                raise ValueError(
                    f"{task.name}: an item has {query + max(choices)} tokens, more than the model's "
                    f"{max_length}; lower context_chars/choice_chars"
                )
            else:
                fitted[task.name].append(_shorten(item, query, tokenizer, max_length))
    return fitted


def _shorten(item: dict, query_tokens: int, tokenizer, max_length: int) -> dict:
    text = item["choices"][0]
    while text.strip() and len(tokenizer(text, add_special_tokens=False).input_ids) > max_length - query_tokens:
        text = text[: len(text) * 9 // 10]
    if not text.strip():
        raise ValueError(f"a bpb context of {query_tokens} tokens leaves nothing to score in {max_length}")
    return {**item, "choices": [text]}


def _resolve_builtins(suite: EvalSuite) -> dict[str, BuiltinTask]:
    """The suite's built-in tasks, by name, resolved to the lighteval configs they run."""
    if not any(task.is_builtin for task in suite.tasks):
        return {}
    from smollm.evaluation import lighteval_builtin

    return {
        task.name: lighteval_builtin.resolve(task, index) for index, task in enumerate(suite.tasks) if task.is_builtin
    }


def _run_lighteval(
    model_dir: Path,
    suite: EvalSuite,
    items: dict[str, list[dict]],
    builtins: dict[str, BuiltinTask],
    output_dir: Path,
    progress: str | None,
) -> tuple[dict[str, dict[str, float]], dict[str, int]]:
    """Load the checkpoint, fit and write the items, run lighteval: (aggregated metrics, items
    scored per task)."""
    import torch
    from lighteval.logging.evaluation_tracker import EvaluationTracker
    from lighteval.pipeline import ParallelismManager, PipelineParameters
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from smollm.evaluation import lighteval_model, lighteval_tasks

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.to(torch.device(suite.device)).eval()  # type: ignore[arg-type]  # transformers 5 mis-types `.to`
    max_length = getattr(model.config.get_text_config(), "max_position_embeddings", None) or 2048
    items = fit_items(suite, items, AutoTokenizer.from_pretrained(model_dir), max_length)
    configs: list = []  # lighteval task configs, custom and built-in
    limits: dict[str, int] = {}
    for task in suite.tasks:
        if task.is_builtin:
            configs.extend(builtins[task.name].configs)
            limits.update({config.name: task.limit for config in builtins[task.name].configs if task.limit})
        else:
            write_items(items[task.name], output_dir / "items" / task.name / "test.jsonl")
            configs.append(lighteval_tasks.task_config(task, output_dir / "items" / task.name))

    config = lighteval_model.LocalModelConfig(
        model_name=MODEL_NAME,
        tokenizer=str(model_dir),
        device=suite.device,  # lighteval's default is cuda
        batch_size=suite.batch_size,  # None would probe for the largest batch that fits
        max_length=max_length,
        cache_dir=str(output_dir / "lighteval" / "cache"),  # the (disabled) prediction cache stays here
        override_chat_template=False,  # base models: plain-text prompts even if a template ships
    )
    # `from_model` is annotated `AutoModelForCausalLM` (a factory); it wraps any loaded `PreTrainedModel`
    scorer = lighteval_model.TokenBatchedModel.from_model(model, config)  # type: ignore[arg-type]
    assert isinstance(scorer, lighteval_model.TokenBatchedModel)  # typed as returning its base class
    scorer.progress = progress
    tracker = EvaluationTracker(output_dir=str(output_dir / "lighteval"), save_details=suite.save_details)
    pipeline = lighteval_tasks.CustomTasksPipeline(
        tasks=",".join(f"{task.name}|{task.num_fewshot}" for task in suite.tasks),
        pipeline_parameters=PipelineParameters(
            launcher_type=ParallelismManager.NONE,
            # annotated `str | None`, but its Registry takes a module too (create_custom_tasks_module)
            custom_tasks_directory=lighteval_tasks.tasks_module(configs),  # type: ignore[arg-type]
        ),
        evaluation_tracker=tracker,
        model=scorer,
        limits=limits,
    )
    pipeline.model._cache = None  # `cached` methods call the model directly when the cache is None
    pipeline.evaluate()
    pipeline.save_and_push_results()
    num_items = {name: len(task_items) for name, task_items in items.items()}
    for name, builtin in builtins.items():
        shots = builtin.task.num_fewshot
        num_items[name] = sum(len(pipeline.documents_dict[f"{c.name}|{shots}"]) for c in builtin.configs)
    aggregated = {name: dict(values) for name, values in tracker.metrics_logger.metric_aggregated.items()}
    return aggregated, num_items


def _split_metrics(
    suite: EvalSuite, aggregated: dict[str, dict[str, float]], builtins: dict[str, BuiltinTask]
) -> tuple[dict[str, float], dict[str, float]]:
    """lighteval's `{"<task>|0": {"acc": .., "acc_stderr": ..}}` -> `<task>/<metric>` dicts; a
    built-in group (`mmlu`) reads lighteval's mean over its members, `<task>:_average|<shots>`."""
    metrics, stderr = {}, {}
    for task in suite.tasks:
        key = builtins[task.name].result_key if task.is_builtin else f"{task.name}|0"
        for name, value in sorted(aggregated[key].items()):
            if name.endswith("_stderr"):
                stderr[f"{task.name}/{metric_key(name.removesuffix('_stderr'))}"] = float(value)
            else:
                metrics[f"{task.name}/{metric_key(name)}"] = float(value)
    return metrics, stderr


@contextlib.contextmanager
def _offline_env() -> Iterator[None]:
    """HF libraries offline while evaluating (everything is local); the environment is restored.
    A library first imported inside keeps offline mode: they read it once, at import."""
    saved = {key: os.environ.get(key) for key in OFFLINE_ENV}
    os.environ.update(OFFLINE_ENV)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _preserved_global_state() -> Iterator[None]:
    """Importing lighteval's transformers model runs `torch.set_grad_enabled(False)` (for the
    importing thread), and `Pipeline` reseeds python's and numpy's global RNGs: restore both,
    so a training loop in the same thread is unaffected by an evaluation."""
    import numpy as np
    import torch

    grad, py_rng, np_rng, torch_rng = (
        torch.is_grad_enabled(),
        random.getstate(),
        np.random.get_state(),
        torch.get_rng_state(),
    )
    try:
        yield
    finally:
        torch.set_grad_enabled(grad)
        random.setstate(py_rng)
        np.random.set_state(np_rng)
        torch.set_rng_state(torch_rng)
