"""Shared fixtures: a tiny config of the real pipeline (same code path, toy sizes)."""

from __future__ import annotations

import os

import pytest

from tests.tiny import SHAPE

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# the harness logs "Stopping temporary server" at INFO after pytest has closed its capture streams
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
if "PYTEST_XDIST_WORKER" in os.environ:  # `make test` runs two workers on 2 cores: one torch thread each
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def tiny_overrides(workdir) -> list[str]:
    """Shrink the embedded default: small sources, a 2-layer model, short stages."""
    return [
        f"workdir={workdir}",
        *SHAPE,
        "train.progress=false",
        "train.num_threads=1",  # a 2-layer model gains nothing from a second thread; the other test runs beside it
        "pipeline.stages.0.train_tokens=409600",
        "pipeline.stages.1.train_tokens=204800",
        "pipeline.stages.2.train_tokens=204800",
        "tracking.experiment=smollm-test",
        *HAND_RULES,
    ]


HAND_RULES = ["rebalance=demo_rules", "pipeline.stages.0.anneal=null", "pipeline.stages.1.anneal=null"]
"""Most tests run the pipeline's mechanics under the hand-written rules, without the main job's
annealing sweeps (20 members); the tests of the data-driven loop drop these (`loop_overrides`)."""


def loop_overrides(workdir) -> list[str]:
    """The tiny config with the main job's own loop: annealing sweeps and the default policy."""
    return [o for o in tiny_overrides(workdir) if o not in HAND_RULES]


@pytest.fixture
def overrides(tmp_path):
    return tiny_overrides(tmp_path / "work")


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """A tiny config with its tokenizer and sources built once for the session (real steps)."""
    from flows.compose import compose
    from smollm import stage

    cfg = compose(tiny_overrides(tmp_path_factory.mktemp("built") / "work"))
    tokenizer = stage.prepare_tokenizer(cfg)
    sources = {name: stage.build_source(cfg, name, tokenizer) for name in sorted(cfg.data.sources)}
    return cfg, tokenizer, sources


def stage_run(built, steps: int, *, train=None, **changes):
    """A `StageRun` of the tiny config's first stage, `steps` optimizer steps long, on `built` data."""
    import dataclasses

    from smollm.train import StageRun

    cfg, tokenizer, sources = built
    train = train or cfg.train
    fields = {
        "model": cfg.model,
        "train": train,
        "stage": dataclasses.replace(cfg.pipeline.stages[0], train_tokens=steps * train.tokens_per_step),
        "mixture": cfg.mixture,
        "sources": {n: r.output for n, r in sources.items()},
        "tokenizer_dir": tokenizer.output,
    }
    return StageRun(**{**fields, **changes})
