"""The sweep flow: annealing runs or data ablations, run side by side and compared with a control.

    smollm anneal -m anneal.candidate=synthetic_math,stdlib_code anneal.share=0.3,0.6
    smollm ablate -m ablate.candidate=demo_code_heavy,demo_math_heavy train.seed=0,1

From the Prefect UI, `sweep_flow`'s typed parameters (candidates, shares, seeds, base) describe
the same members; the CLI's multirun is parsed by Hydra's own sweeper
(`flows.compose.split_multirun`) into the same canonical member overrides (`smollm.sweep`), so
both launch the same step identities.

A sweep: compose every member once (a bad one fails before anything runs), train the lineage up
to the annealing base (or reuse it), build the data every member needs once, hand one
`MemberJob` per member to the launcher (`flows/launchers.py`), summarise. One MLflow run per
sweep, a child run per member; the summary (member x category score, delta vs control, tokens
per source) goes to a Prefect table artifact, the MLflow run and `<workdir>/sweeps/<sweep id>/`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from prefect import flow
from prefect.runtime import flow_run

from flows.compose import CONF_DIR, compose, compose_lineage, generated_dir
from flows.launchers import launch_members, with_launcher
from flows.workers import prewarm, warm_workers
from smollm.config import MixtureConfig, RunConfig, StageConfig
from smollm.lineage import Lineage
from smollm.results import Checkpoint, MemberJob, MemberResult, StartPoint, SweepResult, TrainedStage
from smollm.runs import run_member_job, start_config_run, tracked_run
from smollm.schema import ConfigError
from smollm.stage import eval_step, needed_sources, training_step, workdir
from smollm.steps import StepResult, is_complete
from smollm.sweep import (
    KINDS,
    MEMBER_KEYS,
    Member,
    anneal_weights,
    make_member,
    member_records,
    summary_rows,
    sweep_id,
    typed_member_overrides,
    with_controls,
)
from smollm.tracking import Tracker, make_tracker
from tasks.common import run_logger
from tasks.data import build_data, computed, sources_of
from tasks.sweep import summary_task
from tasks.train import start_checkpoint, train_task


@dataclass(frozen=True)
class MemberSpec:
    """A member's config, its stage (budget, schedule) and, once the data exists, its steps' identities."""

    member: Member
    cfg: RunConfig
    stage: StageConfig
    train_identity: str = ""
    eval_identity: str = ""
    complete: bool = False


@flow(name="smollm-sweep")
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
    start: StartPoint | None = None,
    parent_run_id: str | None = None,
) -> SweepResult:
    """Run a sweep of annealing runs (`kind=anneal`: candidate sources x shares, from the `base`
    stage's checkpoint) or data ablations (`kind=ablate`: candidate mixtures x seeds, from
    scratch), each with a control added; skip members already complete.

    `members` (Hydra override lists, one per member; the CLI's multirun fills it) replaces the
    typed candidates/shares/seeds. `start` (the base checkpoint) and `parent_run_id` are set
    when a stage flow runs the sweeps its stage declares.
    """
    typed = {"anneal.base": base, "anneal.base_at_tokens": base_at_tokens, f"{kind}.train_tokens": train_tokens}
    common = sweep_overrides(kind, overrides or [], {**typed, "sweep.max_concurrency": max_concurrency})
    if members is None:
        if not candidates:
            raise ConfigError("candidates: a sweep needs at least one candidate")
        members = typed_member_overrides(kind, candidates, shares or [], seeds or [])
    lineage = compose_lineage(common)
    specs = member_specs(kind, common, members, start, lineage)
    with warm_workers():  # the run's warm workers (this sweep's own when it runs on its own)
        return run_sweep(kind, common, lineage, specs, start, parent_run_id)


def run_sweep(
    kind: str,
    common: list[str],
    lineage: Lineage,
    specs: list[MemberSpec],
    start: StartPoint | None,
    parent_run_id: str | None,
) -> SweepResult:
    """The sweep's steps, in its MLflow run: the base, the data, the members, the summary."""
    started, cfg = time.perf_counter(), lineage.top
    tracker = make_tracker(cfg.tracking, Path(cfg.workdir))
    title = f"{kind} sweep of {cfg.pipeline.name}" + (f" from {cfg.anneal.base}" if kind == "anneal" else "")
    name = f"sweep/{kind}"
    with tracked_run(tracker, cfg, name, "sweep", parent_run_id=parent_run_id, flow_run_id=flow_run.id) as run_id:
        built: list[str] = []
        if kind == "anneal" and start is None:
            if base_pending(lineage):
                prewarm(cfg, len(specs), beside_training=True)
            start, built = train_base(lineage, tracker, run_id)
        base_step = None if start is None else start.checkpoint.step()
        data = build_data(replace(specs[0].cfg, mixture=_union_mixture(specs)))  # once, for every member
        specs = [with_identities(s, data, base_step) for s in specs]
        prewarm(cfg, sum(not s.complete for s in specs))
        sid = sweep_id(kind, [s.train_identity + s.eval_identity for s in specs])
        tracker.set_tags(run_id, {"smollm.sweep_id": sid, "smollm.sweep_kind": kind})
        run_logger().info(f"{title}: {len(specs)} members, {sum(not s.complete for s in specs)} to run")
        jobs = member_jobs(kind, specs, data, start, tracker, run_id)
        members_started = time.perf_counter()
        results = launch_members(cfg.sweep, jobs, common, {s.member.name for s in specs if not s.complete})
        members_seconds = time.perf_counter() - members_started
        rows, records = summarise(specs, results)
        folder = workdir(cfg) / "sweeps" / sid
        chart = summary_task(folder, rows, records, tracker, run_id, title)
    return SweepResult(
        kind=kind,
        sweep_id=sid,
        sweep_run_id=run_id,
        tracking_uri=getattr(tracker, "uri", None),
        base=None if start is None else start.checkpoint,
        members=[results[s.member.name] for s in specs],
        rows=rows,
        runs=records,
        data_built=built + computed(data),
        trained=[s.member.name for s in specs if results[s.member.name].trained],
        folder=str(folder),
        chart=None if chart is None else str(chart),
        seconds=time.perf_counter() - started,
        members_seconds=members_seconds,
    )


@flow(name="smollm-sweep-member")
def member_flow(job: dict[str, Any]) -> dict[str, Any]:
    """One sweep member (a `MemberJob`'s JSON form), deployable on a work pool (`sweep.launcher=work_pool`)."""
    return run_member_job(job, flow_run_id=str(flow_run.id))


def sweep_overrides(kind: str, overrides: list[str], typed: dict[str, Any]) -> list[str]:
    """The sweep's common overrides: the user's (member settings removed), its typed values, and
    `sweep.launcher=hydra` when they pick a Hydra launcher."""
    if kind not in KINDS:
        raise ConfigError(f"kind: must be one of {list(KINDS)}, got {kind!r}")
    common = [o for o in overrides if o.split("=", 1)[0].lstrip("+") not in MEMBER_KEYS]
    common += [f"{key}={value}" for key, value in typed.items() if value is not None]
    return with_launcher(common)


def base_index(cfg: RunConfig) -> int:
    if cfg.anneal.base is None:
        raise ConfigError("anneal.base: is null; name the stage whose checkpoint the annealing runs start from")
    names = [s.name for s in cfg.pipeline.stages]
    if cfg.anneal.base not in names:
        raise ConfigError(
            f"anneal.base: must name a stage of pipeline {cfg.pipeline.name} {names}, got {cfg.anneal.base!r}"
        )
    return names.index(cfg.anneal.base)


def base_point(lineage: Lineage) -> tuple[int, str]:
    """The annealing base's stage and mixture; refused while a rebalance it needs has not run."""
    index = base_index(lineage.top)
    lineage.require_mixtures(index, "anneal.base")
    return index, lineage.nodes[index].mixture.name


def base_pending(lineage: Lineage) -> bool:
    """Whether the annealing base (the end of its stage) has yet to be trained."""
    index, _ = base_point(lineage)
    node = lineage.nodes[index]
    return lineage.top.anneal.base_at_tokens is None and not is_complete(node.steps.train.output_dir(workdir(node.cfg)))


def train_base(lineage: Lineage, tracker: Tracker, run_id: str) -> tuple[StartPoint, list[str]]:
    """Train (or reuse) the lineage up to `anneal.base` (or its prefix at `anneal.base_at_tokens`);
    the base, and the data steps this built."""
    index, mixture = base_point(lineage)
    done: list[TrainedStage] = []
    built: list[str] = []
    for node in lineage.nodes[: index + 1]:
        data = build_data(node.cfg)
        built += computed(data)
        parent = node.start.parent
        origin, trained = (None, None) if parent is None else (lineage.nodes[parent], done[parent])
        init = start_checkpoint(node, origin, trained, tracker, run_id)
        at = lineage.top.anneal.base_at_tokens if node.index == index else None
        step = train_task(node, data, init, tracker, run_id, stop_at_tokens=at).step
        done.append(
            TrainedStage(
                stage=node.name,
                stage_index=node.index,
                mixture=node.mixture.name,
                init=None if init is None else Checkpoint.of(init),
                checkpoint=str(step.output),
                identity=step.identity,
            )
        )
    return StartPoint(stage_index=index, mixture=mixture, checkpoint=Checkpoint.of(step)), built


def member_specs(
    kind: str,
    common: list[str],
    members: list[list[str]],
    start: StartPoint | None = None,
    lineage: Lineage | None = None,
) -> list[MemberSpec]:
    """Every member (controls added) composed once and validated: a bad candidate, share or
    budget fails here, with its field and value, before anything is built or trained."""
    lineage = lineage or compose_lineage(common)
    top = lineage.top
    base = None
    if kind == "anneal":
        base = (start.stage_index, start.mixture) if start is not None else base_point(lineage)
    control = kind == "anneal" or top.ablate.control is not None
    specs = [member_spec(common, top, m, base) for m in with_controls(kind, members, control=control)]
    return list({spec.member: spec for spec in specs}.values())  # one per resolved member


def member_spec(common: list[str], top: RunConfig, member: Member, base: tuple[int, str] | None) -> MemberSpec:
    """One member. Annealing: the base stage's config (its own overrides included) on `share`
    candidate + `1 - share` base mixture, decaying to 0 over `anneal.train_tokens`. Ablation:
    the candidate (or control) mixture from scratch over `ablate.train_tokens`."""
    overrides = [*common, *member.overrides]
    if base is not None:
        index, mixture_name = base
        cfg = compose([*overrides, *top.pipeline.stages[index].overrides, f"mixture={mixture_name}"])
        weights = anneal_weights(cfg.mixture.weights, cfg.anneal.candidates, cfg.anneal.share)
        train = replace(cfg.train, schedule=replace(cfg.train.schedule, min_lr=0.0))
        budget, decay, field = cfg.anneal.train_tokens, 1.0, "anneal.train_tokens"
    else:
        cfg = compose([*overrides, f"mixture={ablation_mixture(top, member)}"])
        weights, train = dict(cfg.mixture.weights), cfg.train
        budget, decay, field = cfg.ablate.train_tokens, cfg.ablate.decay_fraction, "ablate.train_tokens"
    member = resolved(member, cfg)
    if budget < train.tokens_per_step:
        raise ConfigError(f"{field}: must be >= tokens per step {train.tokens_per_step}, got {budget}")
    mixture = MixtureConfig(name=member.name, weights=weights)
    stage = StageConfig(name=member.name, train_tokens=budget, decay_fraction=decay, mixture=member.name)
    return MemberSpec(member, replace(cfg, mixture=mixture, train=train), stage)


def ablation_mixture(top: RunConfig, member: Member) -> str:
    """The mixture a data ablation trains on: its candidate, or the control."""
    mixture = member.candidate or top.ablate.control
    if mixture is None:
        raise ConfigError("ablate.control: is null, so a member needs ablate.candidate (a mixture name)")
    folders = (CONF_DIR / "mixture", generated_dir(top.workdir) / "mixture")
    if not any((folder / f"{mixture}.yaml").is_file() for folder in folders):
        which = "ablate.candidate" if member.candidate else "ablate.control"
        raise ConfigError(f"{which}: no mixture config named {mixture!r} (conf/mixture/ or generated)")
    return mixture


def resolved(member: Member, cfg: RunConfig) -> Member:
    """The member with its share and seed spelled out as the config resolves them, so that
    `anneal.candidate=x` and `anneal.candidate=x anneal.share=0.6` (the default) are one member,
    with one name and one output folder."""
    values = member.values
    extra = [] if "train.seed" in values else [f"train.seed={cfg.train.seed}"]
    if member.kind == "anneal" and not member.is_control and "anneal.share" not in values:
        extra.append(f"anneal.share={cfg.anneal.share}")
    return make_member(member.kind, [*member.overrides, *extra]) if extra else member


def with_identities(spec: MemberSpec, data: dict[str, StepResult], base: StepResult | None) -> MemberSpec:
    """The member's training and evaluation identities on the built data, and whether both are complete."""
    root = workdir(spec.cfg)
    step = training_step(spec.cfg, spec.stage, sources_of(data), data["tokenizer"], base)
    trained = StepResult(step.output_dir(root), step.identity, False)
    evaluation = eval_step(spec.cfg, trained, {n: data[n] for n in needed_sources(spec.cfg)})
    complete = is_complete(trained.output) and is_complete(evaluation.output_dir(root))
    return replace(spec, train_identity=step.identity, eval_identity=evaluation.identity, complete=complete)


def member_jobs(
    kind: str,
    specs: list[MemberSpec],
    data: dict[str, StepResult],
    start: StartPoint | None,
    tracker: Tracker,
    run_id: str,
) -> dict[str, MemberJob]:
    """One job per member, each with its MLflow run (a child of the sweep run) opened here."""
    jobs = {}
    for spec in specs:
        name = spec.member.name
        member_run = start_config_run(
            tracker, spec.cfg, f"{kind}/{name}", kind, parent_run_id=run_id, flow_run_id=flow_run.id
        )
        tracker.set_tags(member_run, {"smollm.member_overrides": " ".join(spec.member.overrides)})
        jobs[name] = MemberJob(
            name=name,
            kind=kind,
            overrides=list(spec.member.overrides),
            candidate=spec.member.candidate,
            cfg=spec.cfg,
            stage=spec.stage,
            tokenizer=Checkpoint.of(data["tokenizer"]),
            sources={n: Checkpoint.of(data[n]) for n in needed_sources(spec.cfg)},
            base=None if start is None else start.checkpoint,
            run_id=member_run,
        )
    return jobs


def summarise(specs: list[MemberSpec], results: dict[str, MemberResult]) -> tuple[list[dict], list[dict]]:
    """The summary rows (scores, deltas vs control, tokens) and the records a rebalance reads."""
    members = [s.member for s in specs]
    metrics = {name: result.evals for name, result in results.items()}
    tokens = {name: result.stage_tokens_per_source for name, result in results.items()}
    rows = summary_rows(members, metrics, tokens)
    records = member_records(
        members,
        metrics,
        {s.member.name: s.cfg.mixture.weights for s in specs},
        {s.member.name: {"share": s.cfg.anneal.share, "seed": s.cfg.train.seed} for s in specs},
    )
    return rows, records


def _union_mixture(specs: list[MemberSpec]) -> MixtureConfig:
    """A mixture over every member's sources: what the one data build has to cover."""
    names = sorted({n for s in specs for n, w in s.cfg.mixture.weights.items() if w > 0})
    return MixtureConfig(name="sweep-data", weights={n: 1 / len(names) for n in names})


def declared_members(stage: StageConfig, kind: str) -> list[list[str]]:
    """The members a stage declares (`stage.anneal` / `stage.ablate`), as member overrides."""
    sweep = getattr(stage, kind)
    return typed_member_overrides(kind, sweep.candidates, sweep.shares if kind == "anneal" else [], sweep.seeds)
