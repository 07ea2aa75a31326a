"""What every task shares: the cache policy, retries on transient errors only, artifact keys."""

from __future__ import annotations

import re
from typing import Any

from prefect.cache_policies import NO_CACHE


def is_transient(error: BaseException) -> bool:
    """A filesystem or network hiccup — an `OSError` (`ConnectionError` and `TimeoutError` are
    ones), or an error raised from one (MLflow's client wraps a refused connection in an
    `MlflowException`): worth a retry. Anything else (a bad config, a bug, an infeasible
    constraint) fails the same way again."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect's `retry_condition_fn`: retry only when the failure was transient."""
    try:
        state.result()
    except BaseException as error:  # the task's own exception, re-raised by its state
        return is_transient(error)
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
