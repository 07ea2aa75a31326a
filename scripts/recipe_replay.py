"""Replay SmolLM2's stage-to-stage decisions through `rebalance=smollm2_rules`.

For each transition of the 1.7B recipe (stage 1 -> 2, 2 -> 3, 3 -> 4) this builds the inputs the
rebalance of `pipeline=smollm2_1.7b_auto` would read after that stage — the paper's results for
the stage and the one before, the mixture the authors trained it on, the tokens each source had
consumed under the authors' mixtures, every source's constraints — records them as stage runs of
a pipeline run in a throwaway MLflow store (SQLite in the work dir, smollm's own tracker), lets
smollm2_rules propose the next mixture, and prints, decision by decision, the proposal beside
the mixture the authors chose next (markdown on stdout; the store and its run ids on stderr):

    .venv/bin/python scripts/recipe_replay.py > docs/recipe_replay.md
    .venv/bin/python scripts/recipe_replay.py --workdir /tmp/replay   # keep the store there

The recorded stage runs then work with the CLI like any pipeline's:

    .venv/bin/smollm rebalance --run <stage run id> workdir=<the work dir>
    .venv/bin/smollm replay --run <pipeline run id> workdir=<the work dir>

The results are the paper's per-stage category averages (knowledge/reasoning, math, code,
generative) and MMLU MCF, as fractions. Only those published for a stage are recorded; a rule
whose metric a stage lacks skips it and says so (`if_missing: skip`).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's flows/ and smollm/, ahead of any installed copy

from flows.compose import compose  # noqa: E402
from smollm.config import RunConfig  # noqa: E402
from smollm.rebalance import Proposal, RebalanceInputs, propose  # noqa: E402
from smollm.runs import EVAL_PREFIX, rebalance_inputs, record_proposal, start_config_run  # noqa: E402
from smollm.tracking import Tracker, make_tracker  # noqa: E402

PIPELINE = "smollm2_1.7b_auto"
MIXTURES = ["smollm2_stage1", "smollm2_stage2", "smollm2_stage3", "smollm2_stage4"]
"""The mixtures the authors trained stages 1-4 on (conf/mixture/, from RECIPE.md's stage table)."""

PAPER_RESULTS: dict[str, dict[str, float]] = {
    # at the end of each stage (6T, 8T, 10T, 11T tokens), as fractions, all read in the SmolLM2
    # paper itself (arXiv 2502.02737v1): the category averages (knowledge/reasoning, math, code,
    # generative) from Table 3 (§4.2, "Average model performance on different benchmark categories
    # after each training stage"), MMLU MCF from Table 8 (Appendix E.1, "Per-benchmark model
    # performance across training stages")
    "stage1": {
        "category/knowledge": 0.5550,  # Table 3, stage 1: 55.50
        "category/math": 0.0321,  # Table 3, stage 1: 3.21
        "category/code": 0.0887,  # Table 3, stage 1: 8.87
        "category/generative": 0.3154,  # Table 3, stage 1: 31.54
        "mmlu_mcf/acc_norm": 0.2962,  # Table 8, stage 1: 29.62
    },
    "stage2": {
        "category/knowledge": 0.5676,  # Table 3, stage 2: 56.76
        "category/math": 0.0370,  # Table 3, stage 2: 3.7
        "category/code": 0.1056,  # Table 3, stage 2: 10.56
        "category/generative": 0.3130,  # Table 3, stage 2: 31.30
        "mmlu_mcf/acc_norm": 0.3796,  # Table 8, stage 2: 37.96
    },
    "stage3": {
        "category/knowledge": 0.5747,  # Table 3, stage 3: 57.47
        "category/math": 0.0727,  # Table 3, stage 3: 7.27
        "category/code": 0.1675,  # Table 3, stage 3: 16.75
        "category/generative": 0.3470,  # Table 3, stage 3: 34.70
        "mmlu_mcf/acc_norm": 0.4254,  # Table 8, stage 3: 42.54
    },
    "stage4": {
        "category/knowledge": 0.6024,  # Table 3, stage 4: 60.24
        "category/math": 0.2207,  # Table 3, stage 4: 22.07
        "category/code": 0.2321,  # Table 3, stage 4: 23.21
        "category/generative": 0.3612,  # Table 3, stage 4: 36.12
        "mmlu_mcf/acc_norm": 0.4887,  # Table 8, stage 4: 48.87
    },
}


@dataclass(frozen=True)
class Decision:
    """One transition: what the rebalance reads, its config, and what the authors chose next."""

    cfg: RunConfig
    """The stage's config in `pipeline=smollm2_1.7b_auto`, on the authors' mixture for it."""
    inputs: RebalanceInputs
    authors_next: dict[str, float]
    authors_next_name: str


def stage_config(workdir: Path, mixture: str) -> RunConfig:
    return compose([f"workdir={workdir}", f"pipeline={PIPELINE}", f"mixture={mixture}"])


def paper_decisions(workdir: Path) -> list[Decision]:
    """The three transitions, each on the authors' mixture and tokens consumed so far."""
    cfgs = [stage_config(workdir, name) for name in MIXTURES]
    stages = cfgs[0].pipeline.stages
    consumed: dict[str, int] = {}
    decisions = []
    for index, cfg in enumerate(cfgs[:-1]):
        for source, weight in cfg.mixture.weights.items():
            consumed[source] = consumed.get(source, 0) + round(weight * stages[index].train_tokens)
        name = stages[index].name
        previous = PAPER_RESULTS[stages[index - 1].name] if index > 0 else None
        inputs = rebalance_inputs(cfg, index, dict(consumed), {}, dict(PAPER_RESULTS[name]), previous, [])
        decisions.append(Decision(cfg, inputs, dict(cfgs[index + 1].mixture.weights), MIXTURES[index + 1]))
    return decisions


def record(decisions: list[Decision], proposals: list[Proposal], tracker: Tracker) -> tuple[str, list[str]]:
    """A pipeline run with one stage run per decision, as a pipeline run records them: the
    stage's metrics, `rebalance/inputs.json` and `rebalance/proposal.json` (what `smollm
    rebalance --run` reads), and the authors' next mixture (`paper/next_mixture.json`)."""
    cfg = decisions[0].cfg
    pipeline_run = start_config_run(tracker, cfg, f"{PIPELINE}-paper", "pipeline", parent_run_id=None, flow_run_id=None)
    stage_runs = []
    for index, (decision, proposal) in enumerate(zip(decisions, proposals, strict=True)):
        inputs = decision.inputs
        run_id = start_config_run(
            tracker, decision.cfg, f"{PIPELINE}-{inputs.stage}", "stage", parent_run_id=pipeline_run, flow_run_id=None
        )
        tokens_seen = sum(stage.train_tokens for stage in cfg.pipeline.stages[: index + 1])
        tracker.log_metrics(run_id, {EVAL_PREFIX + k: v for k, v in inputs.metrics.items()}, step=tokens_seen)
        record_proposal(tracker, run_id, inputs, proposal, f"{PIPELINE}-{inputs.next_stage}-paper", decision.cfg)
        authors = {"name": decision.authors_next_name, "weights": decision.authors_next}
        tracker.log_dict(run_id, authors, "paper/next_mixture.json")
        tracker.end_run(run_id)
        stage_runs.append(run_id)
    tracker.end_run(pipeline_run)
    tracker.flush()
    return pipeline_run, stage_runs


AUTHORS_CHOICES = {
    # what the authors changed for each stage (RECIPE.md's stage table)
    "stage2": "code 10% -> 20% (StarCoderData), OpenWebMath brought in at 5%, web 90% -> 75% "
    "(FineWeb-Edu / DCLM kept at 60 / 40)",
    "stage3": "StarCoderData replaced by Stack-Edu (16%), InfiMM-WebMath brought in (math ~10% with OWM), "
    "web 74% with the ratio flipped to 40 / 60",
    "stage4": "the anneal: FineMath-4+, InfiWebMath-3+ and a little OWM (math 14%), Stack-Edu 24%, "
    "Cosmopedia v2 4%, web 58% (40 / 60)",
}
COLUMNS = ["category/knowledge", "category/math", "category/code", "category/generative", "mmlu_mcf/acc_norm"]


def domain_shares(cfg: RunConfig, weights: dict[str, float]) -> dict[str, float]:
    shares: dict[str, float] = {}
    for name, weight in weights.items():
        domain = cfg.data.sources[name].domain
        shares[domain] = shares.get(domain, 0.0) + weight
    return shares


def percent(value: float) -> str:
    return f"{100 * value:.1f}" if value > 5e-4 else "—"


def results_table() -> list[str]:
    lines = ["| stage | " + " | ".join(c.removeprefix("category/") for c in COLUMNS) + " |"]
    lines.append("|---|" + "---:|" * len(COLUMNS))
    for stage, metrics in PAPER_RESULTS.items():
        cells = [f"{100 * metrics[c]:.2f}" if c in metrics else "not recorded" for c in COLUMNS]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    return lines


def decision_markdown(decision: Decision, proposal: Proposal) -> list[str]:
    """One decision: per source and per domain, the stage's mixture, the proposal, the authors'."""
    inputs, cfg = decision.inputs, decision.cfg
    phase = "the LR decays" if inputs.next_decay_fraction else "the LR holds"
    lines = [
        f"## After {inputs.stage}: the mixture for {inputs.next_stage}",
        "",
        f"{inputs.next_stage}: {inputs.constraints.next_stage_tokens / 1e12:g}T tokens, {phase}. "
        f"The authors: {AUTHORS_CHOICES[inputs.next_stage]}.",
        "",
        f"| weight (%) | {inputs.stage} | proposal | {inputs.next_stage}, the authors' | proposal − authors |",
        "|---|---:|---:|---:|---:|",
    ]
    names = sorted(set(inputs.mixture) | set(proposal.weights) | set(decision.authors_next))
    mixtures = (inputs.mixture, proposal.weights, decision.authors_next)
    rows = [(name, *(m.get(name, 0.0) for m in mixtures)) for name in names]
    shares = [domain_shares(cfg, m) for m in mixtures]
    rows += [(f"*{d}*", *(s.get(d, 0.0) for s in shares)) for d in sorted(set().union(*shares))]
    for name, before, proposed, authors in rows:
        diff = f"{100 * (proposed - authors):+.1f}" if abs(proposed - authors) >= 5e-4 else "0"
        lines.append(f"| {name} | {percent(before)} | {percent(proposed)} | {percent(authors)} | {diff} |")
    apart = [f"{n} {100 * (p - a):+.1f}" for n, _, p, a in rows if not n.startswith("*") and abs(p - a) >= 0.01]
    verdict = "Apart by a point or more: " + ", ".join(apart) + "." if apart else "Every source within a point."
    return [*lines, "", verdict, "", "Why (smollm2_rules):", "", *(f"- {line}" for line in proposal.explanation)]


def report(decisions: list[Decision], proposals: list[Proposal]) -> str:
    """The whole comparison as markdown (docs/recipe_replay.md)."""
    lines = [
        "# The paper's decisions, replayed through `smollm2_rules`",
        "",
        "Generated by `scripts/recipe_replay.py`: `.venv/bin/python scripts/recipe_replay.py >",
        "docs/recipe_replay.md`. The rules are `conf/rebalance/smollm2_rules.yaml`; README.md,",
        '"The SmolLM2 recipe", reads the comparison.',
        "",
        "Each decision reads what the rebalance of `pipeline=smollm2_1.7b_auto` reads after a stage:",
        "the paper's results for the stage and the one before (below, in %; recorded as fractions),",
        "the mixture the authors trained the stage on (`conf/mixture/smollm2_stage*.yaml`), the tokens",
        "each source had consumed under the authors' mixtures and its epoch cap (`conf/data/source/`),",
        "`max_change` 0.2. The inputs are recorded as stage runs in an MLflow store, as a pipeline run",
        "records them, so `smollm rebalance --run <stage run>` re-decides each one. The proposal is",
        "then set beside the mixture the authors chose for the next stage. Results a stage's record",
        "lacks are left out; the rules on them skip (`if_missing: skip`) and say so.",
        "",
        *results_table(),
        "",
        "The categories are the paper's averages (its knowledge/reasoning, math, code and generative",
        "groups), not recomputed with `eval=smollm2_base`, whose groups differ (it has no code tasks).",
    ]
    for decision, proposal in zip(decisions, proposals, strict=True):
        lines += ["", *decision_markdown(decision, proposal)]
    lines += ["", "## Domain shares, decision by decision (%)", ""]
    lines += ["| next stage | domain | the authors' | proposal | proposal − authors |", "|---|---|---:|---:|---:|"]
    for decision, proposal in zip(decisions, proposals, strict=True):
        authors = domain_shares(decision.cfg, decision.authors_next)
        proposed = domain_shares(decision.cfg, proposal.weights)
        for domain in sorted(set(authors) | set(proposed)):
            a, p = authors.get(domain, 0.0), proposed.get(domain, 0.0)
            stage = decision.inputs.next_stage
            diff = f"{100 * (p - a):+.1f}" if abs(p - a) >= 5e-4 else "0"
            lines.append(f"| {stage} | {domain} | {percent(a)} | {percent(p)} | {diff} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, help="where the MLflow store goes (default: a new temp dir, kept)")
    args = parser.parse_args(argv)
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="recipe-replay-"))).resolve()
    decisions = paper_decisions(workdir)
    proposals = [propose(d.cfg.rebalance, d.inputs) for d in decisions]
    tracker = make_tracker(decisions[0].cfg.tracking, workdir)  # SQLite in the work dir
    pipeline_run, stage_runs = record(decisions, proposals, tracker)
    sys.stdout.write(report(decisions, proposals))
    print(f"MLflow store: {workdir / 'mlflow.db'}; pipeline run {pipeline_run}", file=sys.stderr)
    for decision, run_id in zip(decisions, stage_runs, strict=True):
        print(f"  {decision.inputs.stage}: smollm rebalance --run {run_id} workdir={workdir}", file=sys.stderr)
    print(f"  all: smollm replay --run {pipeline_run} workdir={workdir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
