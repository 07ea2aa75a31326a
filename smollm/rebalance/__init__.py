"""Rebalancing: from a stage's evaluations and sweeps, propose the next stage's mixture.

`inputs.RebalanceInputs` is what a policy reads; `propose.propose` refuses to compare scores
across stages whose evaluations differ (`drift.py`, unless `accept_eval_drift`), runs the
configured policy (`keep`, `rules`, `anneal_gain`, `regression`) and holds the constraints
(`constraints.py`); `write.write_mixture` writes the result as Hydra YAML in the
generated-config folder, with its provenance and reasons in the header, never over a
hand-written config.
"""

from smollm.rebalance.constraints import Constraints, Infeasible, SourceLimits, Violation, violations
from smollm.rebalance.drift import EvalDrift
from smollm.rebalance.inputs import RebalanceInputs, SweepRun
from smollm.rebalance.propose import Proposal, propose
from smollm.rebalance.write import (
    CONF_DIR,
    GENERATED_MARK,
    generated_dir,
    generated_mixture_name,
    write_generated_mixture,
    write_mixture,
)

__all__ = [
    "CONF_DIR",
    "GENERATED_MARK",
    "Constraints",
    "EvalDrift",
    "Infeasible",
    "Proposal",
    "RebalanceInputs",
    "SourceLimits",
    "SweepRun",
    "Violation",
    "generated_dir",
    "generated_mixture_name",
    "propose",
    "violations",
    "write_generated_mixture",
    "write_mixture",
]
