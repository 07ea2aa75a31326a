"""`smollm plan`: walk the pipeline's lineage and print what it would run and cost.

Nothing is downloaded, tokenized or trained: identities come from the configs and the code,
completion from the work dir, parameter counts from the model shape. The lineage is the one a
run walks (`flows.compose.compose_lineage`, `smollm.lineage`).

    smollm plan pipeline=smollm2_1.7b            # text
    smollm plan pipeline=smollm2_1.7b --json     # machine-readable
"""

from __future__ import annotations

from collections.abc import Sequence

from flows.compose import compose_lineage
from smollm.lineage import Lineage
from smollm.plan import Plan, plan_pipeline
from smollm.schema import ConfigError


def make_plan(overrides: Sequence[str] = ()) -> Plan:
    """The plan of the composed pipeline; a stage whose mixture a rebalance writes uses the
    written one if that rebalance has run, else the previous stage's (marked as an estimate)."""
    return plan_pipeline(compose_lineage(overrides))


def preflight(lineage: Lineage | Sequence[str]) -> Plan:
    """Validate every stage's config and refuse a source past its epoch cap, before any compute
    (of a lineage, or of the pipeline `lineage` overrides compose)."""
    plan = plan_pipeline(lineage if isinstance(lineage, Lineage) else compose_lineage(lineage))
    if plan.errors:
        raise ConfigError(plan.errors[0])
    return plan
