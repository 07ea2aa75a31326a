"""Compose Hydra configs into typed `RunConfig`s: the only place that touches Hydra.

The generated-config folder (`<workdir>/generated_conf`, where rebalancing writes mixtures) is
put on Hydra's search path, so `mixture=<generated name>` composes like a hand-written one.
A mixture may `include` other mixtures at a share (e.g. 60% of the stage-4 mixture); they are
flattened here into plain weights. A stage's `overrides` are composed into that stage's config.

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
from smollm.schema import ConfigError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


ENV = ("SMOLLM_WORKDIR", "MLFLOW_TRACKING_URI")
"""Environment variables the configs read (`oc.env`): part of the composition cache's key."""


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
    search = generated_dir(_workdir_of(overrides))  # need not exist: nothing is written to compose
    env = tuple(os.environ.get(name) for name in ENV)
    key = (tuple(overrides), config_name, _files_fingerprint(CONF_DIR, search), env)
    return json.loads(_compose_json(*key, search=search))


def _files_fingerprint(*roots: Path) -> str:
    """Path, mtime and size of every YAML file the composition can read."""
    digest = hashlib.sha256()
    for root in roots:
        for path in sorted(root.rglob("*.yaml")):
            stat = path.stat()
            digest.update(f"{path}:{stat.st_mtime_ns}:{stat.st_size}".encode())
    return digest.hexdigest()


def search_path(search: Path) -> list[str]:
    """The generated-config folder on Hydra's search path, once rebalancing has created it."""
    return [f"hydra.searchpath=[file://{search}]"] if search.is_dir() else []


def _initialise_hydra() -> None:
    """Initialise Hydra on `conf/` once per process (re-initialising costs ~0.15 s per compose)."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    hydra = GlobalHydra.instance()
    if hydra.is_initialized():
        if any(source.path == f"file://{CONF_DIR}" for source in hydra.config_loader().get_sources()):
            return
        hydra.clear()
    initialize_config_dir(config_dir=str(CONF_DIR))


@functools.lru_cache(maxsize=128)
def _compose_json(
    overrides: tuple[str, ...], config_name: str, fingerprint: str, env: tuple[str | None, ...], *, search: Path
) -> str:
    """Hydra composition, memoised on everything it depends on (~0.3 s per call otherwise)."""
    from hydra import compose as hydra_compose
    from omegaconf import OmegaConf

    _initialise_hydra()
    try:
        cfg = hydra_compose(
            config_name=config_name,
            overrides=[*map(normalise_override, overrides), *search_path(search)],
        )
        data = OmegaConf.to_container(cfg, resolve=True)
    except Exception as err:
        raise hydra_error(err, overrides) from None
    assert isinstance(data, dict)
    data.pop("hydra", None)
    data["workdir"] = str(Path(data["workdir"]).resolve())
    if isinstance(data.get("mixture"), dict):
        data["mixture"] = flatten_mixture(data["mixture"], (CONF_DIR / "mixture", search / "mixture"))
    return json.dumps(data)


def hydra_error(err: Exception, overrides: Sequence[str]) -> Exception:
    """Hydra's multi-line errors as one `ConfigError` line naming the group or the override."""
    import yaml
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException, MissingConfigException, OverrideParseException

    if isinstance(err, MissingConfigException) and err.missing_cfg_file and "/" in err.missing_cfg_file:
        group, name = err.missing_cfg_file.rsplit("/", 1)
        return ConfigError(f"{group}: no config named {name!r} (choices: {', '.join(err.options or [])})")
    if isinstance(err, OverrideParseException):
        for override in overrides:
            try:
                OverridesParser.create().parse_override(normalise_override(override))
            except HydraException as bad:
                reason = str(bad).splitlines()[-1] if str(bad).strip() else "cannot be parsed"
                return ConfigError(f"override {override!r}: {reason}")
    if isinstance(err, yaml.YAMLError):
        mark = getattr(err, "problem_mark", None)
        where = f"{mark.name}, line {mark.line + 1}" if mark else "a config file"
        return ConfigError(f"{where}: not valid YAML ({getattr(err, 'problem', None) or err})")
    if type(err).__module__.startswith(("hydra", "omegaconf")):
        key = getattr(err, "full_key", None)
        return ConfigError(f"{key + ': ' if key else ''}{str(err).strip().splitlines()[0]}")
    return err


def flatten_mixture(mixture: dict, folders: Sequence[Path], seen: tuple[str, ...] = ()) -> dict:
    """`weights` plus every `include`d mixture's weights times its share, as one weights dict."""
    include = mixture.pop("include", None) or {}
    name = mixture.get("name", "?")
    given = mixture.get("weights") or {}
    if not isinstance(given, dict):
        raise ConfigError(f"mixture.weights: must map each source to its weight (mixture {name}), got {given!r}")
    weights = dict(given)
    for other, share in include.items():
        if other in (*seen, name):
            raise ConfigError(f"mixture.include.{other}: includes itself (via {' -> '.join((*seen, name))})")
        path = next((folder / f"{other}.yaml" for folder in folders if (folder / f"{other}.yaml").is_file()), None)
        if path is None:
            raise ConfigError(f"mixture.include.{other}: no mixture of that name in {[str(f) for f in folders]}")
        if not isinstance(share, int | float) or not 0 < share <= 1:
            raise ConfigError(f"mixture.include.{other}: share must be in (0, 1], got {share!r}")
        included = flatten_mixture(_read_yaml(path), folders, (*seen, name))
        for source, weight in included["weights"].items():
            weights[source] = round(weights.get(source, 0.0) + share * weight, 12)
    return {**mixture, "weights": weights}


def _read_yaml(path: Path) -> dict:
    from omegaconf import OmegaConf

    data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    assert isinstance(data, dict)
    return data


def declared_sweep_params(overrides: Sequence[str] = (), config_name: str = "config") -> dict[str, str]:
    """The sweep axes a config declares under `hydra.sweeper.params` (e.g. a protocol's candidates)."""
    from hydra import compose as hydra_compose
    from omegaconf import OmegaConf

    _initialise_hydra()
    search = generated_dir(_workdir_of(overrides))
    cfg = hydra_compose(
        config_name=config_name,
        overrides=[*map(normalise_override, overrides), *search_path(search)],
        return_hydra_config=True,
    )
    params = OmegaConf.to_container(cfg.hydra.sweeper, resolve=False).get("params") or {}
    return {str(k): str(v) for k, v in params.items()}


def compose(overrides: Sequence[str] = (), config_name: str = "config") -> RunConfig:
    """Compose and validate: a bad value fails here, with its field and value, before any compute."""
    return load_run_config(compose_dict(overrides, config_name))


def compose_stage(overrides: Sequence[str], stage_index: int, mixture: str) -> RunConfig:
    """The config of one pipeline stage: the user's overrides, the stage's own, its mixture."""
    pipeline = compose(overrides).pipeline
    if not 0 <= stage_index < len(pipeline.stages):
        raise ValueError(f"stage_index: must be in [0, {len(pipeline.stages)}), got {stage_index}")
    stage = pipeline.stages[stage_index]
    try:
        return compose([*overrides, *stage.overrides, f"mixture={mixture}"])
    except ConfigError as err:
        raise ConfigError(f"pipeline.stages.{stage.name} (with its overrides): {err}") from None


def compose_pipeline(overrides: Sequence[str] = ()) -> list[RunConfig]:
    """Every stage's config, validated up front; a stage whose mixture a rebalance will write is
    composed with the mixture before it (the estimate; the real one exists once that ran)."""
    stages = compose(overrides).pipeline.stages
    configs: list[RunConfig] = []
    for index, stage in enumerate(stages):
        mixture = stage.mixture or configs[index - 1].mixture.name
        configs.append(compose_stage(overrides, index, mixture))
    return configs
