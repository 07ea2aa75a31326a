"""What every task shares: retries, the cache policy, and the tracker for a config."""

from __future__ import annotations

from pathlib import Path

from prefect.cache_policies import NO_CACHE

from smollm.config import RunConfig
from smollm.tracking import Tracker, make_tracker

TASK_OPTIONS = {"cache_policy": NO_CACHE, "retries": 1, "retry_delay_seconds": 2}


def tracker_for(cfg: RunConfig) -> Tracker:
    return make_tracker(cfg.tracking, Path(cfg.workdir))
