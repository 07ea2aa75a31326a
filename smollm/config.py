"""Config schemas: the typed form of the composed Hydra config (`conf/`).

Every dataclass validates itself in `__post_init__` and raises `ValueError("<field>: ...")`;
`schema.from_dict` prefixes the dotted path, so a bad value fails before any compute with one
line such as `train.optimizer.lr: must be > 0, got -1.0`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from smollm.evaluation.suite import EvalSuite
from smollm.schema import ConfigError, check, from_dict


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """A `LlamaForCausalLM` shape."""

    name: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    max_seq_len: int
    """`max_position_embeddings`: the longest sequence the model is trained on."""
    rope_theta: float = 10000.0
    tie_embeddings: bool = True
    rms_norm_eps: float = 1e-5
    init_std: float = 0.02

    def __post_init__(self) -> None:
        for name in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size"):
            check(getattr(self, name) > 0, name, "must be > 0", getattr(self, name))
        check(self.vocab_size > 0, "vocab_size", "must be > 0", self.vocab_size)
        check(self.max_seq_len > 0, "max_seq_len", "must be > 0", self.max_seq_len)
        check(
            self.hidden_size % self.num_heads == 0,
            "num_heads",
            f"must divide hidden_size={self.hidden_size}",
            self.num_heads,
        )
        check(
            self.num_heads % self.num_kv_heads == 0,
            "num_kv_heads",
            f"must divide num_heads={self.num_heads}",
            self.num_kv_heads,
        )
        check(self.rope_theta > 0, "rope_theta", "must be > 0", self.rope_theta)


@dataclass(frozen=True, kw_only=True)
class TokenizerConfig:
    """Either a BPE trained offline on the sources, or a pretrained one (hub id or local dir)."""

    name: str
    kind: Literal["train_bpe", "pretrained"]
    vocab_size: int
    path: str | None = None
    """Hub id or local directory, for `kind: pretrained`."""
    train_bytes_per_source: int = 2_000_000
    """How much text of each source the BPE trainer reads."""
    eos_token: str = "<|endoftext|>"

    def __post_init__(self) -> None:
        check(self.vocab_size >= 256, "vocab_size", "must be >= 256", self.vocab_size)
        if self.kind == "pretrained":
            check(bool(self.path), "path", "is required for kind 'pretrained'", self.path)
        check(
            self.train_bytes_per_source > 0,
            "train_bytes_per_source",
            "must be > 0",
            self.train_bytes_per_source,
        )


@dataclass(frozen=True, kw_only=True)
class SourceConfig:
    """A data source: where its documents come from and the constraints on its use."""

    name: str
    loader: Literal["builtin", "hf"]
    """`builtin`: a generator that exists on any Python machine; `hf`: a `datasets` dataset."""
    builtin: Literal["stdlib_prose", "stdlib_code", "synthetic_math", "noisy_web"] | None = None
    path: str | None = None
    """For `hf`: a hub id, a local folder laid out like the hub repo (or a `save_to_disk`
    folder), or a packaged builder (parquet, json). Only this differs between hub and stand-in."""
    subset: str | tuple[str, ...] | None = None
    """The dataset's config name (e.g. `finemath-4plus`). A list reads each config in turn,
    interleaving their documents round-robin (e.g. the 15 language configs of Stack-Edu)."""
    data_dir: str | tuple[str, ...] | None = None
    """A folder inside the dataset (e.g. a language of `bigcode/starcoderdata`); a list reads
    each folder, interleaved like `subset`; None: the whole dataset."""
    data_files: str | None = None
    revision: str | None = None
    """For a hub dataset: the branch, tag or commit to read (part of the source's identity; the
    commit it named is recorded in the build's manifest). Ignored for local data."""
    split: str = "train"
    text_field: str = "text"
    """The column holding the document (ignored when `content_url` fetches it)."""
    text_join: str | None = None
    """The text column holds a list of segments (e.g. InfiMM-WebMath's `text_list`, None where
    an image sits): join its strings with this separator."""
    content_url: str | None = None
    """For datasets that carry ids, not text (Stack-Edu, Python-Edu: `blob_id`): a URL template
    filled from the row's columns, e.g. `https://softwareheritage.s3.amazonaws.com/content/{blob_id}`;
    the document is fetched with urllib (http, https or file), a missing object skipped."""
    content_compression: Literal["none", "gzip"] = "none"
    """How the fetched objects are compressed (Software Heritage's blobs: gzip)."""
    streaming: bool = True
    category: str = "knowledge"
    """The evaluation category this source mainly serves (knowledge, reasoning, math, code)."""
    domain: Literal["web", "code", "math", "other"] = "other"
    """The recipe's mixture grouping (SmolLM2 reports stage shares as web/code/math/other)."""
    num_docs: int | None = None
    """Cap on documents read (None: all)."""
    min_chars: int = 1
    heldout_docs: int = 200
    """Documents held out for evaluation, never trained on."""
    seed: int = 0
    available_tokens: int | None = None
    """Declared token count (hub sources); measured after the build for local ones."""
    max_epochs: float = 4.0
    min_weight: float = 0.0
    max_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.loader == "builtin":
            check(self.builtin is not None, "builtin", "is required for loader 'builtin'", None)
        else:
            check(bool(self.path), "path", "is required for loader 'hf'", self.path)
        for name in ("subset", "data_dir"):
            value = getattr(self, name)
            if isinstance(value, tuple | list):
                check(len(value) > 0, name, "must name at least one entry", list(value))
                check(all(isinstance(v, str) and v for v in value), name, "entries must be names", list(value))
        check(
            not (isinstance(self.subset, tuple | list) and isinstance(self.data_dir, tuple | list)),
            "data_dir",
            "may not be a list when subset is one",
            self.data_dir,
        )
        if self.content_url is not None:
            self.content_fields()
            check(
                self.text_join is None, "text_join", "does not apply when content_url fetches the text", self.text_join
            )
        else:
            check(
                self.content_compression == "none",
                "content_compression",
                "needs a content_url",
                self.content_compression,
            )
        if self.num_docs is not None:
            check(self.num_docs > 0, "num_docs", "must be > 0", self.num_docs)
        check(self.heldout_docs >= 0, "heldout_docs", "must be >= 0", self.heldout_docs)
        check(self.max_epochs > 0, "max_epochs", "must be > 0", self.max_epochs)
        check(0 <= self.min_weight <= 1, "min_weight", "must be in [0, 1]", self.min_weight)
        check(
            self.min_weight <= self.max_weight <= 1,
            "max_weight",
            f"must be in [min_weight={self.min_weight}, 1]",
            self.max_weight,
        )

    def content_fields(self) -> list[str]:
        """The row columns `content_url` names; a malformed template is a one-line error."""
        import string
        from urllib.parse import urlsplit

        url = self.content_url or ""
        try:
            parsed = list(string.Formatter().parse(url))
        except ValueError as err:
            raise ValueError(f"content_url: {err}, got {url!r}") from None
        fields = [(name, spec, conversion) for _, name, spec, conversion in parsed if name is not None]
        check(
            urlsplit(url).scheme in ("http", "https", "file"),
            "content_url",
            "must be an http, https or file URL",
            url,
        )
        check(len(fields) > 0, "content_url", "must name a column in braces, e.g. {blob_id}", url)
        for name, spec, conversion in fields:
            check(
                name.isidentifier() and not spec and conversion is None,
                "content_url",
                "braces must hold a plain column name, e.g. {blob_id}",
                url,
            )
        return [name for name, _, _ in fields]


@dataclass(frozen=True, kw_only=True)
class TokenizeExecutorConfig:
    """Where a source's tokenize step runs. Every kind writes the same bytes, so the executor is
    not part of a built source's identity: switching it reuses what is already built."""

    kind: Literal["inline", "datatrove_local", "datatrove_slurm"] = "inline"
    """`inline`: one process, in the step; `datatrove_local`: datatrove's LocalPipelineExecutor
    (processes on this machine); `datatrove_slurm`: its SlurmPipelineExecutor (a job array; the
    workdir must be on a filesystem the nodes share)."""
    tasks: int = 2
    """datatrove tasks a source is split into (batches of documents dealt round-robin)."""
    workers: int = 2
    """Tasks running at once (local processes, or the Slurm array's concurrency limit)."""
    logging_dir: str | None = None
    """Where datatrove writes logs, stats and completion markers (a fresh subfolder per build);
    None: inside the build's scratch folder, removed with it."""
    partition: str | None = None
    """Slurm partition (required for `datatrove_slurm`)."""
    time: str = "04:00:00"
    """Slurm time limit per task (`[D-]HH:MM:SS`)."""
    cpus_per_task: int = 1
    mem_per_cpu_gb: int = 2
    env_command: str | None = None
    """Shell command that activates the environment in each Slurm job; None: this interpreter's
    virtual environment (`<sys.prefix>/bin/activate`)."""

    def __post_init__(self) -> None:
        for name in ("tasks", "workers", "cpus_per_task", "mem_per_cpu_gb"):
            check(getattr(self, name) >= 1, name, "must be >= 1", getattr(self, name))
        check(
            bool(re.fullmatch(r"(\d+-)?\d{1,2}:\d{2}:\d{2}", self.time)),
            "time",
            "must look like [D-]HH:MM:SS",
            self.time,
        )
        if self.kind == "datatrove_slurm":
            check(bool(self.partition), "partition", "is required for kind 'datatrove_slurm'", self.partition)


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Every source a pipeline may draw from; each is tokenized once per tokenizer."""

    sources: dict[str, SourceConfig]
    shard_tokens: int = 1 << 24
    """Tokens per shard file."""
    verify: Literal["checksum", "size"] = "checksum"
    """How a built source is checked before it is reused: every shard's sha256 against the
    manifest (reads all the data), or only its size; a shard that fails is rebuilt."""
    executor: TokenizeExecutorConfig = field(default_factory=TokenizeExecutorConfig)
    """How the tokenize step runs (not part of a built source's identity)."""

    def __post_init__(self) -> None:
        check(len(self.sources) > 0, "sources", "must declare at least one source", self.sources)
        for key, source in self.sources.items():
            check(key == source.name, f"sources.{key}.name", f"must equal its key {key!r}", source.name)
        check(self.shard_tokens > 0, "shard_tokens", "must be > 0", self.shard_tokens)


@dataclass(frozen=True, kw_only=True)
class MixtureConfig:
    """Sampling weights per source for one stage; they sum to 1."""

    name: str
    weights: dict[str, float]

    def __post_init__(self) -> None:
        check(len(self.weights) > 0, "weights", "must name at least one source", self.weights)
        for source, weight in self.weights.items():
            check(0 <= weight <= 1, f"weights.{source}", "must be in [0, 1]", weight)
        total = sum(self.weights.values())
        check(math.isclose(total, 1.0, abs_tol=1e-6), "weights", "must sum to 1", round(total, 6))


@dataclass(frozen=True, kw_only=True)
class OptimizerConfig:
    """AdamW, as in SmolLM2: betas (0.9, 0.95), weight decay 0.01, clip 1.0."""

    lr: float
    """Peak learning rate (the WSD plateau)."""
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.01
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        check(self.lr > 0, "lr", "must be > 0", self.lr)
        check(all(0 <= b < 1 for b in self.betas), "betas", "must be in [0, 1)", list(self.betas))
        check(self.weight_decay >= 0, "weight_decay", "must be >= 0", self.weight_decay)
        check(self.grad_clip > 0, "grad_clip", "must be > 0", self.grad_clip)


@dataclass(frozen=True, kw_only=True)
class ScheduleConfig:
    """Warmup-stable-decay. The decay lives in the stages (`StageConfig.decay_fraction`)."""

    warmup_steps: int
    min_lr: float = 0.0

    def __post_init__(self) -> None:
        check(self.warmup_steps >= 0, "warmup_steps", "must be >= 0", self.warmup_steps)
        check(self.min_lr >= 0, "min_lr", "must be >= 0", self.min_lr)


@dataclass(frozen=True, kw_only=True)
class SpikeConfig:
    """The loss-spike guard (as in OLMo-core and levanter). A step whose loss or gradient norm is
    non-finite, or whose z-score over the last `window` accepted steps exceeds `threshold`, is
    skipped (its update never reaches the weights); `rewind_after` skips in a row rewind to the
    last checkpoint and skip the data window that caused them (at most `max_rewinds` times)."""

    enabled: bool = True
    window: int = 128
    threshold: float = 6.0
    min_history: int = 16
    """Accepted steps seen before z-scores are trusted."""
    rewind_after: int = 3
    max_rewinds: int = 3

    def __post_init__(self) -> None:
        check(self.window >= 2, "window", "must be >= 2", self.window)
        check(self.threshold > 0, "threshold", "must be > 0", self.threshold)
        check(
            2 <= self.min_history <= self.window,
            "min_history",
            f"must be in [2, window={self.window}]",
            self.min_history,
        )
        check(self.rewind_after >= 1, "rewind_after", "must be >= 1", self.rewind_after)
        check(self.max_rewinds >= 0, "max_rewinds", "must be >= 0", self.max_rewinds)


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Batch shape, optimisation and bookkeeping for every stage of a pipeline."""

    seed: int = 0
    seq_len: int
    micro_batch_size: int
    grad_accum_steps: int = 1
    data_parallel: int = 1
    """Data-parallel replicas a step is defined over (SmolLM2-1.7B: 256). With fewer processes
    the remaining replicas run as gradient accumulation, so a step means the same everywhere."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """`bf16`: autocast matmuls to bfloat16 (SmolLM2); weights and optimizer stay fp32."""
    optimizer: OptimizerConfig
    schedule: ScheduleConfig
    checkpoint_every_steps: int = 0
    """Intermediate checkpoints for resume (0: only the final one)."""
    log_every_steps: int = 10
    spikes: SpikeConfig = field(default_factory=SpikeConfig)
    num_threads: int = 0
    """torch intra-op threads (0: torch's default)."""
    progress: bool = True
    """Progress bars on the console: one per training run and one per evaluation."""
    processes: int = 1
    """Training processes on this node: > 1 launches the stage's training under `torchrun`
    (torch.distributed; gloo on CPU, NCCL on GPUs). They share the step's micro-batches, so the
    result is the same training (up to float reduction order) and the same cached step."""
    parallelism: Literal["ddp", "fsdp"] = "ddp"
    """How processes share the model: `ddp` replicates it; `fsdp` shards parameters, gradients
    and optimizer state (FSDP2 `fully_shard`, per decoder layer) for the shapes that need it."""
    compile: bool = False
    """`torch.compile` the model (GPU throughput; same result up to kernel rounding)."""

    def __post_init__(self) -> None:
        check(self.seq_len > 0, "seq_len", "must be > 0", self.seq_len)
        check(self.processes > 0, "processes", "must be > 0", self.processes)
        check(
            self.micro_batches_per_step % self.processes == 0,
            "processes",
            f"must divide the micro-batches per step (grad_accum_steps x data_parallel = {self.micro_batches_per_step})",
            self.processes,
        )
        check(self.micro_batch_size > 0, "micro_batch_size", "must be > 0", self.micro_batch_size)
        check(self.grad_accum_steps > 0, "grad_accum_steps", "must be > 0", self.grad_accum_steps)
        check(self.data_parallel > 0, "data_parallel", "must be > 0", self.data_parallel)
        check(self.log_every_steps > 0, "log_every_steps", "must be > 0", self.log_every_steps)
        check(
            self.checkpoint_every_steps >= 0,
            "checkpoint_every_steps",
            "must be >= 0",
            self.checkpoint_every_steps,
        )

    @property
    def tokens_per_step(self) -> int:
        return self.seq_len * self.micro_batch_size * self.grad_accum_steps * self.data_parallel

    @property
    def micro_batches_per_step(self) -> int:
        """Micro-batches per optimizer step, over all processes (each runs `1 / processes` of them)."""
        return self.grad_accum_steps * self.data_parallel


@dataclass(frozen=True, kw_only=True)
class StageSweepConfig:
    """Annealing runs or data ablations a stage declares; they run after its training, before its
    rebalance, and their results (scores, deltas vs the control) are inputs of the rebalance."""

    candidates: list[str]
    """Annealing: candidate sources; ablation: candidate mixtures."""
    shares: list[float] = field(default_factory=lambda: [0.6])
    """Annealing: the candidate's share of the annealing mixture (the rest: the stage's mixture)."""
    seeds: list[int] = field(default_factory=list)
    """`train.seed` per member; empty: the config's seed."""
    train_tokens: int | None = None
    """Each member's budget; None: `anneal.train_tokens` / `ablate.train_tokens`."""

    def __post_init__(self) -> None:
        check(len(self.candidates) > 0, "candidates", "must name at least one candidate", self.candidates)
        check(len(set(self.candidates)) == len(self.candidates), "candidates", "must be unique", self.candidates)
        for share in self.shares:
            check(0 < share <= 1, "shares", "must be in (0, 1]", share)
        if self.train_tokens is not None:
            check(self.train_tokens > 0, "train_tokens", "must be > 0", self.train_tokens)


@dataclass(frozen=True, kw_only=True)
class StageConfig:
    """One stage: a token budget, its mixture, where it starts and how much of it decays the LR."""

    name: str
    train_tokens: int
    mixture: str | None = None
    """A mixture config name; None: the mixture the previous stage's rebalance wrote."""
    decay_fraction: float = 0.0
    """Fraction of this stage's steps over which the LR decays linearly to `min_lr`."""
    init_from: str | None = None
    """An earlier stage whose checkpoint this one starts from; None: the previous stage (the
    first stage starts from scratch). Naming a stage that is not the previous one branches."""
    init_at_tokens: int | None = None
    """Take `init_from`'s checkpoint this many tokens into that stage instead of at its end
    (e.g. context extension from stage 4 before its last 75B tokens)."""
    overrides: list[str] = field(default_factory=list)
    """Hydra overrides composed into this stage's config only (e.g. `model.rope_theta=130000`)."""
    anneal: StageSweepConfig | None = None
    """Annealing runs from this stage's checkpoint, one per candidate source and share."""
    ablate: StageSweepConfig | None = None
    """Data ablations (from scratch) on candidate mixtures."""

    def __post_init__(self) -> None:
        check(self.train_tokens > 0, "train_tokens", "must be > 0", self.train_tokens)
        check(0 <= self.decay_fraction <= 1, "decay_fraction", "must be in [0, 1]", self.decay_fraction)
        if self.init_at_tokens is not None:
            check(self.init_at_tokens > 0, "init_at_tokens", "must be > 0", self.init_at_tokens)
        for index, override in enumerate(self.overrides):
            key = override.split("=", 1)[0].lstrip("+~")
            check("=" in override, f"overrides[{index}]", "must look like key=value", override)
            check(
                not key.startswith(("pipeline", "mixture", "workdir", "tracking")),
                f"overrides[{index}]",
                "may not change the pipeline, mixture, workdir or tracking",
                override,
            )


@dataclass(frozen=True, kw_only=True)
class PipelineConfig:
    """Ordered stages; each stage trains from the previous stage's (or `init_from`'s) checkpoint."""

    name: str
    stages: list[StageConfig]

    def __post_init__(self) -> None:
        check(len(self.stages) > 0, "stages", "must list at least one stage", self.stages)
        check(self.stages[0].mixture is not None, "stages[0].mixture", "must name a mixture", None)
        names = [s.name for s in self.stages]
        check(len(set(names)) == len(names), "stages", "names must be unique", names)
        for index, stage in enumerate(self.stages):
            if stage.init_from is not None:
                check(
                    stage.init_from in names[:index],
                    f"stages[{index}].init_from",
                    f"must name an earlier stage {names[:index]}",
                    stage.init_from,
                )
            check(
                index > 0 or stage.init_at_tokens is None,
                f"stages[{index}].init_at_tokens",
                "needs a stage to start from",
                stage.init_at_tokens,
            )
            parent = self.parent(index)
            if stage.init_at_tokens is not None and parent is not None:
                check(
                    stage.init_at_tokens < self.stages[parent].train_tokens,
                    f"stages[{index}].init_at_tokens",
                    f"must be < {self.stages[parent].name}.train_tokens={self.stages[parent].train_tokens}",
                    stage.init_at_tokens,
                )

    def parent(self, index: int) -> int | None:
        """Index of the stage whose checkpoint stage `index` starts from (None: from scratch)."""
        stage = self.stages[index]
        if stage.init_from is not None:
            return [s.name for s in self.stages].index(stage.init_from)
        return index - 1 if index > 0 else None

    def stage(self, name: str) -> StageConfig:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise ConfigError(f"stage: {name!r} is not one of {[s.name for s in self.stages]}")


@dataclass(frozen=True, kw_only=True)
class TrackingConfig:
    """MLflow: a tracking URI (None: SQLite in the work dir) and the experiment name."""

    uri: str | None = None
    experiment: str = "smollm"
    enabled: bool = True
    heartbeat_seconds: float = 60.0
    """How often, at most, a process refreshes the heartbeat tag of its open runs (on its writes)."""
    stale_after_seconds: float = 21600.0
    """A RUNNING run of another host with no heartbeat (of it or a run nested under it) for this
    long is marked KILLED at the next start: longer than a flow may go without writing to MLflow."""

    def __post_init__(self) -> None:
        check(self.heartbeat_seconds > 0, "heartbeat_seconds", "must be > 0", self.heartbeat_seconds)
        check(
            self.stale_after_seconds > self.heartbeat_seconds,
            "stale_after_seconds",
            f"must be longer than heartbeat_seconds ({self.heartbeat_seconds})",
            self.stale_after_seconds,
        )


@dataclass(frozen=True, kw_only=True)
class RuleConfig:
    """When `metric` (or, with `change: true`, its change since the previous stage) is below or
    above a threshold, move sources by `by`: raise/lower them, introduce absent ones at `by`, or
    retire them (towards 0; max_change bounds each step)."""

    name: str
    metric: str
    """An MLflow metric of the stage run without the `eval/` prefix, e.g. `category/math`, or a
    sweep result, e.g. `sweep/anneal-synthetic_math-0.6/delta/math`."""
    below: float | None = None
    above: float | None = None
    change: bool = False
    """Compare the change of `metric` since the previous stage (this stage - previous)."""
    raise_sources: list[str] = field(default_factory=list)
    lower_sources: list[str] = field(default_factory=list)
    introduce_sources: list[str] = field(default_factory=list)
    retire_sources: list[str] = field(default_factory=list)
    by: float = 0.05
    """Absolute weight change, shared equally among the raised (lowered, introduced) sources."""
    phase: Literal["any", "stable", "decay"] = "any"
    """The next stage's LR phase the rule is for: `decay` fires only before a stage that decays the
    LR (the anneal: SmolLM2 upsampled math and code there), `stable` only before one that holds it."""
    if_missing: Literal["error", "skip"] = "error"
    """When `metric` was not logged: `error`, or `skip` the rule (for a metric the suite may not
    compute, e.g. `category/code`: lighteval 0.13 ships no HumanEval); the reason says so."""

    @property
    def sources(self) -> list[str]:
        return [*self.raise_sources, *self.lower_sources, *self.introduce_sources, *self.retire_sources]

    def __post_init__(self) -> None:
        check(
            (self.below is None) != (self.above is None),
            "below",
            "exactly one of below/above must be set",
            (self.below, self.above),
        )
        check(bool(self.sources), "raise_sources", "a rule must raise, lower, introduce or retire some source", [])
        check(0 < self.by <= 1, "by", "must be in (0, 1]", self.by)
        twice = sorted({s for s in self.sources if self.sources.count(s) > 1})
        check(not twice, "raise_sources", "a source is moved twice by one rule", twice)


@dataclass(frozen=True, kw_only=True)
class AnnealGainConfig:
    """`anneal_gain`: weight to the annealing candidates in proportion to their gain over the
    control (the priority-weighted mean of the category deltas)."""

    step: float = 0.2
    """The total weight moved towards (or away from) the candidates per stage."""
    min_gain: float = 0.0
    """Gains at or below this (in score units) never move the mixture."""

    def __post_init__(self) -> None:
        check(0 < self.step <= 1, "step", "must be in (0, 1]", self.step)
        check(self.min_gain >= 0, "min_gain", "must be >= 0", self.min_gain)


@dataclass(frozen=True, kw_only=True)
class AnnealSlopeConfig:
    """`anneal_slope`: move along the objective's slope towards each annealing candidate,
    centred on the mixture's own (`smollm.rebalance.anneal_slope`)."""

    step: float = 0.2
    """The move of the source with the largest centred slope; the others' in proportion."""
    signal: Literal["bpb", "accuracy"] = "bpb"
    """The objective the slopes are of: held-out bits per byte per category (lower is better,
    low-noise) or category accuracy."""

    def __post_init__(self) -> None:
        check(0 < self.step <= 1, "step", "must be in (0, 1]", self.step)


@dataclass(frozen=True, kw_only=True)
class RegressionConfig:
    """`regression`: fit score ~ b0 + sum_j b_j log(w_j + epsilon) over the data-ablation runs
    (RegMix / data-mixing-law style) and maximise it on the constrained simplex, minus
    `kl_penalty` * KL(next || current)."""

    model: Literal["log_linear", "linear"] = "log_linear"
    epsilon: float = 0.01
    ridge: float = 1e-4
    """L2 penalty on the coefficients (a handful of runs, several sources)."""
    kl_penalty: float = 0.01
    min_runs: int = 3
    """Fewer distinct ablation mixtures than this: keep the mixture (and say so)."""

    def __post_init__(self) -> None:
        check(self.epsilon > 0, "epsilon", "must be > 0", self.epsilon)
        check(self.ridge >= 0, "ridge", "must be >= 0", self.ridge)
        check(self.kl_penalty >= 0, "kl_penalty", "must be >= 0", self.kl_penalty)
        check(self.min_runs >= 2, "min_runs", "must be >= 2", self.min_runs)


@dataclass(frozen=True, kw_only=True)
class ApprovalConfig:
    """Pause the pipeline after each rebalance and ask in the Prefect UI to approve or edit the
    proposed mixture. Without a server (no `PREFECT_API_URL`) nobody can answer: `on_timeout`
    applies at once."""

    ask: bool = False
    timeout_seconds: int = 3600
    on_timeout: Literal["proceed", "stop"] = "proceed"
    """What happens when nobody answers: train on the proposal, or stop the pipeline."""

    def __post_init__(self) -> None:
        check(self.timeout_seconds > 0, "timeout_seconds", "must be > 0", self.timeout_seconds)


@dataclass(frozen=True, kw_only=True)
class RebalanceConfig:
    """The policy that writes the next stage's mixture from this stage's evaluations (and the
    sweeps it ran), within the sources' constraints."""

    policy: Literal["keep", "rules", "anneal_gain", "anneal_slope", "regression"] = "rules"
    rules: list[RuleConfig] = field(default_factory=list)
    max_change: float = 0.2
    """The largest change of any one weight between two stages."""
    priorities: dict[str, float] = field(default_factory=dict)
    """Category weights of the score `anneal_gain`, `anneal_slope` and `regression` maximise
    (empty: all 1)."""
    noise_sigmas: float = 1.0
    """With seed repeats, a gain smaller than this many standard deviations of its spread over
    seeds is noise: it does not move the mixture."""
    anneal_gain: AnnealGainConfig = field(default_factory=AnnealGainConfig)
    anneal_slope: AnnealSlopeConfig = field(default_factory=AnnealSlopeConfig)
    regression: RegressionConfig = field(default_factory=RegressionConfig)
    approval: ApprovalConfig = field(default_factory=ApprovalConfig)
    accept_eval_drift: bool = False
    """Let a rule compare a metric across stages whose evaluations differ (the suite fingerprint
    of a task it reads changed: prompt, metric, few-shot, dataset, lighteval); the proposal
    records what was accepted. Off: such a rebalance is refused, naming the task."""

    @property
    def member_eval_kinds(self) -> tuple[str, ...]:
        """The eval task kinds the policy reads of annealing members (empty: the whole suite):
        `anneal_slope` on bits per byte reads the `bpb` tasks only."""
        if self.policy == "anneal_slope" and self.anneal_slope.signal == "bpb":
            return ("bpb",)
        return ()

    def __post_init__(self) -> None:
        check(0 < self.max_change <= 1, "max_change", "must be in (0, 1]", self.max_change)
        for category, weight in self.priorities.items():
            check(weight >= 0, f"priorities.{category}", "must be >= 0", weight)
        if self.priorities:
            check(sum(self.priorities.values()) > 0, "priorities", "must not all be 0", self.priorities)
        check(self.noise_sigmas >= 0, "noise_sigmas", "must be >= 0", self.noise_sigmas)
        names = [rule.name for rule in self.rules]
        twice = sorted({n for n in names if names.count(n) > 1})
        check(not twice, "rules", "rule names must be unique", twice)


@dataclass(frozen=True, kw_only=True)
class PlanConfig:
    """What `smollm plan` estimates cost with: the accelerator, its peak and the expected MFU."""

    gpu: str = "H100-SXM"
    peak_flops: float = 989e12
    """Dense bf16 peak FLOP/s of one accelerator."""
    mfu: float = 0.4
    """Model FLOPs utilisation the estimate assumes."""
    warn_epochs: float = 4.0
    """Warn when a source is repeated more than this; each source's `max_epochs` is the hard cap."""

    def __post_init__(self) -> None:
        check(self.peak_flops > 0, "peak_flops", "must be > 0", self.peak_flops)
        check(0 < self.mfu <= 1, "mfu", "must be in (0, 1]", self.mfu)
        check(self.warn_epochs > 0, "warn_epochs", "must be > 0", self.warn_epochs)


@dataclass(frozen=True, kw_only=True)
class AnnealConfig:
    """One annealing run: from a stage's checkpoint, decay the LR linearly to 0 over `train_tokens`
    on `share` of the candidate source(s) + `1 - share` of the base stage's mixture.
    `candidate: null` is the control (the base stage's mixture only)."""

    base: str | None = None
    """The pipeline stage whose checkpoint every member starts from (model + optimizer state)."""
    base_at_tokens: int | None = None
    """A point inside `base` (its prefix, e.g. the last stable checkpoint); None: its end."""
    candidate: str | list[str] | None = None
    share: float = 0.6
    train_tokens: int = 1

    def __post_init__(self) -> None:
        check(0 < self.share <= 1, "share", "must be in (0, 1]", self.share)
        check(self.train_tokens > 0, "train_tokens", "must be > 0", self.train_tokens)
        if self.base_at_tokens is not None:
            check(self.base_at_tokens > 0, "base_at_tokens", "must be > 0", self.base_at_tokens)
        if isinstance(self.candidate, list):
            check(len(self.candidate) > 0, "candidate", "must name at least one source", self.candidate)

    @property
    def candidates(self) -> list[str]:
        if self.candidate is None:
            return []
        return [self.candidate] if isinstance(self.candidate, str) else list(self.candidate)


@dataclass(frozen=True, kw_only=True)
class AblateConfig:
    """One data ablation: train from scratch on the `candidate` mixture for `train_tokens`.
    `candidate: null` is the control, trained on the `control` mixture."""

    candidate: str | None = None
    control: str | None = None
    """The baseline mixture every ablation sweep adds (None: no control, no deltas)."""
    train_tokens: int = 1
    decay_fraction: float = 0.2

    def __post_init__(self) -> None:
        check(self.train_tokens > 0, "train_tokens", "must be > 0", self.train_tokens)
        check(0 <= self.decay_fraction <= 1, "decay_fraction", "must be in [0, 1]", self.decay_fraction)


@dataclass(frozen=True, kw_only=True)
class SweepConfig:
    """How a sweep's members run locally: at most `max_concurrency` at once, each in its own process."""

    max_concurrency: int = 2
    threads_per_member: int = 0
    """torch threads per member (0: the machine's cores / the members running at once)."""
    launcher: Literal["local", "hydra", "work_pool"] = "local"
    """`local`: Prefect's process pool here; `hydra`: the Hydra launcher the overrides select
    (`hydra/launcher=submitit_slurm`); `work_pool`: a run of the `deployment` per member."""
    deployment: str | None = None
    """For `work_pool`: the member flow's deployment, `smollm-sweep-member/<name>`."""

    def __post_init__(self) -> None:
        check(self.max_concurrency > 0, "max_concurrency", "must be > 0", self.max_concurrency)
        if self.launcher == "work_pool":
            check(bool(self.deployment), "deployment", "is required for launcher 'work_pool'", self.deployment)
        check(self.threads_per_member >= 0, "threads_per_member", "must be >= 0", self.threads_per_member)


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """The whole composed config of one pipeline (or one stage of it)."""

    workdir: str
    pipeline: PipelineConfig
    model: ModelConfig
    tokenizer: TokenizerConfig
    data: DataConfig
    mixture: MixtureConfig
    train: TrainConfig
    eval: dict[str, Any]
    """The evaluation suite; typed by `EvalSuite` (`eval_suite`, checked by `load_run_config`)."""
    tracking: TrackingConfig
    rebalance: RebalanceConfig
    plan: PlanConfig = field(default_factory=PlanConfig)
    anneal: AnnealConfig = field(default_factory=AnnealConfig)
    ablate: AblateConfig = field(default_factory=AblateConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)

    def __post_init__(self) -> None:
        check(
            self.model.vocab_size == self.tokenizer.vocab_size,
            "model.vocab_size",
            f"must equal tokenizer.vocab_size={self.tokenizer.vocab_size}",
            self.model.vocab_size,
        )
        check(
            self.train.seq_len <= self.model.max_seq_len,
            "train.seq_len",
            f"must be <= model.max_seq_len={self.model.max_seq_len}",
            self.train.seq_len,
        )
        for source in self.mixture.weights:
            check(
                source in self.data.sources,
                f"mixture.weights.{source}",
                f"is not a declared source {sorted(self.data.sources)}",
                source,
            )
        for stage in self.pipeline.stages:
            check(
                stage.train_tokens >= self.train.tokens_per_step,
                f"pipeline.stages.{stage.name}.train_tokens",
                f"must be >= tokens per step {self.train.tokens_per_step}",
                stage.train_tokens,
            )
        first = self.pipeline.stages[0]  # the warmup runs from step 0, in the first stage
        check(
            self.train.schedule.warmup_steps < first.train_tokens // self.train.tokens_per_step,
            "train.schedule.warmup_steps",
            f"must be shorter than the first stage ({first.name}: "
            f"{first.train_tokens // self.train.tokens_per_step} steps)",
            self.train.schedule.warmup_steps,
        )
        declared = sorted(self.data.sources)
        for source in self.anneal.candidates:
            check(source in self.data.sources, "anneal.candidate", f"is not a declared source {declared}", source)
        for stage in self.pipeline.stages:
            for source in stage.anneal.candidates if stage.anneal else ():
                check(
                    source in self.data.sources,
                    f"pipeline.stages.{stage.name}.anneal.candidates",
                    f"is not a declared source {declared}",
                    source,
                )
        for rule in self.rebalance.rules:
            for source in rule.sources:
                check(
                    source in self.data.sources,
                    f"rebalance.rules.{rule.name}",
                    f"names an undeclared source (declared: {sorted(self.data.sources)})",
                    source,
                )

    @property
    def eval_suite(self) -> EvalSuite:
        try:
            return EvalSuite.from_dict(self.eval)
        except ValueError as err:
            raise ConfigError(f"eval.{err}") from None


def load_run_config(data: dict[str, Any]) -> RunConfig:
    """Validate a plain dict (e.g. `OmegaConf.to_container(cfg, resolve=True)`)."""
    config = from_dict(RunConfig, data)
    config.eval_suite  # noqa: B018 - validates the eval suite before any compute
    return config
