"""What a sweep member pays besides its own training and evaluation: two annealing sweeps in one
run (as a pipeline's stage flows run them: the base trains, then a sweep, then another), on the
run's warm workers (`flows/workers.py`) and the way members ran before (each sweep its own
Prefect process pool, whose workers import torch, transformers, lighteval and mlflow on first use).

    .venv/bin/python bench/sweep_members.py [--quick]

Each arm starts from a copy of one work dir (tokenizer and sources built, no base), trains the
base (stage 1 of the tiny test config) in its first sweep, and runs the members 2 at once. A
member's overhead is its wall time (from its start on a free worker to its result back, as the
sweep times it) minus its training loop's and its evaluation's seconds, both taken from the warm
arm (the same members, the same work: a cold worker's evaluation also times lighteval's import).
Goal: at most 2 s for every member that starts on a worker that has run one before. The first
member of each worker waits for its warm-up, once per run: on a machine whose training holds
every core (this one) it is not started beside the training (`flows.workers.prewarm`).
`--quick`: 2 candidates per sweep instead of 3 x 2 shares (+ the control). Run by `make bench`.
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from common import ROOT, Row, ceiling_row, main

GOAL_SECONDS = 2.0
CANDIDATES = ["synthetic_math", "stdlib_code", "stdlib_prose"]


class PoolPerSweep:
    """How members ran before: each sweep its own pool, nothing warmed ahead."""

    def start(self, cfg, workers: int, threads: int) -> None:
        return None

    def run(self, jobs, workers: int, threads: int):
        from prefect.task_runners import ProcessPoolTaskRunner

        from flows.workers import dispatch, platform_start_method

        with ProcessPoolTaskRunner(max_workers=workers, initializer=platform_start_method) as runner:
            return dispatch(runner, jobs, workers, threads)

    def close(self) -> None:
        return None


def two_sweeps(work: Path, pool, shares: list[float], tokens: int) -> list[dict]:
    """Both sweeps of one run (the first trains the base), in one scope of workers."""
    from flows.sweep import sweep_flow
    from flows.workers import warm_workers
    from tests.conftest import tiny_overrides

    overrides = [*tiny_overrides(work), "tracking.experiment=smollm-bench", "sweep.max_concurrency=2"]
    typed = {"kind": "anneal", "candidates": CANDIDATES[:2] if len(shares) == 1 else CANDIDATES, "base": "stage1"}
    with warm_workers(pool):
        sweeps = [
            sweep_flow(**typed, shares=shares, seeds=[seed], train_tokens=tokens, overrides=overrides).to_dict()
            for seed in (0, 1)
        ]
    return sweeps


def own_seconds(work: Path, member: dict) -> float:
    """The member's training loop and evaluation, as they timed themselves."""
    checkpoint = Path(member["checkpoint"])
    evaluation = work / "eval" / f"{checkpoint.name}-{member['eval_identity'][:12]}" / "results.json"
    return member["summary"]["seconds"] + json.loads(evaluation.read_text())["seconds"]


def run(quick: bool) -> list[Row]:
    import sys

    sys.path.insert(0, str(ROOT))
    from flows.compose import compose
    from flows.runtime import embedded_settings
    from smollm import stage
    from tests.conftest import tiny_overrides

    shares, tokens = ([0.6], 40960) if quick else ([0.3, 0.6], 40960)  # 80 steps of 512 tokens
    with tempfile.TemporaryDirectory(prefix="smollm-bench-members-") as tmp, embedded_settings():
        root = Path(tmp)
        cfg = compose(tiny_overrides(root / "data" / "work"))
        tokenizer = stage.prepare_tokenizer(cfg)  # the data, once, for both arms
        for name in sorted(stage.needed_sources(cfg)):
            stage.build_source(cfg, name, tokenizer)
        arms: dict[str, list[dict]] = {}
        for arm, pool in (("before", PoolPerSweep()), ("warm", None)):
            shutil.copytree(root / "data", root / arm)
            started = time.perf_counter()
            arms[arm] = two_sweeps(root / arm / "work", pool, shares, tokens)
            print(f"{arm}: {time.perf_counter() - started:.1f} s", flush=True)
        members = [m for sweep in arms["warm"] for m in sweep["members"]]
        own = {m["name"]: own_seconds(root / "warm" / "work", m) for m in members}
        first = set(first_on_their_worker(arms["warm"]))
    overhead = {
        arm: {m["name"]: m["wall_seconds"] - own[m["name"]] for s in arms[arm] for m in s["members"]} for arm in arms
    }
    for name, seconds in own.items():
        print(
            f"  {name}: own {seconds:.2f} s, overhead {overhead['before'][name]:.2f} s before, "
            f"{overhead['warm'][name]:.2f} s warm{' (first on its worker)' if name in first else ''}"
        )
    walls = {arm: sum(s["members_seconds"] for s in sweeps) for arm, sweeps in arms.items()}
    return rows(overhead, first, walls)


def first_on_their_worker(sweeps: list[dict]) -> list[str]:
    """The members that were their worker's first (`smollm.worker.members_before` = 0)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(sweeps[0]["tracking_uri"])
    members = [m for sweep in sweeps for m in sweep["members"]]
    return [m["name"] for m in members if client.get_run(m["run_id"]).data.tags["smollm.worker.members_before"] == "0"]


def rows(overhead: dict[str, dict[str, float]], first: set[str], walls: dict[str, float]) -> list[Row]:
    warm = {name: value for name, value in overhead["warm"].items() if name not in first}
    before = {name: overhead["before"][name] for name in warm}
    worst = max(warm.values())
    firsts = {arm: statistics.mean(overhead[arm][name] for name in first) for arm in overhead}
    members = len(overhead["warm"])
    return [
        Row(
            "sweep member overhead (wall - train - eval) on a warm worker / pool per sweep",
            f"{statistics.mean(warm.values()):.2f} s mean, {worst:.2f} s worst",
            f"{statistics.mean(before.values()):.2f} s mean, {max(before.values()):.2f} s worst",
            statistics.mean(warm.values()) / statistics.mean(before.values()),
            f"every member <= {GOAL_SECONDS:g} s",
            worst <= GOAL_SECONDS,
            f"{len(warm)} of {members} members (2 annealing sweeps of one run, 2 at once, 80 steps each)",
        ),
        Row(
            "first member of each worker (waits for its warm-up, once per run) / pool per sweep",
            f"{firsts['warm']:.2f} s",
            f"{firsts['before']:.2f} s",
            firsts["warm"] / firsts["before"],
            "-",
            None,
            f"{len(first)} members; started beside the training only where it leaves idle cores",
        ),
        ceiling_row(
            "sweep members' wall, both sweeps: warm workers / pool per sweep",
            walls["warm"],
            walls["before"],
            1.0,
            "the second sweep starts on warm workers",
        ),
    ]


if __name__ == "__main__":
    main(run)
