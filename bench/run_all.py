"""Run every benchmark, each in its own process, and write the table: `make bench`.

    .venv/bin/python bench/run_all.py [--quick] [--only data_path,training] [--out bench/results.md]

Each row is a ratio measured in one run against the baseline it wraps, with its goal. The table
(markdown) goes to `--out` with the machine, the commit and the time it took.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ["data_path", "tokenization", "training", "evaluation", "orchestration", "sweep_members", "mfu"]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} x {cpu}, Python {platform.python_version()}"


def commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=HERE, capture_output=True, text=True).stdout
    return done.stdout.strip() + (" (uncommitted changes)" if dirty.strip() else "")


def run_one(name: str, quick: bool) -> tuple[list[dict], float]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        command = [sys.executable, str(HERE / f"{name}.py"), "--json", str(out), *(["--quick"] if quick else [])]
        started = time.perf_counter()
        done = subprocess.run(command, cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        seconds = time.perf_counter() - started
        if done.returncode != 0 or not out.is_file():
            tail = done.stdout.strip().splitlines()[-1:] or ["no output"]
            return [
                {
                    "name": name,
                    "measured": "-",
                    "baseline": "-",
                    "ratio": None,
                    "goal": "-",
                    "ok": False,
                    "note": f"failed (exit {done.returncode}): {tail[0][:200]}",
                }
            ], seconds
        return json.loads(out.read_text()), seconds


def table(rows: list[dict]) -> str:
    lines = ["| benchmark | ratio | goal | met | smollm | baseline | notes |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.3f}"
        met = {True: "yes", False: "**no**", None: "-"}[row["ok"]]
        cells = [row["name"], ratio, row["goal"], met, row["measured"], row["baseline"], row["note"]]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default=",".join(BENCHMARKS))
    parser.add_argument("--out", type=Path, default=HERE / "results.md")
    args = parser.parse_args()
    started, rows, times = time.perf_counter(), [], {}
    for name in args.only.split(","):
        print(f"== {name}", flush=True)
        found, times[name] = run_one(name, args.quick)
        for row in found:
            print(f"   {row['name']}: {row['ratio']} (goal {row['goal']}) ok={row['ok']} {row['note']}", flush=True)
        rows.extend(found)
    total = time.perf_counter() - started
    header = [
        "# smollm benchmarks",
        "",
        f"- when: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; commit {commit()}",
        f"- machine: {machine()}",
        f"- wall time: {total:.0f} s ({', '.join(f'{k} {v:.0f} s' for k, v in times.items())})"
        + (" — `--quick` sizes" if args.quick else ""),
        "",
    ]
    text = "\n".join(header) + table(rows) + "\n"
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
