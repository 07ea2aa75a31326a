"""What every task and flow shares: the cache policy, retries on transient errors only, artifact
keys, the run logger."""

from __future__ import annotations

import logging
import re
from typing import Any

from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """The current flow or task run's logger: its lines reach the run's page in the Prefect UI and
    the console. Outside a run (a helper called on its own), the `smollm` logger.

    The flows do not use `log_prints`: it would turn every `print` inside a run into a log line,
    libraries' included (dill's `dis` output, which datasets' fingerprinting captures from
    stdout, became hundreds of lines per evaluation), and a warning a library prints to stderr
    into a task run's INFO line, which the console leaves out (`flows/console.py`)."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("smollm")


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
        if not is_transient(error):
            return False
        # Prefect announces the retry at INFO, which the console leaves out for task runs
        run_logger().warning(f"{task_run.name}: transient error, retrying: {error!r}")
        return True
    return False


TASK_OPTIONS: dict[str, Any] = {
    "cache_policy": NO_CACHE,
    "retries": 1,
    "retry_delay_seconds": 2,
    "retry_condition_fn": transient,
    "log_prints": False,  # even with PREFECT_LOGGING_LOG_PRINTS set: see `run_logger`
}


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow only lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower())
