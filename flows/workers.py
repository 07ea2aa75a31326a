"""Warm worker processes for the sweep members of a run (`sweep.launcher=local`).

A fresh process pays ~11 s of imports before a member trains (torch, transformers, lighteval,
mlflow): more than a small annealing run's own training and evaluation. So the members run in
Prefect's process pool, each worker warmed once by its initializer (`smollm.preload.warm_up`:
the libraries imported, the tracker open) and kept for every sweep of the run:

    with warm_workers():             # the outermost flow (pipeline, stage or sweep) holds the pool;
        stage_flow(...)              # nested flows find it and reuse it; it closes with the scope

A stage flow that will train and declares local sweeps starts the workers before it trains
(`prewarm`) when the training leaves them idle cores (a GPU's, or `train.num_threads` below the
machine's): their imports overlap it and its first members start in warm ones. Otherwise they
start with the first sweep that has members to run, whose first members wait for them (once per
run); imports beside a loop that holds every core would slow it by more than that.
Members stay Prefect tasks (`member_task`: retries, logs, task runs under their sweep's flow
run); at most `sweep.max_concurrency` run at once, one per worker, each timed from its start to
its result (`MemberResult.wall_seconds`). `bench/sweep_members.py` measures the difference with
how they ran before (a pool per sweep, its workers importing on first use).

Workers start with `spawn` (Prefect's choice; the parent holds threads and torch), then restore
the platform's start method (`platform_start_method`).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import multiprocessing
import os
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from prefect.futures import as_completed
from prefect.task_runners import ProcessPoolTaskRunner

from smollm.config import RunConfig, SweepConfig
from smollm.preload import idle_cores, warm_up
from smollm.results import MemberJob, MemberResult
from tasks.common import run_logger
from tasks.sweep import member_task


def platform_start_method() -> None:
    """Prefect starts the pool's processes with `spawn`, which they inherit as their own default;
    restore the platform's (fork on Linux) so that pools inside a member fork instead of
    re-importing everything."""
    multiprocessing.set_start_method(None, force=True)


def warm_worker(cfg: RunConfig) -> None:
    """Initialiser of a warm pool's processes: import and open what members of `cfg` use. A
    failure leaves the worker cold (an initialiser that raises breaks the whole pool): its first
    member then meets the error itself, in its own task run."""
    platform_start_method()
    try:
        warm_up(cfg)
    except Exception as error:
        logging.getLogger("smollm").warning(f"warming a sweep worker failed, it starts cold: {error!r}")


def with_threads(job: MemberJob, threads: int, *, progress: bool = True) -> MemberJob:
    """The job with its torch thread count (bookkeeping: no step identity changes)."""
    train = replace(job.cfg.train, num_threads=threads, progress=job.cfg.train.progress and progress)
    return replace(job, cfg=replace(job.cfg, train=train))


def member_threads(sweep: SweepConfig, workers: int) -> int:
    """torch threads per member when `workers` members run at once: the cores shared out."""
    return sweep.threads_per_member or max(1, (os.cpu_count() or 1) // workers)


class WarmTaskRunner(ProcessPoolTaskRunner):
    """Prefect's process pool (3.8), used past one flow run: two things its own does not do."""

    def spawn_workers(self) -> None:
        """Start every worker now (the pool starts one per submission otherwise): a trivial call
        each, to the executor itself, so no task run shows for it."""
        assert self._executor is not None, "enter the runner first"
        for _ in range(self._max_workers):
            self._executor.submit(os.getpid)

    def for_this_flow_run(self) -> WarmTaskRunner:
        """Forget the flow-run context Prefect captured at the first submission (it keeps it for
        the runner's life), so members submitted now are task runs of the current flow run."""
        self._cached_context = None
        self._cached_env = None
        return self


class WarmPool:
    """The run's warm workers: started on first need (or by `prewarm`), kept across sweeps, closed by `close`."""

    def __init__(self) -> None:
        self.runner: WarmTaskRunner | None = None
        self.workers = 0
        self.hub = False

    def start(self, cfg: RunConfig, workers: int, threads: int) -> WarmTaskRunner:
        """The pool, warming for members of `cfg`; a smaller one, or one warmed for a suite with
        the other hub setting (HF libraries read their offline switch once, at import), is replaced."""
        hub = cfg.eval_suite.needs_hub()
        if self.runner is not None and (self.workers < workers or self.hub != hub):
            self.close()
        if self.runner is None:
            warm = replace(cfg, train=replace(cfg.train, num_threads=threads))
            runner = WarmTaskRunner(max_workers=workers, initializer=warm_worker, initargs=(warm,))
            runner.__enter__()
            runner.spawn_workers()
            self.runner, self.workers, self.hub = runner, workers, hub
            run_logger().info(f"starting {workers} warm worker processes for sweep members")
        return self.runner

    def run(self, jobs: dict[str, MemberJob], workers: int, threads: int) -> dict[str, MemberResult]:
        """`jobs` on the warm workers, `workers` at once; on any failure the pool is closed (a
        worker may have died), and the next sweep starts a fresh one."""
        runner = self.start(next(iter(jobs.values())).cfg, workers, threads).for_this_flow_run()
        try:
            return dispatch(runner, jobs, workers, threads)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.runner is not None:
            runner, self.runner, self.workers = self.runner, None, 0
            runner.__exit__(None, None, None)


_POOL: contextvars.ContextVar[WarmPool | None] = contextvars.ContextVar("smollm_warm_pool", default=None)


@contextlib.contextmanager
def warm_workers(pool: WarmPool | None = None) -> Iterator[WarmPool]:
    """The run's warm pool: opened by the outermost flow that enters this, reused by the flows it
    runs, closed (its workers stopped) when that flow's block ends. `pool`: the one to hold
    instead of a new one (a benchmark's baseline), when none is held yet."""
    held = _POOL.get()
    if held is not None:
        yield held
        return
    pool = pool or WarmPool()
    token = _POOL.set(pool)
    try:
        yield pool
    finally:
        _POOL.reset(token)
        pool.close()


def prewarm(cfg: RunConfig, members: int, *, beside_training: bool = False) -> None:
    """Start the warm workers for `members` members of `cfg` now, if they would run on them;
    `beside_training`: only if the training that runs meanwhile leaves them idle cores."""
    sweep, pool = cfg.sweep, _POOL.get()
    workers = min(sweep.max_concurrency, members)
    if pool is None or sweep.launcher != "local" or workers <= 1:
        return
    if beside_training and idle_cores(cfg) < workers:
        return  # they would slow the training by more than they save: they start with the sweep
    pool.start(cfg, workers, member_threads(sweep, workers))


def pool_launch(jobs: dict[str, MemberJob], sweep: SweepConfig) -> dict[str, MemberResult]:
    """At most `sweep.max_concurrency` members at once on the run's warm workers, cores shared;
    one at a time here, in this process, when only one may run."""
    workers = min(sweep.max_concurrency, len(jobs))
    if workers <= 1:
        return {name: run_here(job) for name, job in jobs.items()}
    with warm_workers() as pool:  # the run's; a sweep run on its own opens one for itself here
        return pool.run(jobs, workers, member_threads(sweep, workers))


def run_here(job: MemberJob) -> MemberResult:
    """A member in this process, timed."""
    started = time.perf_counter()
    result = member_task(job)
    return replace(result, wall_seconds=time.perf_counter() - started)


def dispatch(runner: Any, jobs: dict[str, MemberJob], workers: int, threads: int) -> dict[str, MemberResult]:
    """Submit the members to `runner`, at most `workers` in flight (the next one as soon as one
    returns), each timed from its submission to its result; results in the jobs' order."""
    waiting, running, results = list(jobs), {}, {}
    while waiting or running:
        while waiting and len(running) < workers:
            name = waiting.pop(0)
            future = runner.submit(member_task, {"job": with_threads(jobs[name], threads, progress=False)})
            running[future] = (name, time.perf_counter())
        future = next(as_completed(list(running)))
        name, started = running.pop(future)
        results[name] = replace(future.result(), wall_seconds=time.perf_counter() - started)
    return {name: results[name] for name in jobs}
