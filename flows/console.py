"""What the `smollm` command prints: the stages, a progress bar per training run and evaluation,
the evaluations, each rebalance's decision with its reasons, the final table — and any warning
or error, with its traceback.

The flows log their lines through the run logger (`tasks.common.run_logger`: the Prefect UI
and the console); the training and evaluation bars are smollm's own (`train.progress`). The
rest is the libraries' chatter, turned down here with their own switches, set as defaults of
the environment before any of them is imported (a variable the user set wins), so that the
processes a run starts (sweep members, torchrun) inherit them. (The bytecode disassembly that
filled the demo's console came from the flows' `log_prints`, which they no longer use: see
`tasks.common.run_logger`.)

- Prefect's own INFO lines (the temporary server starting and stopping) and each task run's
  ("Finished in state Completed()"): only warnings and errors, which include a failed task's
  traceback. Flow runs keep INFO: their start, their link in the UI, their end, and the flows'
  own lines. A task run's INFO lines are then not sent to the Prefect server either; its states
  are recorded all the same, and a retry after a transient error, which Prefect announces at
  INFO, is a warning of `tasks.common.transient`.
- MLflow's INFO lines ("Creating initial MLflow database tables...").
- datasets' progress bars (`Generating test split`, `Creating parquet from Arrow format`,
  `Map`) and transformers' (`Loading weights`, `Writing model shards`), through
  huggingface_hub's switch, which transformers reads; it also hides the hub's download bars
  (`HF_HUB_DISABLE_PROGRESS_BARS=0` shows them).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

CONSOLE_ENV = {
    "PREFECT_LOGGING_LEVEL": "WARNING",
    # `PREFECT_LOGGING_[PATH]_[TO]_[KEY]` overrides a key of Prefect's logging.yml
    "PREFECT_LOGGING_LOGGERS_PREFECT_FLOW_RUNS_LEVEL": "INFO",
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}


@contextlib.contextmanager
def console_env() -> Iterator[None]:
    """`CONSOLE_ENV` as defaults of the environment while a command runs. It must be entered
    before Prefect, MLflow, datasets or transformers is imported: each reads it once, then."""
    added = {key: value for key, value in CONSOLE_ENV.items() if key not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)
