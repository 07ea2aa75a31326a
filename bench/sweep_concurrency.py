"""How well a sweep's members run side by side: the same annealing sweep (two candidates + the
control, from the same trained base) with `sweep.max_concurrency=1` and `=2`, in copies of one
work dir so both start from the same complete base and data.

    .venv/bin/python bench/sweep_concurrency.py [--train-tokens 204800]

Prints the members' wall time per setting, one member's time, and the ratios
(concurrent / sequential, concurrent / one member). Run by `make bench`, not by the tests.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.conftest import tiny_overrides  # noqa: E402


def sweep(workdir: Path, train_tokens: int, concurrency: int) -> dict:
    from flows.sweep import sweep_flow

    return sweep_flow(
        kind="anneal",
        candidates=["synthetic_math", "stdlib_code"],
        base="stage1",
        train_tokens=train_tokens,
        max_concurrency=concurrency,
        overrides=[*tiny_overrides(workdir), "tracking.experiment=smollm-bench"],
    ).to_dict()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-tokens", type=int, default=204800, help="each member's budget (512 per step)")
    args = parser.parse_args()
    from flows.runtime import embedded_settings

    root = Path(tempfile.mkdtemp(prefix="smollm-bench-sweep-"))
    with embedded_settings():
        started = time.perf_counter()
        sweep(root / "base" / "work", 512, 1)  # builds the data and trains the base (stage 1)
        print(f"setup (data + base + a 1-step sweep): {time.perf_counter() - started:.1f}s")
        results = {}
        for concurrency in (1, 2):
            copy = root / f"c{concurrency}"
            shutil.copytree(root / "base", copy)
            results[concurrency] = sweep(copy / "work", args.train_tokens, concurrency)
    one = min(m["seconds"] for m in results[1]["members"])
    sequential, concurrent = results[1]["members_seconds"], results[2]["members_seconds"]
    report = {
        "members": len(results[2]["members"]),
        "train_tokens_per_member": args.train_tokens,
        "one_member_seconds": round(one, 1),
        "sequential_seconds": round(sequential, 1),
        "concurrent_seconds": round(concurrent, 1),
        "concurrent_over_sequential": round(concurrent / sequential, 3),
        "concurrent_over_one_member": round(concurrent / one, 3),
    }
    print(json.dumps(report, indent=2))
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
