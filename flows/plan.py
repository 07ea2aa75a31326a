"""`smollm plan`: compose every stage's config and print what the pipeline would run and cost.

Nothing is downloaded, tokenized or trained: identities come from the configs and the code,
completion from the work dir, parameter counts from the model shape.

    smollm plan pipeline=smollm2_1.7b            # text
    smollm plan pipeline=smollm2_1.7b --json     # machine-readable
"""

from __future__ import annotations

from collections.abc import Sequence

from flows.compose import compose, compose_stage, generated_dir
from smollm.model import parameter_count
from smollm.plan import Plan, Planner
from smollm.rebalance import generated_mixture_name
from smollm.schema import ConfigError


def make_plan(overrides: Sequence[str] = ()) -> Plan:
    """The plan of the composed pipeline; a stage whose mixture a rebalance writes uses the
    written one if that rebalance has run, else the previous stage's (marked as an estimate)."""
    overrides = list(overrides)
    top = compose(overrides)
    counts: dict[str, int] = {}
    planner = Planner(counts)
    previous_mixture = ""
    for index, stage in enumerate(top.pipeline.stages):
        mixture, note = stage.mixture, "declared"
        if mixture is None:
            written = generated_mixture_name(top, index - 1, planner.stages[-1].train_identity)
            if (generated_dir(top.workdir) / "mixture" / f"{written}.yaml").is_file():
                mixture, note = written, f"written by the rebalance after {top.pipeline.stages[index - 1].name}"
            else:
                mixture, note = previous_mixture, "estimate: the rebalance after the previous stage has not run"
        cfg = compose_stage(overrides, index, mixture)
        if cfg.model.name not in counts:
            counts[cfg.model.name] = parameter_count(cfg.model)
        planner.stage(cfg, index, note)
        previous_mixture = mixture
    return planner.result(top)


def preflight(overrides: Sequence[str] = ()) -> Plan:
    """Validate every stage's config and refuse a source past its epoch cap, before any compute."""
    plan = make_plan(overrides)
    if plan.errors:
        raise ConfigError(plan.errors[0])
    return plan
