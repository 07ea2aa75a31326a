"""Sweeps of annealing runs and data ablations: members, their mixtures, and the summary.

A sweep is a list of members, each a list of Hydra overrides on top of the sweep's common ones
(`anneal.candidate=synthetic_math anneal.share=0.6 train.seed=1`). Whether they come from the
CLI's multirun or from the Prefect flow's typed parameters, they are put in one canonical form
here, so both launch the same members with the same step identities. A control member
(`<kind>.candidate=null`) is added for every combination of the other swept values.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Kind = Literal["anneal", "ablate"]
KINDS: tuple[str, ...] = ("anneal", "ablate")
CONTROL = "control"
MEMBER_KEYS = ("anneal.candidate", "anneal.share", "ablate.candidate", "train.seed")
"""Settings that make one member differ from another: never part of a sweep's common overrides."""


@dataclass(frozen=True)
class Member:
    """One run of a sweep: its overrides (sorted by key) and a readable name."""

    kind: str
    overrides: tuple[str, ...]

    @property
    def values(self) -> dict[str, str]:
        return dict(o.split("=", 1) for o in self.overrides)

    @property
    def candidate(self) -> str | None:
        value = self.values.get(f"{self.kind}.candidate", "null")
        return None if value == "null" else value

    @property
    def is_control(self) -> bool:
        return self.candidate is None

    @property
    def group(self) -> tuple[str, ...]:
        """The swept values other than the candidate (and its share): members of one group
        compare against the same control."""
        own = (f"{self.kind}.candidate", "anneal.share")
        return tuple(o for o in self.overrides if o.split("=", 1)[0] not in own)

    @property
    def name(self) -> str:
        values = self.values
        label = CONTROL if self.candidate is None else _label(self.candidate)
        parts = [self.kind, label]
        if self.kind == "anneal" and self.candidate is not None and "anneal.share" in values:
            parts.append(values["anneal.share"])
        parts += [f"{k.rsplit('.', 1)[-1]}{v}" for k, v in values.items() if k.endswith("train.seed")]
        parts += [_label(o) for o in self.group if not o.split("=", 1)[0].endswith("train.seed")]
        return "-".join(parts)


def _label(value: str) -> str:
    """`[a,b]` -> `a+b`; anything path-hostile becomes `_`."""
    text = value.strip("[]").replace(",", "+").replace("=", "_").replace("/", "_").replace(" ", "")
    return text.replace("'", "").replace('"', "")


def canonical(override: str) -> str:
    """`++anneal.share=0.60` -> `anneal.share=0.6`: one spelling per member setting."""
    key, value = override.split("=", 1)
    key = key.lstrip("+")
    try:
        number = float(value)
    except ValueError:
        return f"{key}={value.strip()}"
    if "." in value or "e" in value.lower():
        return f"{key}={number:g}"
    return f"{key}={value.strip()}"


def make_member(kind: str, overrides: Iterable[str]) -> Member:
    if kind not in KINDS:
        raise ValueError(f"kind: must be one of {list(KINDS)}, got {kind!r}")
    by_key = {}
    for override in map(canonical, overrides):
        by_key[override.split("=", 1)[0]] = override
    if by_key.get(f"{kind}.candidate", f"{kind}.candidate=null") == f"{kind}.candidate=null":
        by_key.pop(f"{kind}.candidate", None)
        by_key.pop("anneal.share", None)  # the control's mixture has no candidate share
        by_key[f"{kind}.candidate"] = f"{kind}.candidate=null"
    return Member(kind, tuple(by_key[k] for k in sorted(by_key)))


def with_controls(kind: str, member_overrides: Sequence[Sequence[str]], *, control: bool = True) -> list[Member]:
    """The members in canonical form, duplicates dropped, controls first (one per group)."""
    members = list(dict.fromkeys(make_member(kind, o) for o in member_overrides))
    if control:
        controls = [make_member(kind, m.group) for m in members]
        members = list(dict.fromkeys([*controls, *members]))
    return members


def typed_member_overrides(
    kind: str, candidates: Sequence[str], shares: Sequence[float] = (), seeds: Sequence[int] = ()
) -> list[list[str]]:
    """The Prefect flow's typed parameters as member overrides (their cartesian product)."""
    rows: list[list[str]] = [[f"{kind}.candidate={c}"] for c in candidates]
    if kind == "anneal" and shares:
        rows = [[*row, f"anneal.share={s}"] for row in rows for s in shares]
    if seeds:
        rows = [[*row, f"train.seed={s}"] for row in rows for s in seeds]
    return rows


def anneal_weights(previous: Mapping[str, float], candidates: Sequence[str], share: float) -> dict[str, float]:
    """`share` of the candidate source(s), split equally, plus `1 - share` of `previous`."""
    if not candidates:
        return dict(previous)
    weights = {name: (1 - share) * weight for name, weight in previous.items()}
    for name in candidates:
        weights[name] = weights.get(name, 0.0) + share / len(candidates)
    return {name: round(weight, 12) for name, weight in sorted(weights.items()) if weight > 0}


def sweep_id(kind: str, identities: Iterable[str]) -> str:
    """The same members -> the same sweep folder."""
    return f"{kind}-" + hashlib.sha256("|".join(sorted(identities)).encode()).hexdigest()[:12]


def category_scores(metrics: Mapping[str, float], prefix: str = "eval/category/") -> dict[str, float]:
    return {k[len(prefix) :]: v for k, v in sorted(metrics.items()) if k.startswith(prefix)}


def summary_rows(
    members: Sequence[Member], metrics: Mapping[str, Mapping[str, float]], tokens: Mapping[str, Mapping[str, int]]
) -> list[dict[str, Any]]:
    """One row per member: its category scores, their deltas vs its group's control, tokens per source.

    `metrics[name]` are the member's MLflow metrics (`eval/category/<c>`), `tokens[name]` the
    tokens it trained on per source.
    """
    controls = {m.group: m.name for m in members if m.is_control}
    rows = []
    for member in members:
        scores = category_scores(metrics[member.name])
        row: dict[str, Any] = {"member": member.name, "candidate": member.candidate or CONTROL}
        row.update({f"score/{c}": v for c, v in scores.items()})
        control = controls.get(member.group)
        if control is not None:
            base = category_scores(metrics[control])
            row.update({f"delta/{c}": v - base[c] for c, v in scores.items() if c in base})
        bpb = category_scores(metrics[member.name], prefix="eval/bpb/")
        row.update({f"bpb/{c}": v for c, v in bpb.items()})
        if control is not None:
            base_bpb = category_scores(metrics[control], prefix="eval/bpb/")
            row.update({f"delta_bpb/{c}": v - base_bpb[c] for c, v in bpb.items() if c in base_bpb})
        row.update({f"tokens/{s}": n for s, n in sorted(tokens[member.name].items())})
        rows.append(row)
    return rows


def member_records(
    members: Sequence[Member],
    metrics: Mapping[str, Mapping[str, float]],
    mixtures: Mapping[str, Mapping[str, float]],
    settings: Mapping[str, Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """What a rebalancing policy reads of each member (`smollm.rebalance.SweepRun`): its candidates,
    the mixture it trained on, its category scores, its control; `settings[name]` holds its
    `share` (annealing candidates) and `seed`."""
    controls = {m.group: m.name for m in members if m.is_control}
    records = []
    for member in members:
        candidate = member.candidate
        candidates = [] if candidate is None else candidate.strip("[]").replace(" ", "").split(",")
        records.append(
            {
                "name": member.name,
                "kind": member.kind,
                "candidates": candidates,
                "weights": dict(sorted(mixtures[member.name].items())),
                "scores": category_scores(metrics[member.name]),
                "bpb": category_scores(metrics[member.name], prefix="eval/bpb/"),
                "control": None if member.is_control else controls.get(member.group),
                "share": settings[member.name].get("share") if candidate and member.kind == "anneal" else None,
                "seed": int(settings[member.name].get("seed", 0)),
            }
        )
    return records


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The summary as a Markdown table (scores and deltas with 4 decimals)."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = []
        for column in columns:
            value = row.get(column, "")
            if isinstance(value, float):
                value = f"{value:+.4f}" if column.startswith(("delta/", "delta_bpb/")) else f"{value:.4f}"
            cells.append(str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_deltas(rows: Sequence[Mapping[str, Any]], path: Path, title: str) -> Path | None:
    """A grouped bar chart of each non-control member's delta per category; None if no deltas."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    members = [r for r in rows if r["candidate"] != CONTROL and any(k.startswith("delta/") for k in r)]
    categories = sorted({k.split("/", 1)[1] for r in members for k in r if k.startswith("delta/")})
    if not members or not categories:
        return None
    width = 0.8 / len(members)
    fig, ax = plt.subplots(figsize=(1.5 + 1.2 * len(categories) * max(1, len(members) / 2), 4))
    for i, row in enumerate(members):
        xs = [c + (i - (len(members) - 1) / 2) * width for c in range(len(categories))]
        ax.bar(xs, [row.get(f"delta/{c}", 0.0) for c in categories], width, label=row["member"])
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(categories)), categories)
    ax.set_ylabel("score - control")
    ax.set_title(title)
    ax.legend(fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
