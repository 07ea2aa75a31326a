"""The loop benchmark's table and picture, from what `bench/loop_bench.py` measured.

`write_report(measured, folder)` writes `loop_results.md` (arm x objective mean ± std over
seeds, per-category bits per byte and accuracy, proxy tokens as a fraction of the main run's,
wall time, the goal checked) and `loop_results.png` (the objective per arm with every seed;
the loop's mixture per stage).
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

ARMS = ("static", "uniform", "hand_rules", "loop", "hindsight")


def objective(result: dict[str, Any], priorities: dict[str, float]) -> float:
    evals = result["evals"]
    values = {c: evals[f"eval/bpb/{c}"] for c in priorities if f"eval/bpb/{c}" in evals}
    return math.fsum(priorities[c] * v for c, v in values.items()) / math.fsum(priorities[c] for c in values)


def spread(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def arm_rows(measured: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per arm: the objective over seeds, per-category means, proxy fraction, wall time."""
    priorities = measured["declared"]["objective"]["priorities"]
    rows = {}
    for arm in ARMS:
        runs = measured["runs"].get(arm, [])
        if not runs:
            continue
        values = [objective(r["result"], priorities) for r in runs]
        mean, std = spread(values)
        categories = sorted({k.split("/")[-1] for r in runs for k in r["result"]["evals"] if k.startswith("eval/bpb/")})
        bpb = {c: statistics.fmean(r["result"]["evals"][f"eval/bpb/{c}"] for r in runs) for c in categories}
        acc = {
            c: statistics.fmean(r["result"]["evals"].get(f"eval/category/{c}", float("nan")) for r in runs)
            for c in categories
        }
        main_tokens = [r["result"]["stages"][-1]["tokens"] for r in runs]
        proxy = [sum(s["proxy_tokens"] for s in r["result"]["stages"]) for r in runs]
        rows[arm] = {
            "values": values,
            "mean": mean,
            "std": std,
            "bpb": bpb,
            "accuracy": acc,
            "proxy_fraction": statistics.fmean(p / t for p, t in zip(proxy, main_tokens, strict=True)),
            "seconds": statistics.fmean(r["result"]["seconds"] for r in runs),
        }
    return rows


def verdict(met: bool, *rows: dict[str, Any], seeds: int) -> str:
    """`met` / `not met`, or `not decided` while an arm compared ran fewer seeds than declared."""
    short = [len(r["values"]) for r in rows if len(r["values"]) < seeds]
    if short:
        return f"not decided ({min(short)} of {seeds} seeds)"
    return "met" if met else "not met"


def goal_lines(rows: dict[str, dict[str, Any]], goal: dict[str, float], seeds: int) -> list[str]:
    """The declared goal, checked: a gap counts only beyond `k` x the larger seed std of the two,
    and only on every declared seed."""
    if "loop" not in rows:
        return ["- **not measured**: no run of the loop finished"]
    loop = rows["loop"]
    lines = []
    for other in ("static", "uniform"):
        gap = rows[other]["mean"] - loop["mean"]
        std = max(loop["std"], rows[other]["std"])
        need = goal["beats_static_and_uniform_by_stds"]
        met = gap > need * std
        lines.append(
            f"- loop vs {other}: objective {gap:+.4f} lower (std {std:.4f}; needs > {need:g} std = "
            f"{need * std:.4f}): **{verdict(met, loop, rows[other], seeds=seeds)}**"
        )
    if "hindsight" not in rows:
        lines.append("- loop vs hindsight: **not measured** (the grid did not finish)")
        return [*lines, proxy_line(loop, goal)]
    hind = rows["hindsight"]
    gap = loop["mean"] - hind["mean"]
    std = max(loop["std"], hind["std"])
    need = goal["within_hindsight_stds"]
    lines.append(
        f"- loop vs hindsight: {gap:+.4f} (std {std:.4f}; needs <= {need:g} std = {need * std:.4f}): "
        f"**{verdict(gap <= need * std, loop, hind, seeds=seeds)}**"
    )
    return [*lines, proxy_line(loop, goal)]


def proxy_line(loop: dict[str, Any], goal: dict[str, float]) -> str:
    frac = loop["proxy_fraction"]
    cap = goal["max_proxy_token_fraction"]
    return f"- annealing proxies: {frac:.1%} of the main run's tokens (cap {cap:.0%}): **{'met' if frac <= cap else 'not met'}**"


def loop_trajectory(measured: dict[str, Any]) -> list[dict[str, Any]]:
    """The loop's stages: per seed the weights it trained on and the evidence it decided from."""
    out = []
    for run in measured["runs"].get("loop", []):
        for stage in run["result"]["stages"]:
            out.append({"seed": run["seed"], **stage})
    return out


def markdown(measured: dict[str, Any], rows: dict[str, dict[str, Any]]) -> str:
    declared = measured["declared"]
    categories = sorted({c for row in rows.values() for c in row["bpb"]})
    lines = [
        "# The loop benchmark" + (" (--quick: mechanics only, tiny budgets)" if measured["quick"] else ""),
        "",
        f"Declared in `bench/loop_bench.yaml` before any policy tuning. Objective: {declared['objective']['metric']} "
        f"per category, priorities {declared['objective']['priorities']}, {declared['objective']['direction']}. "
        f"Seeds {measured['seeds']}. " + measured.get("wall_text", f"Wall time {measured['seconds'] / 60:.1f} min."),
        "",
        *([f"**Interrupted**: {measured['interrupted']}", ""] if measured.get("interrupted") else []),
        "| arm | objective (mean ± std) | seeds | "
        + " | ".join(f"bpb {c}" for c in categories)
        + " | "
        + " | ".join(f"acc {c}" for c in categories)
        + " | proxy tokens | wall per run |",
        "|---|---|---|" + "---:|" * (2 * len(categories) + 2),
    ]
    for arm, row in rows.items():
        cells = [f"{row['mean']:.4f} ± {row['std']:.4f}", ", ".join(f"{v:.4f}" for v in row["values"])]
        cells += [f"{row['bpb'][c]:.4f}" for c in categories]
        cells += [f"{row['accuracy'][c]:.3f}" for c in categories]
        cells += [f"{row['proxy_fraction']:.1%}", f"{row['seconds']:.0f} s"]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    lines += ["", "## Goal", "", *goal_lines(rows, declared["goal"], len(measured["seeds"])), ""]
    winner = measured["hindsight_winner"] or {"mixture": None, "weights": {}}
    lines += [
        "## Hindsight grid",
        "",
        f"{len(measured['grid'])} fixed mixtures for the later stages (seed {measured['seeds'][0]}); "
        f"{'winner' if 'hindsight' in rows else 'best so far'} `{winner['mixture']}` {winner['weights']}.",
        "",
        "| mixture | weights | objective |",
        "|---|---|---:|",
    ]
    for point in sorted(measured["grid"], key=lambda p: p["objective"]):
        weights = ", ".join(f"{k} {v:.2f}" for k, v in sorted(point["weights"].items()) if v > 0)
        lines.append(f"| {point['mixture']} | {weights} | {point['objective']:.4f} |")
    lines += ["", "## The loop's decisions", ""]
    for stage in loop_trajectory(measured):
        weights = ", ".join(f"{k} {v:.3f}" for k, v in sorted(stage["weights"].items()))
        lines.append(f"- seed {stage['seed']}, {stage['stage']}: trained on {weights}")
        for reason in stage["reasons"]:
            lines.append(f"  - {reason}")
    return "\n".join(lines) + "\n"


def picture(measured: dict[str, Any], rows: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = list(rows)
    for i, arm in enumerate(names):
        left.bar(i, rows[arm]["mean"], yerr=rows[arm]["std"], color="#bbb" if arm != "loop" else "#4a7", capsize=4)
        left.scatter([i] * len(rows[arm]["values"]), rows[arm]["values"], color="k", s=12, zorder=3)
    left.set_xticks(range(len(names)), names)
    low = min(min(r["values"]) for r in rows.values())
    high = max(max(r["values"]) for r in rows.values())
    left.set_ylim(low - 0.3 * (high - low + 1e-3), high + 0.3 * (high - low + 1e-3))
    left.set_ylabel("objective: weighted held-out bpb (lower is better)")
    left.set_title("final checkpoint, per arm (bar: mean ± std; dots: seeds)")
    stages = [s for s in loop_trajectory(measured) if s["seed"] == measured["seeds"][0]]
    sources = sorted({k for s in stages for k in s["weights"]})
    bottom = [0.0] * len(stages)
    for source in sources:
        heights = [s["weights"].get(source, 0.0) for s in stages]
        right.bar(range(len(stages)), heights, bottom=bottom, label=source)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    right.set_xticks(range(len(stages)), [s["stage"] for s in stages])
    right.set_ylabel("mixture weight")
    right.set_title(f"the loop's mixture per stage (seed {measured['seeds'][0]})")
    right.legend(loc="upper left", bbox_to_anchor=(1, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(measured: dict[str, Any], folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rows = arm_rows(measured)
    md, png = folder / "loop_results.md", folder / "loop_results.png"
    md.write_text(markdown(measured, rows))
    picture(measured, rows, png)
    return md, png
