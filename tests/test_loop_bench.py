"""The loop benchmark's mechanics (`bench/loop_bench.py --quick`): every arm runs as a real
pipeline, the table and the PNG are written, the hindsight grid reuses stage 1 through the
cache, and the loop arm's proxies are counted. The numbers at this size mean nothing; the
full table is `make loop-bench`'s."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench(built, tmp_path_factory):
    cfg, tokenizer, sources = built
    out = tmp_path_factory.mktemp("loop-bench")
    work = out / "work"
    # the session's tokenizer and sources: the quick config builds the same steps (same identities)
    for step in [tokenizer, *sources.values()]:
        target = work / step.output.relative_to(Path(cfg.workdir))
        shutil.copytree(step.output, target)
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "loop_bench.py"), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, json.loads((out / "loop_measured.json").read_text())


def test_every_arm_ran_and_the_table_and_picture_are_written(bench):
    out, measured = bench
    assert set(measured["runs"]) == {"static", "uniform", "hand_rules", "loop", "hindsight"}
    table = (out / "loop_results.md").read_text()
    for arm in measured["runs"]:
        assert f"| {arm} |" in table
    assert "## Goal" in table and "loop vs static" in table and "loop vs hindsight" in table
    png = (out / "loop_results.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_the_arms_train_the_mixtures_they_declare(bench):
    _, measured = bench
    runs = measured["runs"]
    first = runs["static"][0]["result"]["stages"][0]["weights"]
    for arm in runs.values():
        for run in arm:
            stages = run["result"]["stages"]
            assert stages[0]["weights"] == first  # stage 1 is the same in every arm
    static = runs["static"][0]["result"]["stages"]
    assert all(s["weights"] == first for s in static)
    uniform = runs["uniform"][0]["result"]["stages"][1]["weights"]
    assert max(uniform.values()) - min(uniform.values()) < 0.1  # equal, up to the epoch caps
    winner = measured["hindsight_winner"]["weights"]
    hindsight = runs["hindsight"][0]["result"]["stages"][1]["weights"]
    assert hindsight == pytest.approx({k: v for k, v in winner.items() if v > 0})
    assert len(measured["grid"]) >= 2 and measured["hindsight_winner"]["mixture"] in {
        g["mixture"] for g in measured["grid"]
    }


def test_only_the_loop_pays_for_proxies_and_reuses_stage_one(bench):
    out, measured = bench
    runs = measured["runs"]
    loop = runs["loop"][0]["result"]["stages"]
    assert loop[0]["proxy_members"] == 10 and loop[0]["proxy_tokens"] == 10 * 2048
    assert sum(s["proxy_tokens"] for s in loop) == 20 * 2048
    for arm in ("static", "uniform", "hand_rules", "hindsight"):
        assert all(s["proxy_tokens"] == 0 for r in runs[arm] for s in r["result"]["stages"])
    # one stage-1 training for the seed, however many arms and grid points ran on it
    stage1 = [p for p in (out / "work" / "train").iterdir() if p.name.startswith("demo-stage1-")]
    assert len(stage1) == 1


def test_a_loop_run_from_the_cache_counts_the_proxies_its_decisions_read(bench, tmp_path):
    """Run the loop arm again on the same work dir: every step is a cache hit, and its proxy
    tokens are still the 20 members' (the re-run of the full benchmark had counted only the
    members trained in that process: 4.1% for 24.6%)."""
    out, measured = bench
    record = measured["runs"]["loop"][0]
    again = tmp_path / "loop-again.json"
    env = {**os.environ, "SMOLLM_WORKDIR": str(out / "work")}
    trained = [d for d in (out / "work" / "train").iterdir() if d.name.startswith("demo-anneal-")]
    members = {p: p.stat().st_mtime_ns for d in trained for p in d.rglob("*") if p.is_file()}
    command = [sys.executable, str(ROOT / "bench" / "loop_bench.py"), "--one", str(again), "--", *record["overrides"]]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # no member trained again: they were read from the cache (a re-trained member would count on the old code too)
    assert members and {p: p.stat().st_mtime_ns for p in members} == members
    stages = json.loads(again.read_text())["stages"]
    assert [s["proxy_tokens"] for s in stages] == [s["proxy_tokens"] for s in record["result"]["stages"]]
    assert sum(s["proxy_tokens"] for s in stages) == 20 * 2048


def test_the_report_of_finished_runs_reads_the_same_table_and_says_what_it_is(bench, tmp_path):
    out, _ = bench
    command = [sys.executable, str(ROOT / "bench" / "loop_bench.py"), "--quick", "--report-only", "--out", str(out)]
    done = subprocess.run([*command, "--results", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = (tmp_path / "loop_results.md").read_text()
    assert "A report of the finished runs" in table and "**Interrupted**" not in table  # every run finished

    def objectives(text: str) -> dict[str, str]:  # arm -> "mean ± std"
        rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| arm |")]
        cells = [line.split(" | ")[:2] for line in rows if " ± " in line]
        return {arm.removeprefix("| "): value for arm, value in cells}

    assert objectives(table) == objectives((out / "loop_results.md").read_text())
    assert set(objectives(table)) == {"static", "uniform", "hand_rules", "loop", "hindsight"}
