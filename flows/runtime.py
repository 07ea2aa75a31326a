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

_EMBEDDED: dict[str, str] = {}
"""The API URL of the temporary server `embedded_settings` started, while it runs."""


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
        _EMBEDDED["url"] = server.api_url
    try:
        with temporary_settings(updates=updates):
            yield
    finally:
        if server is not None:
            from prefect.logging.handlers import APILogWorker

            APILogWorker.drain_all(timeout=5)  # the last flow logs reach the server before it stops
            _EMBEDDED.pop("url", None)
            server.stop()


def server_can_ask() -> bool:
    """Whether someone could answer a paused flow: a Prefect server other than the temporary one
    `embedded_settings` starts for itself (a served setup, or a test harness)."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    return bool(url) and url != _EMBEDDED.get("url")
