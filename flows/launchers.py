"""Scale a sweep out: hand its members to a Hydra launcher (Slurm) or a Prefect work pool.

    smollm anneal -m hydra/launcher=submitit_slurm hydra.launcher.partition=gpu \
        hydra.launcher.gpus_per_node=1 hydra.launcher.timeout_min=240 anneal.candidate=a,b
    smollm anneal -m sweep.launcher=work_pool sweep.deployment=smollm-sweep-member/default \
        anneal.candidate=a,b

The sweep flow keeps what members share (the base checkpoint, the data, an MLflow run per
member, the summary); only the members' training and evaluation go out, each as a plain job
for `flows.sweep.member_job`. Both paths need the work dir and the MLflow store shared, at the
same absolute path everywhere: jobs get `workdir=<absolute path>` and find the data and the
base checkpoint there, complete.

`sweep.launcher=hydra` (the CLI sets it when the overrides pick `hydra/launcher=<not basic>`):
the config is composed with its Hydra node, the launcher it selects is instantiated by Hydra's
plugin registry, as `hydra --multirun` would, and gets one job per member (its member
overrides). Hydra's job number picks the member job; each `JobReturn` holds its result. Job
folders go to `<workdir>/sweeps/launcher/<time>-<hash>/` unless `hydra.sweep.dir` is given.

`sweep.launcher=work_pool`: one run of the `sweep.deployment` (the `smollm-sweep-member` flow,
deployed from `prefect.yaml`) per member, all at once, waited for. Results are read back from
the stores the sweep shares anyway (see `stored_result`).
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from flows.compose import compose, generated_dir, normalise_override, search_path
from smollm.config import SweepConfig
from smollm.schema import ConfigError

LAUNCHER_GROUP = "hydra/launcher"


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _value(overrides: list[str], key: str) -> str | None:
    values = [o.split("=", 1)[1] for o in overrides if "=" in o and _key(o) == key]
    return values[-1] if values else None


def with_launcher(overrides: list[str]) -> list[str]:
    """`hydra/launcher=<x>` (x not `basic`) means `sweep.launcher=hydra`: add it (the CLI's rule)."""
    choice = _value(overrides, LAUNCHER_GROUP)
    if choice in (None, "basic"):
        return overrides
    given = _value(overrides, "sweep.launcher")
    if given is None:
        return [*overrides, "sweep.launcher=hydra"]
    if given != "hydra":
        raise ConfigError(f"sweep.launcher: is {given!r} but {LAUNCHER_GROUP}={choice} picks a Hydra launcher")
    return overrides


def launch_members(sweep: SweepConfig, jobs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Run `jobs` ({member name: `member_job` arguments}) on `sweep.launcher`; their results by name."""
    if not jobs:
        return {}
    jobs = {name: absolute_workdir(job) for name, job in jobs.items()}
    if sweep.threads_per_member:  # bookkeeping: no step identity changes
        jobs = {
            n: {**j, "overrides": [*j["overrides"], f"train.num_threads={sweep.threads_per_member}"]}
            for n, j in jobs.items()
        }
    if sweep.launcher == "hydra":
        return hydra_launch(jobs)
    if sweep.launcher == "work_pool":
        assert sweep.deployment is not None  # SweepConfig checks it
        return pool_launch(sweep.deployment, jobs)
    raise ValueError(f"sweep.launcher: no remote launcher {sweep.launcher!r}")


def absolute_workdir(job: dict[str, Any]) -> dict[str, Any]:
    """The job with `workdir=<absolute>`: a remote job runs elsewhere, maybe without `SMOLLM_WORKDIR`."""
    root = compose(job["overrides"]).workdir
    overrides = [o for o in job["overrides"] if _key(o) != "workdir"]
    return {**job, "overrides": [f"workdir={root}", *overrides]}


# --- Hydra launchers ---------------------------------------------------------------------------


class MemberTask:
    """Hydra's task function: job number i runs member job i. A plain class, so submitit can
    pickle it (with the launcher) into each Slurm job."""

    def __init__(self, jobs: list[dict[str, Any]]) -> None:
        self.jobs = jobs

    def __call__(self, cfg: Any) -> dict[str, Any]:
        from hydra.core.hydra_config import HydraConfig

        from flows.sweep import member_job

        return member_job(**self.jobs[HydraConfig.get().job.num])


def launcher_config(overrides: list[str], sweep_dir: Path, job_name: str):
    """The composed config with its `hydra` node, as a multirun's master config: our defaults
    (no chdir, no logging setup in the caller's process, the sweep dir) unless overridden."""
    from hydra import compose as hydra_compose

    from flows.compose import _initialise_hydra

    given = {_key(o) for o in overrides}
    defaults = {
        "hydra.sweep.dir": f"'{sweep_dir}'",
        "hydra.job.name": job_name,
        "hydra.job.chdir": "false",
        "hydra/job_logging": "none",
        "hydra/hydra_logging": "none",
    }
    search = generated_dir(compose(overrides).workdir)
    _initialise_hydra()
    return hydra_compose(
        config_name="config",
        overrides=[
            *map(normalise_override, overrides),
            *(f"{k}={v}" for k, v in defaults.items() if k not in given),
            *search_path(search),
        ],
        return_hydra_config=True,
    )


def hydra_launch(jobs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every member as one job of the Hydra launcher the jobs' common overrides select."""
    from hydra._internal.callbacks import Callbacks
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.plugins import Plugins
    from hydra.core.utils import JobStatus
    from hydra.types import HydraContext
    from omegaconf import OmegaConf

    names = list(jobs)
    common = jobs[names[0]]["overrides"]
    if any(job["overrides"] != common for job in jobs.values()):
        raise ValueError("jobs: a Hydra launch needs the same common overrides for every member")
    runs = "|".join(job["run_id"] for job in jobs.values())
    stamp = f"{time.strftime('%Y-%m-%d_%H-%M-%S')}-{hashlib.sha256(runs.encode()).hexdigest()[:8]}"
    sweep_dir = Path(compose(common).workdir) / "sweeps" / "launcher" / stamp
    cfg = launcher_config(common, sweep_dir, f"smollm-{jobs[names[0]]['kind']}")
    choice = cfg.hydra.runtime.choices.get(LAUNCHER_GROUP)
    context = HydraContext(config_loader=GlobalHydra.instance().config_loader(), callbacks=Callbacks(cfg))
    launcher = Plugins.instance().instantiate_launcher(
        hydra_context=context, task_function=MemberTask([jobs[n] for n in names]), config=cfg
    )
    task_overrides = list(OmegaConf.to_container(cfg.hydra.overrides.task))
    per_job = [[*task_overrides, *map(normalise_override, jobs[n]["member"])] for n in names]
    print(f"{len(names)} members to Hydra's {choice} launcher; job folders in {cfg.hydra.sweep.dir}")
    try:
        returns = launcher.launch(per_job, initial_job_idx=0)
    except Exception as err:  # e.g. submitit's UncompletedJobError: the job itself died
        raise RuntimeError(f"Hydra's {choice} launcher failed on {names}: {err}") from err
    failed = {n: r._return_value for n, r in zip(names, returns, strict=True) if r.status != JobStatus.COMPLETED}
    if failed:  # the members that completed are complete steps: a relaunch reuses them
        errors = "; ".join(f"sweep member {n}: its {choice} job failed: {e!r}" for n, e in failed.items())
        raise RuntimeError(errors) from next(iter(failed.values()))
    return {name: ret.return_value for name, ret in zip(names, returns, strict=True)}


# --- Prefect work pool -------------------------------------------------------------------------


def pool_launch(deployment: str, jobs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """One flow run of `deployment` per member, all started at once (threads, each in a copy of
    this flow's context so the runs show as its subflows); waits for every one."""
    from prefect.deployments import run_deployment

    check_deployment(deployment)
    for job in jobs.values():
        stores(job)  # tracking must be on before anything runs

    def run(name: str, job: dict[str, Any]):
        return run_deployment(name=deployment, parameters=job, flow_run_name=name, timeout=None)

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = {n: pool.submit(contextvars.copy_context().run, run, n, job) for n, job in jobs.items()}
    flow_runs = {name: future.result() for name, future in futures.items()}
    failed = [
        f"{name} (flow run {r.name} {r.id}: {r.state.type.value if r.state else 'no state'}"
        f"{': ' + r.state.message if r.state and r.state.message else ''})"
        for name, r in flow_runs.items()
        if r.state is None or not r.state.is_completed()
    ]
    if failed:
        raise RuntimeError(f"sweep members failed on deployment {deployment}: {'; '.join(failed)}")
    return {name: stored_result(jobs[name], r.total_run_time.total_seconds()) for name, r in flow_runs.items()}


def check_deployment(deployment: str) -> None:
    """The deployment exists on the server, before any member starts."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_deployment_by_name(deployment)
        except ObjectNotFound:
            raise ConfigError(
                f"sweep.deployment: no deployment {deployment!r} on the Prefect server "
                f"(deploy it: prefect deploy --all, see prefect.yaml)"
            ) from None


def stores(job: dict[str, Any]):
    """The job's MLflow client (the shared store the member logs to) and config."""
    from smollm.tracking import MLflowTracker, make_tracker

    cfg = compose(job["overrides"])
    tracker = make_tracker(cfg.tracking, Path(cfg.workdir))
    if not isinstance(tracker, MLflowTracker):
        raise ConfigError("tracking.enabled: a work pool's members report through the MLflow store; enable it")
    return tracker.client, cfg


def stored_result(job: dict[str, Any], seconds: float) -> dict[str, Any]:
    """A member's result, read back from its MLflow run and its checkpoint on the shared work dir.

    Not the flow run's return value: reading that back needs result persistence and a result
    storage shared by worker and sweep (a remote filesystem block), two more things to set up,
    whereas the work dir and the MLflow store are shared anyway (the sweep's summary reads the
    members' metrics from there). The same values `tracked_member` returns: the checkpoint and
    `smollm.cached` tags, the run's `eval/` metrics, the checkpoint's `summary.json`.
    """
    client, _ = stores(job)
    run = client.get_run(job["run_id"])
    tags = run.data.tags
    if "smollm.checkpoint" not in tags:
        raise RuntimeError(f"MLflow run {job['run_id']}: completed without a checkpoint tag; is the store shared?")
    checkpoint = Path(tags["smollm.checkpoint"])
    summary = json.loads((checkpoint / "summary.json").read_text())
    return {
        "run_id": job["run_id"],
        "checkpoint": str(checkpoint),
        "trained": tags.get("smollm.cached") == "false",
        "summary": summary,
        "evals": {k: v for k, v in run.data.metrics.items() if k.startswith("eval/")},
        "stage_tokens_per_source": summary["stage_tokens_per_source"],
        "seconds": seconds,
    }
