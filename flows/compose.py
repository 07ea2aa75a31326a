"""Compose Hydra configs into typed `RunConfig`s: the only place that touches Hydra.

The generated-config folder (`<workdir>/generated_conf`, where rebalancing writes mixtures) is
put on Hydra's search path, so `mixture=<generated name>` composes like a hand-written one.

    >>> from flows.compose import compose
    >>> cfg = compose(["pipeline=demo", "train.seed=3"])
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

from smollm.config import RunConfig, load_run_config

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def generated_dir(workdir: str | Path) -> Path:
    return Path(workdir).resolve() / "generated_conf"


def _workdir_of(overrides: Sequence[str]) -> str:
    for override in overrides:
        if override.startswith("workdir="):
            return override.split("=", 1)[1]
    return os.environ.get("SMOLLM_WORKDIR", "work")


def normalise_override(override: str) -> str:
    """`a.b=v` -> `++a.b=v`: every schema field can be set even when its YAML omits it.

    Safe because the schema rejects unknown fields; group choices (`model=x`) and explicit
    `+`/`++`/`~` overrides are left as they are.
    """
    key = override.split("=", 1)[0]
    if "=" in override and "." in key and not key.startswith(("+", "~", "hydra.")):
        return "++" + override
    return override


def compose_dict(overrides: Sequence[str] = (), config_name: str = "config") -> dict:
    """The composed config as a plain, resolved dict (a fresh copy on every call)."""
    search = generated_dir(_workdir_of(overrides))
    search.mkdir(parents=True, exist_ok=True)
    key = (tuple(overrides), config_name, _files_fingerprint(CONF_DIR, search), os.environ.get("SMOLLM_WORKDIR"))
    return json.loads(_compose_json(*key, search=search))


def _files_fingerprint(*roots: Path) -> str:
    """Path, mtime and size of every YAML file the composition can read."""
    digest = hashlib.sha256()
    for root in roots:
        for path in sorted(root.rglob("*.yaml")):
            stat = path.stat()
            digest.update(f"{path}:{stat.st_mtime_ns}:{stat.st_size}".encode())
    return digest.hexdigest()


@functools.lru_cache(maxsize=128)
def _compose_json(
    overrides: tuple[str, ...], config_name: str, fingerprint: str, env_workdir: str | None, *, search: Path
) -> str:
    """Hydra composition, memoised on everything it depends on (~0.3 s per call otherwise)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONF_DIR)):
        cfg = hydra_compose(
            config_name=config_name,
            overrides=[*map(normalise_override, overrides), f"hydra.searchpath=[file://{search}]"],
        )
    data = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(data, dict)
    data.pop("hydra", None)
    data["workdir"] = str(Path(data["workdir"]).resolve())
    return json.dumps(data)


def compose(overrides: Sequence[str] = (), config_name: str = "config") -> RunConfig:
    """Compose and validate: a bad value fails here, with its field and value, before any compute."""
    return load_run_config(compose_dict(overrides, config_name))


def compose_stage(overrides: Sequence[str], stage_index: int, mixture: str) -> RunConfig:
    """The config of one pipeline stage: the user's overrides plus that stage's mixture."""
    cfg = compose([*overrides, f"mixture={mixture}"])
    if not 0 <= stage_index < len(cfg.pipeline.stages):
        raise ValueError(f"stage_index: must be in [0, {len(cfg.pipeline.stages)}), got {stage_index}")
    return cfg
