"""Prefect settings for embedded runs (ephemeral mode, no server configured).

Flow-run heartbeats let a server detect crashed runs; with no server watching they only cost
time: every flow exit joins the heartbeat thread, which sleeps in 1 s steps (~0.5 s per flow).
With `PREFECT_API_URL` set (a real server), Prefect's settings are left untouched.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


@contextlib.contextmanager
def embedded_settings() -> Iterator[None]:
    if os.environ.get("PREFECT_API_URL"):
        yield
        return
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield
