"""Where a sweep's members run: local warm workers, a Hydra launcher (Slurm), a Prefect work pool.

    smollm anneal -m hydra/launcher=submitit_slurm hydra.launcher.partition=gpu \
        hydra.launcher.gpus_per_node=1 hydra.launcher.timeout_min=240 anneal.candidate=a,b
    smollm anneal -m sweep.launcher=work_pool sweep.deployment=smollm-sweep-member/default \
        anneal.candidate=a,b

Every launcher gets the same encoding of a member, a `smollm.results.MemberJob` (its typed
config, the built data and base checkpoint on the shared work dir, its MLflow run): the local
workers (`flows/workers.py`: processes warmed once and kept for the run) as an object, the
others as its JSON form for `smollm.runs.run_member_job`. The sweep flow keeps what members
share (the base, the data, the runs, the summary). The remote paths need the work dir and the
MLflow store shared, at the same absolute path everywhere.

`sweep.launcher=hydra` (the CLI sets it when the overrides pick `hydra/launcher=<not basic>`):
Hydra's plugin registry instantiates the launcher the overrides select, as `hydra --multirun`
would (`flows.compose.hydra_launch`). Job folders go to `<workdir>/sweeps/launcher/<time>-<hash>/`.

`sweep.launcher=work_pool`: one run of the `sweep.deployment` (the `smollm-sweep-member` flow,
deployed from `prefect.yaml`) per member, all at once, waited for; each member leaves its
result next to the sweep's records (`smollm.runs.member_result_path`), read back here.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound

from flows.compose import LAUNCHER_GROUP, hydra_launch
from flows.workers import pool_launch, run_here, with_threads
from smollm.config import SweepConfig
from smollm.results import MemberJob, MemberResult
from smollm.runs import member_result_path
from smollm.schema import ConfigError


def _value(overrides: list[str], key: str) -> str | None:
    values = [o.split("=", 1)[1] for o in overrides if "=" in o and o.split("=", 1)[0].lstrip("+~") == key]
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


def launch_members(
    sweep: SweepConfig, jobs: dict[str, MemberJob], overrides: list[str], pending: set[str]
) -> dict[str, MemberResult]:
    """Run `jobs`: those in `pending` on `sweep.launcher`, the complete ones here (re-recorded)."""
    done = {name: run_here(job) for name, job in jobs.items() if name not in pending}
    todo = {name: jobs[name] for name in jobs if name in pending}
    if sweep.threads_per_member:
        todo = {name: with_threads(job, sweep.threads_per_member) for name, job in todo.items()}
    if not todo:
        return done
    if sweep.launcher == "local":
        return {**done, **pool_launch(todo, sweep)}
    if sweep.launcher == "hydra":
        runs = "|".join(job.run_id for job in todo.values())
        stamp = f"{time.strftime('%Y-%m-%d_%H-%M-%S')}-{hashlib.sha256(runs.encode()).hexdigest()[:8]}"
        folder = Path(next(iter(todo.values())).cfg.workdir) / "sweeps" / "launcher" / stamp
        name = f"smollm-{next(iter(todo.values())).kind}"
        returned = hydra_launch(overrides, {n: j.to_dict() for n, j in todo.items()}, folder, name)
        return {**done, **{name: MemberResult.from_dict(result) for name, result in returned.items()}}
    if sweep.launcher == "work_pool":
        assert sweep.deployment is not None  # SweepConfig checks it
        return {**done, **deployment_launch(sweep.deployment, todo)}
    raise ValueError(f"sweep.launcher: no launcher {sweep.launcher!r}")


def deployment_launch(deployment: str, jobs: dict[str, MemberJob]) -> dict[str, MemberResult]:
    """One flow run of `deployment` per member, all started at once (threads, each in a copy of
    this flow's context so the runs show as its subflows); waits for every one."""
    check_deployment(deployment)
    for job in jobs.values():
        if not job.cfg.tracking.enabled:
            raise ConfigError("tracking.enabled: a work pool's members report through the MLflow store; enable it")

    def run(name: str, job: MemberJob):
        return run_deployment(name=deployment, parameters={"job": job.to_dict()}, flow_run_name=name, timeout=None)

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
    return {name: MemberResult.from_dict(json.loads(member_result_path(job).read_text())) for name, job in jobs.items()}


def check_deployment(deployment: str) -> None:
    """The deployment exists on the server, before any member starts."""
    with get_client(sync_client=True) as client:
        try:
            client.read_deployment_by_name(deployment)
        except ObjectNotFound:
            raise ConfigError(
                f"sweep.deployment: no deployment {deployment!r} on the Prefect server "
                f"(deploy it: prefect deploy --all, see prefect.yaml)"
            ) from None
