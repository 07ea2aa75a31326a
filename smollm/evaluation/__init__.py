"""Evaluation: typed suites, deterministic items, and a lighteval backend.

    from smollm.evaluation import EvalSuite
    from smollm.evaluation.lighteval_backend import evaluate_checkpoint
    result = evaluate_checkpoint(model_dir, EvalSuite.from_dict(cfg), heldout, output_dir)
    result.metrics["math_add1_cf/acc_norm"], result.categories["math"]

Suites mix custom tasks over held-out data (`conf/eval/offline.yaml`) and lighteval's built-in
benchmarks (`conf/eval/smollm2_base.yaml`, `kind: lighteval`, see `lighteval_builtin`).

Each result carries the suite's fingerprint (`fingerprint.py`: lighteval's version, every task's
prompt source, metrics, few-shot and data), part of the evaluation's identity; scores compare
only between equal fingerprints.

Importing this package is cheap (the suite and result types); lighteval and transformers are
imported by `lighteval_backend`, which imports this package and never the other way round.
See `docs/architecture.md`, "Evaluation".
"""

from smollm.evaluation.result import EvalResult
from smollm.evaluation.suite import EvalSuite, EvalTask

__all__ = ["EvalResult", "EvalSuite", "EvalTask"]
