"""What every benchmark shares: a result row (measured vs. baseline in the same run, the ratio
and its goal), a best-of-N timer, and the command line that prints rows or writes them as JSON
for `bench/run_all.py`.

A benchmark module defines `run(quick: bool) -> list[Row]` and ends with
`if __name__ == "__main__": main(run)`; then `python bench/<module>.py` prints its rows.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@dataclass
class Row:
    """One measured ratio. `higher_is_better`: the goal is a floor (else a ceiling)."""

    name: str
    measured: str
    """What smollm's path did, with units (e.g. `1.2M tok/s`)."""
    baseline: str
    """What the baseline it wraps did, in the same run."""
    ratio: float | None
    goal: str
    ok: bool | None
    note: str = ""

    def line(self) -> str:
        ratio = "n/a" if self.ratio is None else f"{self.ratio:.3f}"
        verdict = {True: "ok", False: "MISS", None: "-"}[self.ok]
        return f"{self.name}: {ratio} (goal {self.goal}) {verdict} | {self.measured} vs {self.baseline} {self.note}"


def floor_row(name: str, value: float, base: float, floor: float, unit: str, note: str = "") -> Row:
    """A throughput ratio `value / base` whose goal is `>= floor`."""
    ratio = value / base
    return Row(name, f"{value:,.0f} {unit}", f"{base:,.0f} {unit}", ratio, f">= {floor}", ratio >= floor, note)


def ceiling_row(name: str, seconds: float, base_seconds: float, ceiling: float, note: str = "") -> Row:
    """A time ratio `seconds / base_seconds` whose goal is `<= ceiling`."""
    ratio = seconds / base_seconds
    return Row(name, f"{seconds:.2f} s", f"{base_seconds:.2f} s", ratio, f"<= {ceiling}", ratio <= ceiling, note)


def best_of(fn: Callable[[], object], repeats: int, clock: Callable[[], float] = time.perf_counter) -> float:
    """The fastest of `repeats` timed calls (seconds): the least disturbed by the machine.
    `clock=time.process_time` times this process's CPU instead of the wall."""
    times = []
    for _ in range(repeats):
        started = clock()
        fn()
        times.append(clock() - started)
    return min(times)


def main(run: Callable[[bool], list[Row]]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    parser.add_argument("--json", type=Path, help="write the rows here (for bench/run_all.py)")
    args = parser.parse_args()
    rows = run(args.quick)
    for row in rows:
        print(row.line(), flush=True)
    if args.json:
        args.json.write_text(json.dumps([asdict(row) for row in rows], indent=2))
