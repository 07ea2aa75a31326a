"""Hydra overrides from the UI (or any API caller) are untrusted: check them before composing.

Someone who can trigger a deployment gets to run the project's code, not arbitrary code, and
only on the work directory. So each extra override must:

- set a key on the allow-list (`ALLOWED`: training, model shape, evaluation, rebalancing,
  sweeps' sizes, the stages' budgets, a source's size, ...), or pick a config of an allowed
  group that exists (`model=smollm2_135m`);
- not name `_target_` (Hydra would instantiate any callable), `hydra.*` or a package
  (`x@hydra=`), and not delete keys (`~x`);
- not use an interpolation (`${oc.env:SECRET}` would copy a secret into the run's parameters);
- not name a path outside the work directory (an absolute path elsewhere, `~`, `..`, `file:`).

A rejected override raises `ConfigError` naming it, before anything is composed or computed.

    >>> check_overrides(["hydra.run.dir=/etc"], "work")
    Traceback (most recent call last):
    smollm.schema.ConfigError: overrides[0]: 'hydra.run.dir=/etc' is rejected: hydra.* may not be set from a run's parameters
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from flows.compose import parse_override
from smollm.schema import ConfigError

GROUPS = ("model", "mixture", "train", "eval", "rebalance", "anneal", "ablate", "plan")
"""Config groups a run may pick another config of (by name, from `conf/` or generated configs)."""

ALLOWED = (
    "model.*",
    "train.*",
    "eval.*",
    "rebalance.*",
    "anneal.*",
    "ablate.*",
    "plan.*",
    "mixture.weights.*",
    "pipeline.stages.*.train_tokens",
    "pipeline.stages.*.decay_fraction",
    "pipeline.stages.*.init_at_tokens",
    "pipeline.stages.*.anneal",
    "pipeline.stages.*.anneal.*",
    "pipeline.stages.*.ablate",
    "pipeline.stages.*.ablate.*",
    "sweep.max_concurrency",
    "sweep.threads_per_member",
    "tokenizer.vocab_size",
    "tokenizer.train_bytes_per_source",
    "data.sources.*.num_docs",
    "data.sources.*.heldout_docs",
)
"""Dotted keys a run may set (`*` is one or more key parts). Not on it, among others: `workdir`,
`tracking.*` (where results go), `sweep.launcher` (where code runs), `data.sources.*.path`,
`tokenizer.path`, a stage's `overrides` (a second, unchecked override list)."""

NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def _pattern(allowed: str) -> re.Pattern[str]:
    parts = [r"[^.]+(\.[^.]+)*" if part == "*" else re.escape(part) for part in allowed.split(".")]
    return re.compile(r"^" + r"\.".join(parts) + r"$")


_ALLOWED = [_pattern(a) for a in ALLOWED]


def check_overrides(overrides: Sequence[str], workdir: str | Path, conf_dirs: Iterable[Path] = ()) -> list[str]:
    """`overrides` unchanged if every one is allowed; else `ConfigError` naming the first that is not.

    `conf_dirs`: folders whose `<group>/<name>.yaml` files are the configs a group choice may pick.
    """
    folders = list(conf_dirs)
    for index, text in enumerate(overrides):
        if not isinstance(text, str):
            raise ConfigError(f"overrides[{index}]: must be a string 'key=value', got {text!r}")
        try:
            override = parse_override(text)
        except ConfigError as err:
            raise ConfigError(f"overrides[{index}]: {err}") from None
        reason = _reason(override, Path(workdir).resolve(), folders)
        if reason:
            raise ConfigError(f"overrides[{index}]: {text!r} is rejected: {reason}")
    return list(overrides)


def _reason(override: Any, workdir: Path, folders: list[Path]) -> str | None:
    key: str = override.key_or_group
    if "_target_" in key or any("_target_" in s for s in _strings(override.value())):
        return "_target_ may not be set from a run's parameters"
    if key == "hydra" or key.startswith(("hydra.", "hydra/")) or override.package is not None:
        return "hydra.* may not be set from a run's parameters"
    if override.is_delete():
        return "deleting a key (~) is not allowed"
    if override.is_sweep_override():
        return "a sweep (a,b or choice/range) is not allowed in one run; use the sweep deployment"
    for value in _strings(override.value()):
        if "${" in value:
            return "interpolations (${...}) are not allowed"
        if _outside(value, workdir):
            return f"{value!r} is a path outside the work directory {workdir}"
    if "." not in key and "/" not in key:
        if key not in GROUPS:
            return f"{key!r} is not a config group a run may choose (allowed: {', '.join(GROUPS)})"
        return _missing_config(key, override.value(), folders)
    if not any(p.match(key) for p in _ALLOWED):
        return f"{key!r} is not on the allow-list of keys a run may set (see flows/untrusted.py ALLOWED)"
    return None


def _missing_config(group: str, value: Any, folders: list[Path]) -> str | None:
    if not isinstance(value, str) or not NAME.match(value):
        return f"{value!r} is not a config name"
    if folders and not any((folder / group / f"{value}.yaml").is_file() for folder in folders):
        return f"there is no {group} config named {value!r}"
    return None


def _outside(value: str, workdir: Path) -> bool:
    if value.startswith(("~", "file:")) or ".." in Path(value).parts:
        return True
    if value.startswith("/"):
        return not Path(value).resolve().is_relative_to(workdir)
    return False


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(value, list | tuple):
        return [s for item in value for s in _strings(item)]
    return []
