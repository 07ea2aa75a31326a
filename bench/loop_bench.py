"""The loop benchmark: does the data-driven loop decide as well as a team would? (issue 18)

    make loop-bench                                     # bench/loop_results.md + .png
    .venv/bin/python bench/loop_bench.py --quick --out DIR    # the mechanics on tiny budgets

What it measures is declared in `bench/loop_bench.yaml`, committed before any policy was tuned
(DESIGN.md §12): the objective (the final checkpoint's held-out bits per byte per category,
priority-weighted; lower is better), the arms, the seeds and the goal. Every arm trains the
main run of `pipeline=demo` at its stage budgets; only the mixtures after the first stage
differ:

- static: the first stage's mixture throughout (no sweeps, no rebalance);
- uniform: equal weights over the demo's sources, held to the sources' epoch caps;
- hand_rules: the hand-written thresholds (`rebalance=demo_rules`, no sweeps);
- loop: the main job as configured (annealing sweeps after each non-final stage + the
  default data-driven policy);
- hindsight: the best of a grid of fixed mixtures for the later stages (one seed each), then
  re-run with every seed.

Stage 1 is one step per seed, shared by every arm through the cache (one work dir): the data is
built first, in this process; the static run of each seed trains its stage 1, and the other
arms' runs at that seed wait for it. Each run is a subprocess (`--one`) running the pipeline
flow, reporting to one temporary Prefect server; its final evaluation, mixtures and sweep
tokens come back as JSON. Runs go two at a time with one torch thread each (2 cores), from one
queue, so neither core waits on the other until the last run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from common import ROOT
from loop_report import objective, write_report

from tests.tiny import SHAPE

SPEC = ROOT / "bench" / "loop_bench.yaml"
QUICK = [  # the mechanics only: the tests' tiny model and sources, a few steps per stage
    *SHAPE,
    "pipeline.stages.0.train_tokens=40960",
    "pipeline.stages.1.train_tokens=20480",
    "pipeline.stages.2.train_tokens=12288",
    "pipeline.stages.0.anneal.train_tokens=2048",
    "pipeline.stages.1.anneal.train_tokens=2048",
]
QUICK_SEEDS = [0]
QUICK_GRID_POINTS = 2


@dataclass
class Run:
    """One pipeline run of one arm at one seed, and what it measured."""

    arm: str
    seed: int
    overrides: list[str]
    result: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------- one run (child)


def run_one(overrides: list[str], out: Path) -> None:
    """Run the pipeline flow on `overrides`; write what the benchmark reads of it to `out`."""
    from flows.pipeline import pipeline_flow
    from flows.runtime import embedded_settings

    started = time.perf_counter()
    with embedded_settings():
        result = pipeline_flow(overrides=overrides)
    last = result.stages[-1]
    stages = []
    for stage in result.stages:
        sweeps = stage.sweeps or {}
        # what the decision cost, whether its members trained in this run or came from the cache
        proxy = sum(sum(m.stage_tokens_per_source.values()) for sweep in sweeps.values() for m in sweep.members)
        stages.append(
            {
                "stage": stage.stage,
                "mixture": stage.mixture,
                "weights": stage_weights(stage),
                "tokens": stage.tokens_seen,
                "proxy_tokens": proxy,
                "proxy_members": sum(len(s.members) for s in sweeps.values()),
                "evidence": [] if stage.proposal is None else stage.proposal.evidence,
                "reasons": [] if stage.proposal is None else stage.proposal.reasons,
            }
        )
    payload = {
        "evals": {k: v for k, v in last.evals.items() if k.startswith("eval/")},
        "stages": stages,
        "seconds": round(time.perf_counter() - started, 1),
    }
    out.write_text(json.dumps(payload, indent=2, sort_keys=True))


def stage_weights(stage: Any) -> dict[str, float]:
    """The weights a stage trained on, as its training recorded them."""
    return dict(stage.summary["mixture"])


# ------------------------------------------------------------------------------- the arms


def spec() -> dict[str, Any]:
    return yaml.safe_load(SPEC.read_text())


def composed(overrides: list[str]) -> Any:
    from flows.compose import compose

    return compose(overrides)


def later_stages(cfg: Any) -> range:
    return range(1, len(cfg.pipeline.stages))


def no_sweeps(cfg: Any) -> list[str]:
    return [f"pipeline.stages.{i}.anneal=null" for i in range(len(cfg.pipeline.stages))]


def fixed_mixture(cfg: Any, mixture: str) -> list[str]:
    """Every stage after the first on `mixture`, no sweeps, no rebalance to decide anything."""
    return [*no_sweeps(cfg), *(f"pipeline.stages.{i}.mixture={mixture}" for i in later_stages(cfg))]


def write_mixture(workdir: Path, name: str, weights: dict[str, float], why: str) -> None:
    """A bench mixture as a Hydra config in the work dir's generated-config folder (on the
    search path of every composition that uses this work dir)."""
    from smollm.rebalance import generated_dir

    folder = generated_dir(str(workdir)) / "mixture"
    folder.mkdir(parents=True, exist_ok=True)
    body = {"name": name, "weights": {k: round(v, 6) for k, v in sorted(weights.items()) if v > 0}}
    (folder / f"{name}.yaml").write_text(f"# loop benchmark: {why}\n" + yaml.safe_dump(body, sort_keys=False))


def feasible(cfg: Any, weights: dict[str, float]) -> dict[str, float] | None:
    """`weights` for the later stages held to the epoch caps the way the rebalance holds a
    proposal (stage 1's consumption counted); None when no mixture near it fits."""
    from smollm.rebalance import Infeasible
    from smollm.rebalance.constraints import Bounds, project

    first = cfg.pipeline.stages[0]
    stage1 = composed_mixture(cfg, first.mixture)
    later = sum(cfg.pipeline.stages[i].train_tokens for i in later_stages(cfg))
    bounds = {}
    for name in cfg.data.sources:
        source = cfg.data.sources[name]
        tokens = available_tokens(cfg, name)
        left = source.max_epochs * tokens - stage1.get(name, 0.0) * first.train_tokens
        high = min(source.max_weight, max(0.0, left) / later)
        bounds[name] = Bounds(0.0, high, "", f"epoch cap {source.max_epochs:g}")
    try:
        return project(weights, bounds)
    except Infeasible:
        return None


def composed_mixture(cfg: Any, name: str) -> dict[str, float]:
    return dict(composed([*BASE_OVERRIDES, f"mixture={name}"]).mixture.weights)


def available_tokens(cfg: Any, source: str) -> int:
    """The source's built token count (complete once stage 1 ran: read, not rebuilt)."""
    from smollm.stage import build_source, prepare_tokenizer

    step = build_source(cfg, source, prepare_tokenizer(cfg))
    return int(json.loads((step.output / "manifest.json").read_text())["num_tokens"])


def grid(names: list[str], step: float) -> list[dict[str, float]]:
    """Every mixture of `names` with weights in multiples of `step`."""
    n = round(1 / step)
    return [
        {name: k * step for name, k in zip(names, ks, strict=True)}
        for ks in itertools.product(range(n + 1), repeat=len(names))
        if sum(ks) == n
    ]


BASE_OVERRIDES: list[str] = []


# --------------------------------------------------------------------------- the benchmark


def prefect_api_url() -> str:
    """The server the runs report to: this process's (one temporary server for all of them)."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    assert url, "no Prefect server: run inside flows.runtime.embedded_settings()"
    return str(url)


def launch(runs: list[Run], workdir: Path, logs: Path, parallel: int) -> None:
    """Run `runs` (`parallel` at a time, in their order), each in its own process; fill in their
    results. A run of another arm waits for the static run of its seed, which trains the stage 1
    that every arm at that seed shares (two runs would otherwise train it side by side)."""
    import threading

    url = prefect_api_url()  # read here: Prefect's settings context does not reach the threads
    static = {run.seed: threading.Event() for run in runs if run.arm == "static"}

    def one(run: Run) -> None:
        if run.arm != "static" and run.seed in static:
            static[run.seed].wait()
        try:
            start(run)
        finally:
            if run.arm == "static":
                static[run.seed].set()

    def start(run: Run) -> None:
        out = logs / f"{run.arm}-seed{run.seed}.json"
        log = logs / f"{run.arm}-seed{run.seed}.log"
        env = {**os.environ, "SMOLLM_WORKDIR": str(workdir), "PREFECT_API_URL": url}
        command = [sys.executable, str(Path(__file__)), "--one", str(out), "--", *run.overrides]
        with log.open("w") as handle:
            done = subprocess.run(command, env=env, stdout=handle, stderr=subprocess.STDOUT, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{run.arm} seed {run.seed} failed (exit {done.returncode}); see {log}")
        run.result = json.loads(out.read_text())

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        for future in [pool.submit(one, run) for run in runs]:
            future.result()


def benchmark(out: Path, quick: bool, parallel: int) -> dict[str, Any]:
    declared = spec()
    seeds = QUICK_SEEDS if quick else list(declared["seeds"])
    workdir = out / "work"
    logs = out / "runs"
    logs.mkdir(parents=True, exist_ok=True)
    common = [f"pipeline={declared['pipeline']}", "train.num_threads=1", "train.progress=false"]
    common += QUICK if quick else []
    BASE_OVERRIDES[:] = common
    os.environ["SMOLLM_WORKDIR"] = str(workdir)
    cfg = composed(common)
    first = cfg.pipeline.stages[0].mixture
    names = sorted(cfg.data.sources)
    started = time.perf_counter()
    runs: dict[str, list[Run]] = {}

    def arm(name: str, extra: list[str], arm_seeds: list[int]) -> list[Run]:
        return [Run(name, s, [*common, f"train.seed={s}", *extra]) for s in arm_seeds]

    for name in names:  # the tokenizer and the sources, built here once, before the runs share them
        available_tokens(cfg, name)
    # stage 1 once per seed, by the static arm's run; every other arm's run at that seed reuses it
    runs["static"] = arm("static", fixed_mixture(cfg, first), seeds)
    uniform = feasible(cfg, {n: 1 / len(names) for n in names})
    assert uniform is not None, "uniform: no mixture near equal weights fits the epoch caps"
    write_mixture(workdir, "bench_uniform", uniform, "equal weights, held to the epoch caps")
    # A grid point past an epoch cap is held to it, as the uniform arm is (the closest mixture
    # that fits); dropping it instead left the 1/4 grid no mixture with synthetic_math in it once
    # its cap allowed 13% over stages 2-3, and hindsight forgot math. Points that coincide once
    # held run once.
    points, seen = [], set()
    for index, weights in enumerate(grid(names, declared["arms"]["hindsight"]["grid_step"])):
        held = feasible(cfg, weights)
        key = None if held is None else tuple(round(held.get(n, 0.0), 4) for n in names)
        if key is not None and key not in seen:
            seen.add(key)
            points.append((f"bench_grid_{index}", {n: held.get(n, 0.0) for n in names}))
    if quick:
        points = points[:QUICK_GRID_POINTS]
    for name, weights in points:
        write_mixture(workdir, name, weights, "a hindsight grid point")
    runs["uniform"] = arm("uniform", fixed_mixture(cfg, "bench_uniform"), seeds)
    runs["hand_rules"] = arm(
        "hand_rules", [*no_sweeps(cfg), f"rebalance={declared['arms']['hand_rules']['rebalance']}"], seeds
    )
    runs["loop"] = arm("loop", [], seeds)
    grid_runs = [
        Run(f"grid:{name}", seeds[0], [*common, f"train.seed={seeds[0]}", *fixed_mixture(cfg, name)])
        for name, _ in points
    ]
    others = sorted([*runs["uniform"], *runs["hand_rules"], *runs["loop"], *grid_runs], key=lambda r: r.seed)
    launch([*runs["static"], *others], workdir, logs, parallel)  # one queue: both cores busy to its end
    priorities = declared["objective"]["priorities"]
    best = min(grid_runs, key=lambda r: objective(r.result, priorities))
    winner = best.arm.split(":", 1)[1]
    runs["hindsight"] = [best, *arm("hindsight", fixed_mixture(cfg, winner), seeds[1:])]
    launch(runs["hindsight"][1:], workdir, logs, parallel)
    return {
        "declared": declared,
        "quick": quick,
        "seeds": seeds,
        "runs": {a: [vars(r) for r in rs] for a, rs in runs.items()},
        "grid": [
            {"mixture": n, "weights": w, "objective": objective(r.result, priorities)}
            for (n, w), r in zip(points, grid_runs, strict=True)
        ],
        "hindsight_winner": {"mixture": winner, "weights": dict(points[[n for n, _ in points].index(winner)][1])},
        "seconds": round(time.perf_counter() - started, 1),
    }


def measured_from(out: Path, quick: bool) -> dict[str, Any]:
    """What an interrupted benchmark measured, from the runs in `out/runs` that finished: the
    arms' runs and the grid points done. Without the winner's re-runs, the best point so far
    stands for hindsight, at its one seed."""
    declared = spec()
    priorities = declared["objective"]["priorities"]
    runs: dict[str, list[dict[str, Any]]] = {}
    for path in sorted((out / "runs").glob("*-seed*.json")):
        arm, seed = path.stem.rsplit("-seed", 1)
        record = {"arm": arm, "seed": int(seed), "overrides": [], "result": json.loads(path.read_text())}
        runs.setdefault(arm, []).append(record)
    folder = out / "work" / "generated_conf" / "mixture"
    grid, grid_runs = [], {}
    for arm in [a for a in runs if a.startswith("grid:")]:
        name, (run,) = arm.split(":", 1)[1], runs.pop(arm)
        weights = yaml.safe_load((folder / f"{name}.yaml").read_text())["weights"]
        grid.append({"mixture": name, "weights": weights, "objective": objective(run["result"], priorities)})
        grid_runs[name] = run
    seeds = QUICK_SEEDS if quick else list(declared["seeds"])
    best = min(grid, key=lambda g: g["objective"]) if grid else None
    declared_points = len(list(folder.glob("bench_grid_*.yaml")))
    notes = [f"{len(grid)} of {declared_points} grid points ran"] if len(grid) < declared_points else []
    notes += [
        f"{arm}: {len(runs.get(arm, []))} of {len(seeds)} seeds"
        for arm in ("static", "uniform", "hand_rules", "loop")
        if len(runs.get(arm, [])) < len(seeds)
    ]
    if best is not None and "hindsight" not in runs:
        runs["hindsight"] = [grid_runs[best["mixture"]]]
        if len(seeds) > 1:  # the grid ran at the first seed; the winner is re-run at the others
            notes.append("the grid's winner was not re-run at every seed: hindsight is the best point so far, one seed")
    elif best is not None:
        runs["hindsight"] = [grid_runs[best["mixture"]], *runs["hindsight"]]
    files = sorted((out / "runs").glob("*"), key=lambda p: p.stat().st_mtime)
    span = round(files[-1].stat().st_mtime - files[0].stat().st_mtime, 1) if files else 0.0
    return {
        "declared": declared,
        "quick": quick,
        "seeds": seeds,
        "runs": runs,
        "grid": grid,
        "hindsight_winner": {"mixture": best["mixture"], "weights": best["weights"]} if best else {},
        "seconds": span,
        "wall_text": f"A report of the finished runs in {out}: their files span {span / 60:.1f} min "
        "(not one benchmark's wall time; a run reused through the cache shows the seconds it took to read it).",
        "interrupted": "; ".join(notes),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a tiny model and budgets, 1 seed, 2 grid points")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / ".loop", help="work dir and run logs")
    parser.add_argument("--results", type=Path, default=None, help="where the table and PNG go (default: bench/)")
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--one", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--report-only", action="store_true", help="the report of the runs in --out that finished")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    if args.one is not None:
        run_one(args.overrides, args.one)
        return

    from flows.runtime import embedded_settings

    if args.report_only:
        measured = measured_from(args.out, args.quick)
    else:
        with embedded_settings():
            measured = benchmark(args.out, args.quick, args.parallel)
    folder = args.results or (args.out if args.quick else ROOT / "bench")
    (args.out / "loop_measured.json").write_text(json.dumps(measured, indent=2, sort_keys=True, default=str))
    md, png = write_report(measured, folder)
    print(f"wrote {md} and {png}")


if __name__ == "__main__":
    main()
