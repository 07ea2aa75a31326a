"""The eval-drift guard: a score compared across stages must come from the same evaluation.

A rule on a metric's change (`change: true`) subtracts the previous stage's value from this
stage's. That difference means something only if both stages evaluated the tasks behind the
metric alike; each evaluation's suite fingerprint (`smollm.evaluation.fingerprint`) says how.
For every such rule, the tasks its metric reads (`<task>/<metric>`: that task; `category/<c>`,
`sweep/.../<c>`: the tasks averaged into category c, in either stage's suite) are compared field
by field, and the first change is refused in one line:

    rebalance: task hellaswag_cf changed between stage1 and stage2 (num_fewshot: 0 -> 5), read
    by rule knowledge_regressed (category/knowledge); set rebalance.accept_eval_drift=true to
    compare anyway

With `rebalance.accept_eval_drift: true` the rebalance proceeds and each change becomes a line
of the proposal's explanation and of its record (`Proposal.eval_drift`). The same check runs in
`smollm plan` (and so before a pipeline starts), on the fingerprints the stages' configs give.
Other policies compare runs of one stage, never across stages, and are not checked.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from smollm.config import RebalanceConfig, RuleConfig
from smollm.evaluation.fingerprint import SuiteFingerprint
from smollm.rebalance.inputs import RebalanceInputs
from smollm.schema import ConfigError

ACCEPT = "rebalance.accept_eval_drift"


class EvalDrift(ConfigError):
    """A rebalance would compare scores of two stages whose evaluations differ."""


@dataclass(frozen=True)
class Drift:
    """The first difference of one task a rule reads, between the previous stage and this one."""

    rule: str
    metric: str
    task: str
    field: str
    old: Any
    new: Any

    def text(self, before: str, after: str) -> str:
        return (
            f"task {self.task} changed between {before} and {after} ({self.field}: {_short(self.old)} -> "
            f"{_short(self.new)}), read by rule {self.rule} ({self.metric})"
        )


def _short(value: Any, width: int = 48) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def read_tasks(metric: str, fingerprint: SuiteFingerprint) -> set[str]:
    """The tasks of a suite that `metric` (a rule's, without `eval/`) is computed from."""
    head = metric.split("/", 1)[0]
    if head in ("category", "sweep"):  # category/<c>, sweep/<member>/score|delta/<c>
        category = metric.rsplit("/", 1)[-1]
        return {name for name, task in fingerprint.tasks.items() if task.averaged and task.category == category}
    return {head} & set(fingerprint.tasks)


def first_change(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> tuple[str, Any, Any] | None:
    """The first field (in `SuiteFingerprint.compared` order, into nested dicts: `items.seed`)
    whose value differs; `suite` when the task is in one suite only."""
    if old is None or new is None:
        if old is new:
            return None
        return "suite", "absent" if old is None else "present", "absent" if new is None else "present"
    for key in [*new, *(k for k in old if k not in new)]:
        before, after = old.get(key), new.get(key)
        if before == after:
            continue
        if isinstance(before, Mapping) and isinstance(after, Mapping):
            inner = first_change(before, after)
            if inner is not None:
                return f"{key}.{inner[0]}", inner[1], inner[2]
        return key, before, after
    return None


def drifts(rules: Sequence[RuleConfig], before: SuiteFingerprint, after: SuiteFingerprint) -> list[Drift]:
    """For each rule on a change, the first difference of each task it reads, by task name."""
    found = []
    for rule in rules:
        if not rule.change:
            continue
        if rule.metric.startswith(("category/", "sweep/")):  # a task joining or leaving the average counts
            tasks = read_tasks(rule.metric, before) | read_tasks(rule.metric, after)
        else:  # a task's own metric: one absent from a stage has no value to compare
            tasks = read_tasks(rule.metric, before) & read_tasks(rule.metric, after)
        for task in sorted(tasks):
            change = first_change(before.compared(task), after.compared(task))
            if change is not None:
                found.append(Drift(rule.name, rule.metric, task, *change))
    return found


def refusal(drift: Drift, before: str, after: str) -> str:
    return f"rebalance: {drift.text(before, after)}; set {ACCEPT}=true to compare anyway"


def check_drift(config: RebalanceConfig, found: list[Drift], before: str, after: str) -> list[str]:
    """Refuse the first drift (`EvalDrift`) unless `config.accept_eval_drift`; the lines that
    record what was accepted."""
    if found and not config.accept_eval_drift:
        raise EvalDrift(refusal(found[0], before, after))
    return [f"eval drift accepted ({ACCEPT}=true): {d.text(before, after)}" for d in found]


def comparing_rules(config: RebalanceConfig, has_previous: Callable[[str], bool]) -> list[RuleConfig]:
    """The rules that compare across stages: `change: true`, under the `rules` policy, on a
    metric the previous stage has a value of (`has_previous(metric)`)."""
    if config.policy != "rules":
        return []
    return [r for r in config.rules if r.change and has_previous(r.metric)]


def planned_drift(config: RebalanceConfig, before: SuiteFingerprint, after: SuiteFingerprint) -> list[Drift]:
    """What the rebalance after a stage would find, known from the configs alone: a metric has a
    previous value where the previous suite computes it (a sweep's: assumed)."""
    rules = comparing_rules(config, lambda metric: metric.startswith("sweep/") or bool(read_tasks(metric, before)))
    return drifts(rules, before, after)


def check_inputs(config: RebalanceConfig, inputs: RebalanceInputs) -> list[str]:
    """`check_drift` between the inputs' two evaluations, for the rules that compare them; not
    checked where either fingerprint was not recorded (inputs recorded before fingerprints)."""
    if inputs.fingerprint is None or inputs.previous_fingerprint is None:
        return []
    previous = inputs.previous_metrics or {}
    rules = comparing_rules(config, lambda metric: metric in previous)
    found = drifts(rules, inputs.previous_fingerprint, inputs.fingerprint)
    return check_drift(config, found, inputs.previous_stage or "the previous stage", inputs.stage)
