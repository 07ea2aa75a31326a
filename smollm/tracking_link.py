"""The MLflow tracker's link to a tracking server that may go away: whether to call it now, and
what a call becomes when the server goes away during it.

Before a call the server's health check is asked (a local store always answers). While it does
not answer (at start or mid-run) the tracker journals its writes (`tracking_journal.Journal`);
when it answers again, what was journaled is replayed first, and a replay the server drops midway
goes on from there next time. A call during which the server goes away (a refused, reset or
timed-out connection: `tracking_faults.is_outage`) reports "not sent" instead of raising, so
that the tracker journals it too; any other error (a bad value the server refuses) raises. A run
started offline keeps its local id (`offline-…`) until the replay creates it; `real` maps it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

from smollm.tracking_faults import is_outage
from smollm.tracking_journal import OFFLINE_PREFIX, Journal

T = TypeVar("T")


class ServerLink:
    """Whether the tracking server at `uri` can be called now; `replay` sends what `journal` holds
    (the number of records sent) and runs before the first call after an outage."""

    def __init__(self, uri: str, journal: Journal, replay: Callable[[], int]) -> None:
        self.uri, self.journal, self.replay = uri, journal, replay
        self.down = False  # the last health check or call found the server away
        self.replaying = False

    def reachable(self) -> bool:
        """A tracking server answers its health check (a local store always does)."""
        if not self.uri.startswith(("http://", "https://")):
            return True
        import urllib.request

        try:
            with urllib.request.urlopen(f"{self.uri.rstrip('/')}/health", timeout=2):
                return True
        except OSError:
            return False

    def went_away(self) -> None:
        if not self.down:
            print(
                f"warning: MLflow at {self.uri} is unreachable; training goes on, runs and metrics are "
                f"kept in {self.journal.folder} and sent when it is back",
                file=sys.stderr,
            )
        self.down = True

    def online(self) -> bool:
        """Whether to talk to the server now: it answers, and what was journaled has been sent
        (a replay the server drops midway goes on from there next time)."""
        if self.replaying:
            return True
        if not self.reachable():
            self.went_away()
            return False
        self.down = False
        if self.journal:
            self.replaying = True
            try:
                sent = self.replay()
            except Exception as error:
                if not is_outage(error):
                    raise
                self.went_away()
                return False
            finally:
                self.replaying = False
            print(f"MLflow at {self.uri} is back: delivered {sent} journaled records", file=sys.stderr)
        return True

    def attempt(self, call: Callable[[], T]) -> tuple[bool, T | None]:
        """(True, what `call` returned), or (False, None) if the server went away during it. Any
        other error raises, and so does an outage during a replay (its record stays journaled)."""
        try:
            return True, call()
        except Exception as error:
            if self.replaying or not is_outage(error):
                raise
            self.went_away()
            return False, None

    def ask(self, call: Callable[[], T]) -> tuple[bool, T | None]:
        """A read: `attempt` it if the server is online, else (False, None)."""
        return self.attempt(call) if self.online() else (False, None)

    def deliver(self, run_id: str, send: Callable[[str], object]) -> bool:
        """Send a write of `run_id` (`send` gets its real id) now (True), or False: it is to be
        journaled, the server being away, gone during the call, or the run existing only in the
        journal so far."""
        if not self.online() or self.offline(run_id):
            return False
        sent, _ = self.attempt(lambda: send(self.real(run_id)))
        return sent

    def real(self, run_id: str) -> str:
        """The server's id of a run (a run started offline: once its replay created it)."""
        return self.journal.ids.get(run_id, run_id) if run_id.startswith(OFFLINE_PREFIX) else run_id

    def offline(self, run_id: str) -> bool:
        """A run that exists only in the journal so far."""
        return self.real(run_id).startswith(OFFLINE_PREFIX)
