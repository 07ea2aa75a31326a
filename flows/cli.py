"""The `smollm` command.

smollm run pipeline=demo train.seed=3     run a pipeline end to end (Prefect, ephemeral mode)
smollm config model=smollm2_1.7b          compose + validate, print the resolved config
smollm plan pipeline=smollm2_1.7b [--json] the steps, identities, tokens, epochs, FLOPs, GPU-hours
                                          (exit 1 when a source would pass its epoch cap)
smollm anneal -m anneal.candidate=synthetic_math,stdlib_code anneal.share=0.3,0.6
                                          annealing runs from anneal.base's checkpoint, + a control
smollm ablate -m ablate.candidate=demo_code_heavy,demo_math_heavy train.seed=0,1
                                          data ablations from scratch, + the control mixture
smollm rebalance --run <MLflow run id> [--policy anneal_gain] [--write]
                                          propose a next mixture offline from a recorded stage
smollm replay --run <pipeline run id> [--policy rules]
                                          re-decide every recorded rebalance; exit 1 when the
                                          recorded policy no longer gives the recorded mixtures
"""

from __future__ import annotations

import argparse
import json
import sys

# Nothing imported at module level here may import Prefect, MLflow or the HF libraries: they
# read the console's settings once, when imported, after `main` has set them (flows/console.py).
from flows.compose import compose, generated_dir
from flows.console import console_env
from smollm.config import ConfigError
from smollm.rebalance import Infeasible
from smollm.results import PipelineResult, ProposedMixture, SweepResult
from smollm.schema import to_dict
from smollm.sweep import format_table


def report(result: PipelineResult) -> str:
    """What a user reads after a run: per-stage numbers and where everything is."""
    lines = [f"pipeline {result.pipeline} finished", ""]
    lines.append(f"{'stage':<10}{'trained':>9}{'tokens':>11}{'loss first->last':>20}  categories")
    for stage in result.stages:
        s = stage.summary
        cats = {k.split("/")[-1]: round(v, 3) for k, v in stage.evals.items() if k.startswith("eval/category/")}
        loss = f"{s['first_loss']:.3f}->{s['last_loss']:.3f}"
        lines.append(f"{stage.stage:<10}{str(stage.trained):>9}{stage.tokens_seen:>11}{loss:>20}  {cats}")
    for stage in result.stages:
        if stage.proposal is not None:
            lines += ["", *decision_table(stage.stage, stage.proposal)]
    lines += [
        "",
        f"work dir:          {result.workdir}",
        f"generated mixtures: {generated_dir(result.workdir) / 'mixture'}",
        f"MLflow store:      {result.tracking_uri}  (pipeline run {result.pipeline_run_id})",
        "open the MLflow and Prefect UIs: make serve   (then http://127.0.0.1:5000, http://127.0.0.1:4200)",
    ]
    return "\n".join(lines)


def decision_table(stage: str, proposal: ProposedMixture) -> list[str]:
    """The rebalance after `stage`: per source its weight before and after, and beside it what
    the policy measured for it: the annealing gain over the control (objective units, higher
    is better), the centred slope ± `noise_sigmas` of its noise, and whether it moved."""
    evidence = {row["candidate"]: row for row in proposal.evidence}
    lines = [f"after {stage} -> {proposal.name}"]
    if evidence:
        lines.append(f"  {'source':<16}{'before':>8}{'after':>8}{'gain':>10}  {'centred slope':>20}  moved")
    else:
        lines.append(f"  {'source':<16}{'before':>8}{'after':>8}")
    for name in sorted(set(proposal.weights) | set(proposal.previous)):
        before, after = proposal.previous.get(name, 0.0), proposal.weights.get(name, 0.0)
        row = f"  {name:<16}{before:>8.3f}{after:>8.3f}"
        if name in evidence:
            e = evidence[name]
            noise = "± ?" if e["slope_noise"] is None else f"± {e['slope_noise']:.4f}"
            moved = "yes" if e["significant"] else "no (within the noise)"
            row += f"{e['gain']:>+10.4f}  {e['centred_slope']:>+10.4f} {noise:>9}  {moved}"
        lines.append(row)
    bound = [r for r in proposal.reasons if r.startswith("constraint:")]
    return lines + [f"  {r}" for r in bound]


def sweep_report(result: SweepResult) -> str:
    """The sweep's summary table and where its records are."""
    trained = ", ".join(result.trained) or "nothing (every member was complete)"
    return "\n".join(
        [
            f"{result.kind} sweep {result.sweep_id}: {len(result.members)} members, trained {trained}",
            "",
            format_table(result.rows),
            "",
            f"summary and chart: {result.folder}",
            f"MLflow store:      {result.tracking_uri}  (sweep run {result.sweep_run_id})",
        ]
    )


def run_sweep(kind: str, overrides: list[str], *, multirun: bool) -> int:
    from flows.compose import split_multirun
    from flows.launchers import with_launcher
    from flows.runtime import embedded_settings
    from flows.sweep import member_specs, sweep_flow

    common, members = split_multirun(overrides, multirun=multirun, kind=kind)
    common = with_launcher(common)  # hydra/launcher=submitit_slurm: the members go to that launcher
    member_specs(kind, common, members)  # every member valid before a server starts
    with embedded_settings():
        result = sweep_flow(kind=kind, overrides=common, members=members)
    print(sweep_report(result))
    return 0


def offline_rebalance(command: str, run_id: str, policy: str | None, overrides: list[str], *, write: bool) -> int:
    """`smollm rebalance` / `smollm replay`: a policy on the inputs recorded in MLflow."""
    from pathlib import Path

    from smollm.rebalance import write_generated_mixture
    from smollm.rebalance.write import weights_digest
    from smollm.replay import format_replay, recorded_decisions, replay
    from smollm.tracking import make_tracker

    chosen = [*overrides, f"rebalance={policy}"] if policy else overrides
    cfg = compose(chosen)
    own_policy = policy is not None or any(o.lstrip("+").startswith("rebalance") for o in overrides)
    rows = replay(
        recorded_decisions(make_tracker(cfg.tracking, Path(cfg.workdir)), run_id), cfg.rebalance if own_policy else None
    )
    if command == "replay":
        print(format_replay(rows))
        return 0 if own_policy or all(row["same"] for row in rows) else 1
    for row in rows:
        proposal = row["proposal"]
        print(proposal.markdown(f"Next mixture for {row['next_stage']} (after {row['stage']}, run {row['run_id']})"))
        if write:
            name = f"offline-{row['next_stage']}-{proposal.policy}-{weights_digest(proposal.weights)}"
            provenance = {"policy": proposal.policy, "from_stage_run": row["run_id"], "offline": True}
            path = write_generated_mixture(proposal, name, cfg.workdir, provenance)
            print(f"\nwritten: {path}  (use it with mixture={name})")
    return 0


def print_plan(overrides: list[str], *, as_json: bool) -> int:
    from flows.plan import make_plan
    from smollm.plan import format_plan

    plan = make_plan(overrides)
    print(plan.to_json() if as_json else format_plan(plan))
    for error in plan.errors:
        print(f"error: {error}", file=sys.stderr)
    return 1 if plan.errors else 0


def parser() -> argparse.ArgumentParser:
    """The command line: one subcommand each, all taking Hydra overrides."""
    parser = argparse.ArgumentParser(
        prog="smollm", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    commands = (
        ("run", "run a pipeline end to end"),
        ("config", "print the resolved config"),
        ("plan", "print what a pipeline would run and cost, computing nothing"),
        ("anneal", "run a sweep of annealing runs (a control is added)"),
        ("ablate", "run a sweep of data ablations (the control mixture is added)"),
        ("rebalance", "propose a next mixture from a recorded stage run (MLflow), computing nothing else"),
        ("replay", "re-run the recorded (or another) policy over a recorded pipeline's rebalances"),
    )
    for name, text in commands:
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. pipeline=demo train.seed=3")
        if name == "plan":
            cmd.add_argument("--json", action="store_true", help="print the plan as JSON")
        if name in ("anneal", "ablate"):
            cmd.add_argument("-m", "--multirun", action="store_true", help="sweep comma-separated values (Hydra)")
        if name in ("rebalance", "replay"):
            cmd.add_argument("--run", required=True, help="an MLflow stage run id, or a pipeline run id")
            cmd.add_argument("--policy", help="a conf/rebalance option (default: the recorded policy)")
        if name == "rebalance":
            cmd.add_argument("--write", action="store_true", help="write the proposal as a generated mixture")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    with console_env():  # before anything imports Prefect or the HF libraries
        return run_command(args)


def run_command(args: argparse.Namespace) -> int:
    """Run the command `args` names; a bad config or input is one line on stderr and exit 2."""
    try:
        if args.command in ("anneal", "ablate"):
            return run_sweep(args.command, args.overrides, multirun=args.multirun)
        if args.command in ("rebalance", "replay"):
            write = getattr(args, "write", False)
            return offline_rebalance(args.command, args.run, args.policy, args.overrides, write=write)
        cfg = compose(args.overrides)
        if args.command == "plan":
            return print_plan(args.overrides, as_json=args.json)
        if args.command == "run":
            from flows.plan import preflight

            preflight(args.overrides)
    except (ConfigError, Infeasible) as err:  # bad config or input; constraints no mixture can meet
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # Hydra's own override/composition errors
        if type(err).__module__.startswith(("hydra", "omegaconf")):
            print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
            return 2
        raise
    if args.command == "config":
        print(json.dumps(to_dict(cfg), indent=2))
        return 0
    from flows.pipeline import pipeline_flow
    from flows.runtime import embedded_settings

    with embedded_settings():
        result = pipeline_flow(overrides=args.overrides)
    print(report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
