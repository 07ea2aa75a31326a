"""The sweep flow: annealing runs or data ablations, run side by side and compared with a control.

    smollm anneal -m anneal.candidate=synthetic_math,stdlib_code anneal.share=0.3,0.6
    smollm ablate -m ablate.candidate=demo_code_heavy,demo_math_heavy train.seed=0,1

From the Prefect UI, `sweep_flow`'s typed parameters (candidates, shares, seeds, base) describe
the same members; the CLI's multirun is parsed by Hydra's own sweeper into the same canonical
member overrides (`smollm.sweep`), so both launch the same step identities.

A sweep: resolve the base checkpoint (an annealing sweep trains the pipeline up to its `base`
stage, or reuses it), build the data every member needs once, then run the members that are
not complete yet in their own processes, at most `sweep.max_concurrency` at once (Prefect's
process pool). One MLflow run per sweep, a child run per member; the summary (member x category
score, delta vs control, tokens per source) goes to a Prefect table artifact, the MLflow run and
`<workdir>/sweeps/<sweep id>/` with a PNG of the deltas.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run
from prefect.task_runners import ProcessPoolTaskRunner

from flows.compose import CONF_DIR, compose, compose_stage, declared_sweep_params, generated_dir
from flows.stage import artifact_key, build_data, resolve_start, start_point
from smollm.config import MixtureConfig, RunConfig, StageConfig
from smollm.runs import start_config_run
from smollm.schema import ConfigError
from smollm.stage import eval_step, needed_sources, train_step, workdir
from smollm.steps import StepResult, atomic_write_text, is_complete
from smollm.sweep import (
    KINDS,
    Member,
    anneal_weights,
    format_table,
    make_member,
    member_records,
    plot_deltas,
    summary_rows,
    sweep_id,
    typed_member_overrides,
    with_controls,
)
from smollm.tracking import make_tracker
from tasks.sweep import run_member
from tasks.train import train_stage

# Settings that make one member differ from another: never part of the sweep's common overrides.
MEMBER_KEYS = ("anneal.candidate", "anneal.share", "ablate.candidate", "train.seed")


@dataclass(frozen=True)
class MemberSpec:
    """A member's config, its stage (budget, schedule) and its steps' identities."""

    member: Member
    cfg: RunConfig
    stage: StageConfig
    train_identity: str = ""
    eval_identity: str = ""
    complete: bool = False


def split_multirun(overrides: list[str], *, multirun: bool, kind: str) -> tuple[list[str], list[list[str]]]:
    """Hydra's sweep syntax -> (common overrides, one override list per member).

    Parsed by Hydra's override parser and expanded by its `BasicSweeper` (the cartesian product
    of every swept key, with the config's `hydra.sweeper.params` for keys not given here). The
    member settings (`MEMBER_KEYS`) are member axes even when they take a single value.
    """
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(overrides)
    except Exception as err:  # Hydra's OverrideParseException
        raise ConfigError(f"overrides: {str(err).splitlines()[0]}") from None
    swept = [o for o in parsed if o.is_sweep_override()]
    if swept and not multirun:
        raise ConfigError(f"{swept[0].input_line}: sweeps several values; add -m (--multirun)")
    common = [o.input_line for o in parsed if not o.is_sweep_override() and o.key_or_group not in MEMBER_KEYS]
    axes = [o for o in parsed if o.is_sweep_override() or o.key_or_group in MEMBER_KEYS]
    if multirun:
        given = {o.key_or_group for o in axes}
        declared = declared_sweep_params(common)
        extra = [f"{key}={value}" for key, value in declared.items() if key not in given]
        axes += parser.parse_overrides(extra)
    if not axes:
        return common, [[]]
    batches = BasicSweeper.split_arguments(axes, max_batch_size=None)
    members = [list(job) for batch in batches for job in batch]
    if kind == "anneal" and any(key.startswith("mixture") for job in members for key in job):
        raise ConfigError("mixture: an annealing sweep builds each member's mixture; sweep anneal.candidate instead")
    return common, members


def _base_index(cfg: RunConfig) -> int:
    if cfg.anneal.base is None:
        raise ConfigError("anneal.base: is null; name the stage whose checkpoint the annealing runs start from")
    names = [s.name for s in cfg.pipeline.stages]
    if cfg.anneal.base not in names:
        raise ConfigError(
            f"anneal.base: must name a stage of pipeline {cfg.pipeline.name} {names}, got {cfg.anneal.base!r}"
        )
    return names.index(cfg.anneal.base)


def base_mixture(common: list[str], cfg: RunConfig) -> str:
    """The mixture the base stage trains on: declared, or written by the previous rebalance."""
    from flows.plan import make_plan

    index = _base_index(cfg)
    stage = make_plan(common).stages[index]
    if stage.mixture_note.startswith("estimate"):
        previous = cfg.pipeline.stages[index - 1].name
        raise ConfigError(
            f"anneal.base: {stage.name} trains on the mixture the rebalance after {previous} writes, which has "
            f"not run yet; run the pipeline through {previous} first (smollm run ...)"
        )
    return stage.mixture


def member_spec(common: list[str], member: Member, base: dict[str, Any] | None) -> MemberSpec:
    """Compose one member. Annealing: the base stage's config (its own overrides included) on
    `share` candidate + `1 - share` base mixture, decaying to 0 over `anneal.train_tokens`.
    Ablation: the candidate (or control) mixture from scratch over `ablate.train_tokens`."""
    overrides = [*common, *member.overrides]
    member = resolved(member, compose(overrides))
    if member.kind == "anneal":
        top = compose(overrides)
        index = base["stage_index"] if base else _base_index(top)
        cfg = compose_stage(overrides, index, base["mixture"] if base else base_mixture(common, top))
        weights = anneal_weights(cfg.mixture.weights, cfg.anneal.candidates, cfg.anneal.share)
        train = replace(cfg.train, schedule=replace(cfg.train.schedule, min_lr=0.0))
        stage = StageConfig(name=member.name, train_tokens=cfg.anneal.train_tokens, decay_fraction=1.0)
        field = "anneal.train_tokens"
    else:
        top = compose(overrides)
        mixture = top.ablate.candidate or top.ablate.control
        if mixture is None:
            raise ConfigError("ablate.control: is null, so a member needs ablate.candidate (a mixture name)")
        folders = (CONF_DIR / "mixture", generated_dir(top.workdir) / "mixture")
        if not any((folder / f"{mixture}.yaml").is_file() for folder in folders):
            which = "ablate.candidate" if top.ablate.candidate else "ablate.control"
            raise ConfigError(f"{which}: no mixture config named {mixture!r} (conf/mixture/ or generated)")
        cfg = compose([*overrides, f"mixture={mixture}"])
        weights, train = dict(cfg.mixture.weights), cfg.train
        stage = StageConfig(
            name=member.name, train_tokens=cfg.ablate.train_tokens, decay_fraction=cfg.ablate.decay_fraction
        )
        field = "ablate.train_tokens"
    if stage.train_tokens < train.tokens_per_step:
        raise ConfigError(f"{field}: must be >= tokens per step {train.tokens_per_step}, got {stage.train_tokens}")
    mixture_cfg = MixtureConfig(name=member.name, weights=weights)
    cfg = replace(cfg, mixture=mixture_cfg, train=train)
    return MemberSpec(member, cfg, replace(stage, mixture=mixture_cfg.name))


def resolved(member: Member, cfg: RunConfig) -> Member:
    """The member with its share and seed spelled out as the config resolves them, so that
    `anneal.candidate=x` and `anneal.candidate=x anneal.share=0.6` (the default) are one member,
    with one name and one output folder."""
    values = member.values
    extra = [] if "train.seed" in values else [f"train.seed={cfg.train.seed}"]
    if member.kind == "anneal" and not member.is_control and "anneal.share" not in values:
        extra.append(f"anneal.share={cfg.anneal.share}")
    return make_member(member.kind, [*member.overrides, *extra]) if extra else member


def member_specs(
    kind: str, common: list[str], members: list[list[str]], base: dict[str, Any] | None = None
) -> list[MemberSpec]:
    """Every member (controls added) composed and validated: a bad candidate, share or budget
    fails here, with its field and value, before anything is built or trained."""
    cfg = compose(common)
    if kind == "anneal" and base is None:  # the base stage and its mixture, planned once
        base = {"stage_index": _base_index(cfg), "mixture": base_mixture(common, cfg)}
    control = kind == "anneal" or cfg.ablate.control is not None
    specs = [member_spec(common, m, base) for m in with_controls(kind, members, control=control)]
    return list({spec.member: spec for spec in specs}.values())  # one per resolved member


def train_lineage(common: list[str], cfg: RunConfig, run_id: str) -> tuple[dict[str, Any], list[str]]:
    """Train (or reuse) the pipeline up to `anneal.base` (or its prefix at `anneal.base_at_tokens`);
    returns the base as a stage-flow-like dict and the data steps this built."""
    from flows.plan import make_plan

    index = _base_index(cfg)
    top, plan, results, built = compose(common), make_plan(common), [], []
    for i in range(index + 1):
        stage = top.pipeline.stages[i]
        mixture = plan.stages[i].mixture  # declared, or written by the rebalance before it
        if plan.stages[i].mixture_note.startswith("estimate"):
            previous = top.pipeline.stages[i - 1].name
            raise ConfigError(
                f"anneal.base: {cfg.anneal.base} needs {stage.name}, which trains on the mixture the rebalance "
                f"after {previous} writes; run the pipeline through {previous} first (smollm run ...)"
            )
        stage_cfg = compose_stage(common, i, mixture)
        tokenizer, sources = build_data(stage_cfg)
        built += [n for n, r in {"tokenizer": tokenizer, **sources}.items() if r.computed]
        parent = top.pipeline.parent(i)
        init = resolve_start(
            common, None if parent is None else start_point(results[parent], stage.init_at_tokens), run_id
        )
        init_dict = None if init is None else {"checkpoint": str(init.output), "identity": init.identity}
        at = cfg.anneal.base_at_tokens if i == index else None
        outcome = train_stage(stage_cfg, i, sources, tokenizer, init, run_id, stop_at_tokens=at)
        results.append(
            {
                "stage_index": i,
                "mixture": mixture,
                "checkpoint": str(outcome.step.output),
                "identity": outcome.step.identity,
                "init": init_dict,
            }
        )
    return results[index], built


def _identities(spec: MemberSpec, sources: dict[str, StepResult], tokenizer: StepResult, base: StepResult | None):
    root = workdir(spec.cfg)
    step = train_step(spec.cfg, spec.stage, sources, tokenizer, base)
    trained = StepResult(step.output_dir(root), step.identity, False)
    member_sources = {n: sources[n] for n in needed_sources(spec.cfg)}
    evaluation = eval_step(spec.cfg, trained, member_sources)
    complete = is_complete(trained.output) and is_complete(evaluation.output_dir(root))
    return replace(spec, train_identity=step.identity, eval_identity=evaluation.identity, complete=complete)


def _threads(cfg: RunConfig, workers: int) -> int:
    return cfg.sweep.threads_per_member or max(1, (os.cpu_count() or 1) // max(1, workers))


def member_job(
    kind: str, overrides: list[str], member: list[str], base_checkpoint: dict[str, Any] | None, run_id: str
) -> dict[str, Any]:
    """One member from plain, JSON-able arguments: what a remote launcher (a Hydra launcher's
    job, a work pool's flow run) executes. Same composition, so the same identities; the data
    and base checkpoint are the sweep's (a shared work dir), found complete."""
    from smollm import stage as steps
    from smollm.runs import tracked_member

    spec = member_spec(overrides, make_member(kind, member), base_checkpoint)
    tokenizer = steps.build_tokenizer(spec.cfg)
    sources = {n: steps.build_source(spec.cfg, n, tokenizer) for n in needed_sources(spec.cfg)}
    base = (
        None
        if base_checkpoint is None
        else StepResult(Path(base_checkpoint["checkpoint"]), base_checkpoint["identity"], False)
    )
    tracker = make_tracker(spec.cfg.tracking, Path(spec.cfg.workdir))
    return tracked_member(spec.cfg, spec.stage, sources, tokenizer, base, tracker, run_id=run_id, flow_run_id=None)


@flow(name="smollm-sweep-member", log_prints=True)
def member_flow(
    kind: str, overrides: list[str], member: list[str], base_checkpoint: dict[str, Any] | None, run_id: str
) -> dict[str, Any]:
    """One sweep member, deployable on a work pool (`sweep.launcher=work_pool`)."""
    return member_job(kind, overrides, member, base_checkpoint, run_id)


def platform_start_method() -> None:
    """Initialiser of the pool's processes. Prefect starts them with `spawn`, which they inherit
    as their own default; restore the platform's (fork on Linux) so that pools inside a member
    (lighteval's stderr bootstrap) fork instead of re-importing everything (~30 s per evaluation)."""
    import multiprocessing

    multiprocessing.set_start_method(None, force=True)


def run_members(
    specs: list[MemberSpec], kwargs: dict[str, dict[str, Any]], cfg: RunConfig, jobs: dict[str, dict[str, Any]]
) -> dict[str, dict]:
    """Complete members are re-recorded here; the rest run in a process pool of at most
    `sweep.max_concurrency`, or go to the configured remote launcher (`jobs`: their plain form)."""
    limit = cfg.sweep.max_concurrency
    pending = [s for s in specs if not s.complete]
    if cfg.sweep.launcher != "local" and pending:
        from flows.launchers import launch_members

        remote = launch_members(cfg.sweep, {s.member.name: jobs[s.member.name] for s in pending})
        done = [s for s in specs if s.complete]
        return {
            **{s.member.name: run_member(**kwargs[s.member.name], threads=s.cfg.train.num_threads) for s in done},
            **remote,
        }
    workers = min(limit, len(pending))
    results = {}
    for spec in specs:
        if spec.complete or workers <= 1:
            threads = spec.cfg.train.num_threads if workers <= 1 else _threads(spec.cfg, workers)
            results[spec.member.name] = run_member(**kwargs[spec.member.name], threads=threads)
    if workers > 1:
        with ProcessPoolTaskRunner(max_workers=workers, initializer=platform_start_method) as runner:
            futures = {
                s.member.name: runner.submit(
                    run_member, {**kwargs[s.member.name], "threads": _threads(s.cfg, workers), "progress": False}
                )
                for s in pending
            }
            results.update({name: future.result() for name, future in futures.items()})
    return results


def publish(kind: str, folder: Path, rows: list[dict[str, Any]], tracker, run_id: str, title: str) -> Path | None:
    """The summary as JSON + Markdown + PNG (atomic), on the MLflow run, as Prefect artifacts."""
    import json

    table = format_table(rows)
    atomic_write_text(folder / "summary.json", json.dumps(rows, indent=2))
    atomic_write_text(folder / "summary.md", f"# {title}\n\n{table}\n")
    tmp = plot_deltas(rows, folder / ".deltas.png.tmp.png", title)
    chart = None
    if tmp is not None:
        chart = folder / "deltas.png"
        os.replace(tmp, chart)
        tracker.log_artifact(run_id, chart, "sweep")
    tracker.log_dict(run_id, rows, "sweep/summary.json")
    tracker.log_artifact(run_id, folder / "summary.md", "sweep")
    for row in rows:
        tracker.log_metrics(
            run_id, {f"{row['member']}/{k}": v for k, v in row.items() if k.startswith(("score/", "delta/"))}, step=0
        )
    key = artifact_key("sweep", folder.name)
    create_table_artifact(key=key, table=rows, description=f"{title}: score and delta vs control per category")
    chart_line = f"\n\nChart of the deltas: `{chart}`" if chart else ""
    create_markdown_artifact(key=f"{key}-summary", markdown=f"### {title}\n\n{table}{chart_line}")
    return chart


@flow(name="smollm-sweep", log_prints=True)
def sweep_flow(
    kind: Literal["anneal", "ablate"] = "anneal",
    candidates: list[str] | None = None,
    shares: list[float] | None = None,
    seeds: list[int] | None = None,
    base: str | None = None,
    base_at_tokens: int | None = None,
    train_tokens: int | None = None,
    max_concurrency: int | None = None,
    overrides: list[str] | None = None,
    members: list[list[str]] | None = None,
    base_checkpoint: dict[str, Any] | None = None,
    parent_run_id: str | None = None,
) -> dict[str, Any]:
    """Run a sweep of annealing runs (`kind=anneal`: candidate sources x shares, from the `base`
    stage's checkpoint) or data ablations (`kind=ablate`: candidate mixtures x seeds, from scratch),
    each with a control added; skip members already complete.

    `members` (Hydra override lists, one per member; the CLI's multirun fills it) replaces the
    typed candidates/shares/seeds. `base_checkpoint` (a stage flow's result) and `parent_run_id`
    are set when a stage flow runs the sweeps its stage declares.
    """
    if kind not in KINDS:
        raise ConfigError(f"kind: must be one of {list(KINDS)}, got {kind!r}")
    from flows.launchers import with_launcher

    common = [o for o in (overrides or []) if o.split("=", 1)[0].lstrip("+") not in MEMBER_KEYS]
    for key, value in (
        ("anneal.base", base),
        ("anneal.base_at_tokens", base_at_tokens),
        (f"{kind}.train_tokens", train_tokens),
        ("sweep.max_concurrency", max_concurrency),
    ):
        if value is not None:
            common.append(f"{key}={value}")
    common = with_launcher(common)  # `hydra/launcher=submitit_slurm` hands the members to that launcher
    if members is None:
        if not candidates:
            raise ConfigError("candidates: a sweep needs at least one candidate")
        members = typed_member_overrides(kind, candidates, shares or [], seeds or [])
    cfg = compose(common)
    specs = member_specs(kind, common, members, base_checkpoint)
    started = time.perf_counter()
    tracker = make_tracker(cfg.tracking, Path(cfg.workdir))
    title = f"{kind} sweep of {cfg.pipeline.name}" + (f" from {cfg.anneal.base}" if kind == "anneal" else "")
    run_id = start_config_run(
        tracker, cfg, f"sweep/{kind}", "sweep", parent_run_id=parent_run_id, flow_run_id=flow_run.id
    )
    try:
        built: list[str] = []
        base_result = None
        if kind == "anneal":
            if base_checkpoint is None:
                base_checkpoint, built = train_lineage(common, cfg, run_id)
            base_result = StepResult(Path(base_checkpoint["checkpoint"]), base_checkpoint["identity"], False)
        data_cfg = replace(specs[0].cfg, mixture=_union_mixture(specs))
        tokenizer, sources = build_data(data_cfg)  # once, for every member
        built += [n for n, r in {"tokenizer": tokenizer, **sources}.items() if r.computed]
        specs = [_identities(s, sources, tokenizer, base_result) for s in specs]
        sid = sweep_id(kind, [s.train_identity + s.eval_identity for s in specs])
        tracker.set_tags(run_id, {"smollm.sweep_id": sid, "smollm.sweep_kind": kind})
        print(f"{title}: {len(specs)} members, {sum(not s.complete for s in specs)} to run")
        kwargs, jobs = {}, {}
        for spec in specs:
            member_run = start_config_run(
                tracker, spec.cfg, f"{kind}/{spec.member.name}", kind, parent_run_id=run_id, flow_run_id=flow_run.id
            )
            tracker.set_tags(member_run, {"smollm.member_overrides": " ".join(spec.member.overrides)})
            kwargs[spec.member.name] = {
                "cfg": spec.cfg,
                "stage": spec.stage,
                "sources": {n: sources[n] for n in needed_sources(spec.cfg)},
                "tokenizer": tokenizer,
                "base": base_result,
                "run_id": member_run,
            }
            jobs[spec.member.name] = {
                "kind": kind,
                "overrides": common,
                "member": list(spec.member.overrides),
                "base_checkpoint": base_checkpoint,
                "run_id": member_run,
            }
        members_started = time.perf_counter()
        results = run_members(specs, kwargs, cfg, jobs)
        members_seconds = time.perf_counter() - members_started
        metrics = {s.member.name: tracker.latest_metrics(results[s.member.name]["run_id"]) for s in specs}
        tokens = {name: r["stage_tokens_per_source"] for name, r in results.items()}
        rows = summary_rows([s.member for s in specs], metrics, tokens)
        records = member_records(
            [s.member for s in specs],
            metrics,
            {s.member.name: s.cfg.mixture.weights for s in specs},
            {s.member.name: {"share": s.cfg.anneal.share, "seed": s.cfg.train.seed} for s in specs},
        )
        tracker.log_dict(run_id, records, "sweep/runs.json")
        folder = workdir(cfg) / "sweeps" / sid
        chart = publish(kind, folder, rows, tracker, run_id, title)
    except BaseException:
        tracker.end_run(run_id, "FAILED")
        raise
    tracker.end_run(run_id)
    return {
        "kind": kind,
        "sweep_id": sid,
        "sweep_run_id": run_id,
        "tracking_uri": getattr(tracker, "uri", None),
        "base": base_checkpoint,
        "members": [
            {
                "name": s.member.name,
                "overrides": list(s.member.overrides),
                "candidate": s.member.candidate,
                "identity": s.train_identity,
                "eval_identity": s.eval_identity,
                **results[s.member.name],
            }
            for s in specs
        ],
        "rows": rows,
        "runs": records,
        "data_built": built,
        "trained": [s.member.name for s in specs if results[s.member.name]["trained"]],
        "folder": str(folder),
        "chart": str(chart) if chart else None,
        "seconds": time.perf_counter() - started,
        "members_seconds": members_seconds,
    }


def _union_mixture(specs: list[MemberSpec]) -> MixtureConfig:
    """A mixture over every member's sources: what the one data build has to cover."""
    names = sorted({n for s in specs for n, w in s.cfg.mixture.weights.items() if w > 0})
    return MixtureConfig(name="sweep-data", weights={n: 1 / len(names) for n in names})


def declared_members(stage: StageConfig, kind: str) -> list[list[str]]:
    """The members a stage declares (`stage.anneal` / `stage.ablate`), as member overrides."""
    sweep = getattr(stage, kind)
    return typed_member_overrides(kind, sweep.candidates, sweep.shares if kind == "anneal" else [], sweep.seeds)
