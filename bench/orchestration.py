"""Orchestration and cache: the demo's stage 1 as a Prefect flow against the same steps called
as plain functions, and re-runs of unchanged work against their first run, all with a Prefect
server running (the start of `make demo`'s temporary server is its own row).

    .venv/bin/python bench/orchestration.py [--quick]

Each side starts from an empty work dir (its own tokenizer, sources, training, lighteval
evaluation, rebalance, MLflow store), with the heavy imports done before. The Prefect side is
`stage_flow` (task runs, states, artifacts). The cache rows re-run
the same stage flow, and a whole small 3-stage pipeline, in their finished work dirs: nothing is
recomputed. `--quick` runs the tiny test-size config instead of the demo's. Run by `make bench`.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from common import ROOT, Row, ceiling_row, main


def plain_stage(overrides: list[str]) -> None:
    """What `flows.stage.stage_flow` does for stage 0, calling the library directly."""
    from flows.compose import compose_lineage
    from smollm import stage
    from smollm.runs import (
        decision_metrics,
        rebalance_inputs,
        tracked_evaluate,
        tracked_rebalance,
        tracked_run,
        tracked_train,
    )
    from smollm.tracking import make_tracker

    node = compose_lineage(overrides).extend()
    cfg = node.cfg
    tracker = make_tracker(cfg.tracking, Path(cfg.workdir))
    with tracked_run(tracker, cfg, "stage/stage1", "stage", parent_run_id=None, flow_run_id=None) as run_id:
        tokenizer = stage.prepare_tokenizer(cfg)
        sources = {name: stage.build_source(cfg, name, tokenizer) for name in sorted(stage.needed_sources(cfg))}
        data = {"tokenizer": tokenizer, **sources}
        outcome = tracked_train(cfg, node.stage, data, None, tracker, stage_run_id=run_id, flow_run_id=None)
        tokens = outcome.summary["tokens_seen"]
        _, evals = tracked_evaluate(cfg, outcome.step, sources, tracker, run_id, tokens)
        named = {s for rule in cfg.rebalance.rules for s in rule.sources} - set(sources)
        weighed = {**sources, **{name: stage.build_source(cfg, name, tokenizer) for name in sorted(named)}}
        consumed = outcome.summary["tokens_per_source"]
        inputs = rebalance_inputs(cfg, 0, consumed, weighed, decision_metrics(evals, {}), None, [])
        name = node.next_mixture()
        tracked_rebalance(cfg, inputs, tracker, stage_run_id=run_id, pipeline_run_id=None, mixture_name=name)


def timed(fn) -> tuple[float, object]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def run(quick: bool) -> list[Row]:
    import sys

    sys.path.insert(0, str(ROOT))
    from flows.compose import compose_lineage
    from flows.pipeline import pipeline_flow
    from flows.runtime import embedded_settings
    from flows.stage import stage_flow
    from tests.conftest import tiny_overrides

    def config(work: Path) -> list[str]:
        base = tiny_overrides(work) if quick else [f"workdir={work}", "train.progress=false"]
        return [*base, "tracking.experiment=smollm-bench"]

    import lighteval  # noqa: F401 - both sides start with the heavy imports done
    import mlflow  # noqa: F401
    import transformers  # noqa: F401

    with tempfile.TemporaryDirectory(prefix="smollm-bench-orch-") as tmp:
        root = Path(tmp)
        server = time.perf_counter()
        with embedded_settings():
            server = time.perf_counter() - server
            plain, _ = timed(lambda: plain_stage(config(root / "plain")))
            prefect, _ = timed(lambda: stage_flow(compose_lineage(config(root / "prefect")).extend()))
            again, second = timed(lambda: stage_flow(compose_lineage(config(root / "prefect")).extend()))
            recomputed = second.trained or bool(second.data_built)
            pipeline_first, _ = timed(lambda: pipeline_flow(tiny_overrides(root / "pipeline")))
            pipeline_again, results = timed(lambda: pipeline_flow(tiny_overrides(root / "pipeline")))
            pipeline_recomputed = any(r.trained or r.data_built for r in results.stages)
    size = "tiny config" if quick else "demo stage 1"
    return [
        ceiling_row("orchestration: Prefect stage flow / plain functions", prefect, plain, 1.03, size),
        Row(
            "cache: unchanged stage re-run",
            f"{again:.1f} s",
            f"{prefect:.1f} s first run",
            again / prefect,
            "<= 5 s, nothing recomputed",
            again <= 5 and not recomputed,
            f"{size}; recomputed: {recomputed}",
        ),
        Row(
            "orchestration: Prefect's temporary server start",
            f"{server:.1f} s",
            "-",
            None,
            "-",
            None,
            "paid once per CLI run without PREFECT_API_URL (`make demo`); not with a running server",
        ),
        Row(
            "cache: unchanged 3-stage pipeline re-run",
            f"{pipeline_again:.1f} s",
            f"{pipeline_first:.1f} s first run",
            pipeline_again / pipeline_first,
            "<= 5 s, nothing recomputed",
            pipeline_again <= 5 and not pipeline_recomputed,
            f"tiny config; recomputed: {pipeline_recomputed}",
        ),
    ]


if __name__ == "__main__":
    main(run)
