"""The suite's tasks as lighteval data: prompt functions, metrics, task configs, and a pipeline
that loads only these tasks (custom ones, and the built-in ones `lighteval_builtin` adapted).

Imports lighteval at module level; `lighteval_backend` imports this module lazily so that
`import smollm.evaluation` stays cheap.

Why not lighteval's defaults (0.13):
- `Registry` imports every built-in task module before it reads custom tasks, and
  `tasks/tiny_benchmarks.py` downloads a file at import, which fails offline (and costs
  seconds online). `CustomTasksRegistry` reads the custom `TASKS_TABLE` module only.
- `load_dataset(<local folder>)` infers split names from file names (`dev.jsonl` becomes
  `validation`), so a task whose dataset is a local folder (custom items, built-in stand-ins)
  is read by `load_local`, which keeps every file's stem as its split name.
- `TransformersModel.loglikelihood_rolling` (the PERPLEXITY path behind `Metrics.bits_per_byte`)
  crashes on `choices=None`, crashes on batches of unequal lengths, scores each token with the
  logits of its own position (off by one), and its results are then dropped by the prediction
  cache (which only recognises LOGPROBS/GENERATIVE responses). bits per byte is therefore
  computed on the LOGPROBS path: lighteval's own `PerplexityPreparator("bytes")` and
  `CorpusLevelPerplexityMetric("bits_per_byte")`, fed with continuation log-likelihoods.
- The stderr of a corpus metric (bits per byte) is bootstrapped in a fresh `multiprocessing`
  pool of `cpu_count()` workers per metric, forked from a process that holds torch and the
  model: ~0.08 s per metric for 1000 draws that take ~8 ms in-process (~6% of the offline
  suite on 2 CPU threads). Importing this module makes lighteval draw them in-process
  (`SerialBootstrap`): the same seeded draws in the same order, so the same stderr.
"""

from __future__ import annotations

import collections
import random
import types
from pathlib import Path
from typing import Any

from datasets import DatasetDict, load_dataset, load_from_disk
from lighteval.metrics.dynamic_metrics import LogLikelihoodAccMetric
from lighteval.metrics.metrics_corpus import CorpusLevelPerplexityMetric
from lighteval.metrics.normalizations import LogProbCharNorm
from lighteval.metrics.sample_preparator import PerplexityPreparator
from lighteval.metrics.utils import stderr as lighteval_stderr
from lighteval.metrics.utils.metric_utils import CorpusLevelMetric
from lighteval.pipeline import Pipeline
from lighteval.tasks.lighteval_task import LightevalTask, LightevalTaskConfig
from lighteval.tasks.registry import Registry
from lighteval.tasks.requests import Doc, SamplingMethod

from smollm.evaluation.suite import EvalTask

SPLIT = "test"


def mcq_doc(line: dict, task_name: str) -> Doc:
    """A jsonl item -> a multiple-choice Doc (the prompt function of every MCQ task)."""
    return Doc(task_name=task_name, query=line["query"], choices=line["choices"], gold_index=line["gold"])


def bpb_doc(line: dict, task_name: str) -> Doc:
    """A jsonl item -> a Doc whose one choice is the scored text; `original_query` is what
    `PerplexityPreparator` counts bytes of, so it is set to that same text."""
    scored = line["choices"][0]
    return Doc(task_name=task_name, query=line["query"], original_query=scored, choices=[scored], gold_index=0)


def mcq_metrics() -> list:
    """Accuracy and character-length-normalised accuracy (`acc_norm`, OLMES' CF metric)."""
    return [LogLikelihoodAccMetric(), LogLikelihoodAccMetric(normalization=LogProbCharNorm())]


def bpb_metrics() -> list:
    """lighteval's bits_per_byte (sum of -log p over bytes, / ln 2) on the LOGPROBS path."""
    return [
        CorpusLevelMetric(
            metric_name="bits_per_byte",
            sample_level_fn=PerplexityPreparator(units_type="bytes"),
            category=SamplingMethod.LOGPROBS,
            corpus_level_fn=CorpusLevelPerplexityMetric("bits_per_byte"),
            higher_is_better=False,
        )
    ]


def task_config(task: EvalTask, data_dir: Path) -> LightevalTaskConfig:
    """A task reading `data_dir/test.jsonl` (a local folder is a dataset to `load_dataset`)."""
    return LightevalTaskConfig(
        name=task.name,
        prompt_function=mcq_doc if task.is_mcq else bpb_doc,
        hf_repo=str(data_dir),
        hf_subset="default",
        hf_avail_splits=[SPLIT],
        evaluation_splits=[SPLIT],
        few_shots_split=SPLIT,  # zero-shot; naming a split silences the "fewshot from eval" warning
        metrics=mcq_metrics() if task.is_mcq else bpb_metrics(),
    )


def tasks_module(configs: list[LightevalTaskConfig]) -> types.ModuleType:
    """A custom-tasks module as lighteval expects it: a `TASKS_TABLE` of configs."""
    module = types.ModuleType("smollm_eval_tasks")
    setattr(module, "TASKS_TABLE", configs)  # noqa: B010 - a plain module, mypy cannot see the attribute
    return module


class CustomTasksRegistry(Registry):
    """`Registry` restricted to one custom-tasks module (no built-in task is imported)."""

    def __init__(self, tasks: str, custom_tasks: Any, load_multilingual: bool = False):
        self.tasks_list = self._get_full_task_list_from_input_string(tasks)
        self._load_multilingual = load_multilingual
        self._custom_tasks = custom_tasks
        self._task_registry = Registry._extract_configs(Registry.create_custom_tasks_module(custom_tasks))
        self.task_to_configs = self._update_task_configs()


class SerialBootstrap(lighteval_stderr._bootstrap_internal):
    """lighteval's bootstrap draws (`number_draws` resamples of the population from
    `random.Random(seed)`, the metric recomputed on each), without its process pool."""

    def __call__(self, cur_experiment: tuple[list, int]) -> list:
        population, seed = cur_experiment
        metric = self.metric
        assert metric is not None, "bootstrap_stderr always passes its metric"
        rnd = random.Random(seed)
        samples = [rnd.choices(population, k=len(population)) for _ in range(self.number_draws)]
        return [metric(sample) for sample in samples]


# `bootstrap_stderr` looks the class up at call time
lighteval_stderr._bootstrap_internal = SerialBootstrap  # type: ignore[misc]

DATA_SUFFIXES = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def load_local(path: Path, subset: str) -> DatasetDict:
    """A local dataset: `path/<subset>/` if that folder exists, else `path`; either a
    `save_to_disk` folder or one `<split>.<jsonl|json|parquet|csv>` file per split."""
    folder = path / subset if (path / subset).is_dir() else path
    if (folder / "dataset_dict.json").is_file():
        return load_from_disk(str(folder))
    files = {f.name.split(".")[0]: f for f in sorted(folder.iterdir()) if f.suffix in DATA_SUFFIXES}
    builders = {DATA_SUFFIXES[f.suffix] for f in files.values()}
    if len(builders) != 1:
        raise ValueError(
            f"{folder}: want one {sorted(DATA_SUFFIXES)} file per split, all of one format, found {sorted(files)}"
        )
    return load_dataset(builders.pop(), data_files={split: str(f) for split, f in files.items()})


def task_dataset(task: LightevalTask) -> DatasetDict:
    """The task's dataset: `load_local` for a local folder, else lighteval's hub loader."""
    if not Path(task.dataset_path).is_dir():
        return LightevalTask.download_dataset_worker(task)
    dataset = load_local(Path(task.dataset_path), task.dataset_config_name)
    return dataset.filter(task.dataset_filter) if task.dataset_filter is not None else dataset


class CustomTasksPipeline(Pipeline):
    """`Pipeline` whose tasks come from `pipeline_parameters.custom_tasks_directory` (a module)
    through `CustomTasksRegistry`, each with its own item limit (`limits`, by config name) and
    local datasets read by `load_local`; the rest is lighteval's `_init_tasks_and_requests`."""

    def __init__(self, *args: Any, limits: dict[str, int] | None = None, **kwargs: Any):
        self.limits = limits or {}  # read by _init_tasks_and_requests, which Pipeline.__init__ calls
        super().__init__(*args, **kwargs)

    def _init_tasks_and_requests(self, tasks: str) -> None:
        self.registry = CustomTasksRegistry(tasks, self.pipeline_parameters.custom_tasks_directory)
        self.tasks_dict: dict[str, LightevalTask] = self.registry.load_tasks()
        for task in self.tasks_dict.values():
            task.dataset = task_dataset(task)
        self.documents_dict = {
            task.full_name: task.get_docs(self.limits.get(task.name, self.pipeline_parameters.max_samples))
            for task in self.tasks_dict.values()
        }
        self.sampling_docs = collections.defaultdict(list)
        for docs in self.documents_dict.values():
            for doc in docs:
                for sampling in doc.sampling_methods:
                    self.sampling_docs[sampling].append(doc)
        self.evaluation_tracker.task_config_logger.log(self.tasks_dict)
