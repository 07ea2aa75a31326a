"""Prefect settings for embedded runs (no server configured).

Embedded runs start Prefect's temporary server (what its ephemeral mode does) explicitly and
point the settings at it, so the processes of a sweep's process pool report to the same server
instead of each starting its own.

Flow-run heartbeats let a server detect crashed runs; with no server watching they only cost
time: every flow exit joins the heartbeat thread, which sleeps in 1 s steps (~0.5 s per flow).
With `PREFECT_API_URL` set in the environment (a real server), Prefect's settings are left untouched.
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
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        get_current_settings,
        temporary_settings,
    )

    updates: dict = {PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}
    server = None
    if not get_current_settings().api.url:  # e.g. a test harness has already started one
        from prefect.server.api.server import SubprocessASGIServer

        server = SubprocessASGIServer()
        server.start(timeout=120)
        updates[PREFECT_API_URL] = server.api_url
    try:
        with temporary_settings(updates=updates):
            yield
    finally:
        if server is not None:
            server.stop()
