"""What every task shares: the cache policy, retries on transient errors only, artifact keys."""

from __future__ import annotations

import re
from typing import Any

from prefect.cache_policies import NO_CACHE

TRANSIENT = (OSError,)
"""A filesystem or network hiccup (`ConnectionError`, `TimeoutError` are `OSError`s): worth a
retry. Anything else (a bad config, a bug, an infeasible constraint) fails the same way again."""


def transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect's `retry_condition_fn`: retry only when the failure was transient."""
    try:
        state.result()
    except TRANSIENT:
        return True
    except BaseException:
        return False
    return False


TASK_OPTIONS: dict[str, Any] = {
    "cache_policy": NO_CACHE,
    "retries": 1,
    "retry_delay_seconds": 2,
    "retry_condition_fn": transient,
}


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow only lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower())
