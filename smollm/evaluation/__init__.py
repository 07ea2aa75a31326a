"""Evaluation: typed suites, deterministic items, and a lighteval backend (DESIGN.md §6).

    from smollm.evaluation import EvalSuite, evaluate_checkpoint
    result = evaluate_checkpoint(model_dir, EvalSuite.from_dict(cfg), heldout, output_dir)
    result.metrics["math_add1_cf/acc_norm"], result.categories["math"]

Suites mix custom tasks over held-out data (`conf/eval/offline.yaml`) and lighteval's built-in
benchmarks (`conf/eval/smollm2_base.yaml`, `kind: lighteval`, see `lighteval_builtin`).

Importing this package is cheap; lighteval and transformers are imported when evaluating.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from smollm.evaluation.result import EvalResult
from smollm.evaluation.suite import EvalSuite, EvalTask

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["EvalResult", "EvalSuite", "EvalTask", "evaluate_checkpoint"]


def evaluate_checkpoint(model_dir: Path, suite: EvalSuite, heldout: Mapping[str, Path], output_dir: Path) -> EvalResult:
    """Score a checkpoint on `suite` with lighteval; see `lighteval_backend.evaluate_checkpoint`."""
    from smollm.evaluation import lighteval_backend

    return lighteval_backend.evaluate_checkpoint(model_dir, suite, heldout, output_dir)
