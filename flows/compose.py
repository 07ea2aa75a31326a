"""Hydra, behind one module: composition into typed `RunConfig`s, the pipeline's lineage,
multirun parsing (Hydra's own sweeper) and Hydra's launcher plugins for sweep members.

The generated-config folder (`<workdir>/generated_conf`, where rebalancing writes mixtures) is
put on Hydra's search path, so `mixture=<generated name>` composes like a hand-written one.
A mixture may `include` other mixtures at a share (e.g. 60% of the stage-4 mixture); they are
flattened here into plain weights. A stage's `overrides` are composed into that stage's config.

    >>> from flows.compose import compose, compose_lineage
    >>> cfg = compose(["pipeline=demo", "train.seed=3"])
    >>> stages = compose_lineage(["pipeline=demo"]).walk()   # each stage composed once
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from smollm.config import RunConfig, load_run_config
from smollm.lineage import Lineage
from smollm.rebalance import CONF_DIR as CONF_DIR  # re-exported: flows read configs from here
from smollm.rebalance import generated_dir as generated_dir
from smollm.runs import run_member_job
from smollm.schema import ConfigError
from smollm.sweep import MEMBER_KEYS

ENV = ("SMOLLM_WORKDIR", "MLFLOW_TRACKING_URI")
"""Environment variables the configs read (`oc.env`): part of the composition cache's key."""


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


def compose_stage(overrides: Sequence[str], top: RunConfig, index: int, mixture: str) -> RunConfig:
    """Stage `index` of the pipeline `top` (composed from `overrides`): the user's overrides,
    the stage's own, its mixture."""
    stage = top.pipeline.stages[index]
    try:
        return compose([*overrides, *stage.overrides, f"mixture={mixture}"])
    except ConfigError as err:
        raise ConfigError(f"pipeline.stages.{stage.name} (with its overrides): {err}") from None


def compose_lineage(overrides: Sequence[str] = ()) -> Lineage:
    """The pipeline's lineage: each stage composed once, when the lineage reaches it."""
    overrides = list(overrides)
    top = compose(overrides)
    return Lineage(top, lambda index, mixture: compose_stage(overrides, top, index, mixture), tuple(overrides))


# --- multirun ----------------------------------------------------------------------------------


def split_multirun(overrides: list[str], *, multirun: bool, kind: str) -> tuple[list[str], list[list[str]]]:
    """Hydra's sweep syntax -> (common overrides, one override list per member).

    Parsed by Hydra's override parser and expanded by its `BasicSweeper` (the cartesian product
    of every swept key, with the config's `hydra.sweeper.params` for keys not given here). The
    member settings (`MEMBER_KEYS`) are member axes even when they take a single value.
    """
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(overrides)
    except Exception as err:  # Hydra's OverrideParseException
        raise ConfigError(f"overrides: {str(err).splitlines()[0]}") from None
    swept = [o for o in parsed if o.is_sweep_override()]
    if swept and not multirun:
        raise ConfigError(f"{swept[0].input_line}: sweeps several values; add -m (--multirun)")
    common = [o.input_line for o in parsed if not o.is_sweep_override() and o.key_or_group not in MEMBER_KEYS]
    axes = [o for o in parsed if o.is_sweep_override() or o.key_or_group in MEMBER_KEYS]
    if multirun:
        given = {o.key_or_group for o in axes}
        declared = declared_sweep_params(common)
        extra = [f"{key}={value}" for key, value in declared.items() if key not in given]
        axes += parser.parse_overrides(extra)
    if not axes:
        return common, [[]]
    batches = BasicSweeper.split_arguments(axes, max_batch_size=None)
    members = [list(job) for batch in batches for job in batch]
    if kind == "anneal" and any(key.startswith("mixture") for job in members for key in job):
        raise ConfigError("mixture: an annealing sweep builds each member's mixture; sweep anneal.candidate instead")
    return common, members


def parse_override(text: str) -> Any:
    """One override, parsed by Hydra (`flows/untrusted.py` checks what it sets); `ConfigError` if
    it is not one."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        return OverridesParser.create().parse_override(text)
    except HydraException as err:
        raise ConfigError(f"{text!r} is not a Hydra override: {err}") from None


# --- Hydra launchers ---------------------------------------------------------------------------

LAUNCHER_GROUP = "hydra/launcher"


class MemberTask:
    """Hydra's task function: job number i runs member job i (`MemberJob`'s JSON form). A plain
    class, so submitit can pickle it (with the launcher) into each Slurm job."""

    def __init__(self, jobs: list[dict[str, Any]]) -> None:
        self.jobs = jobs

    def __call__(self, cfg: Any) -> dict[str, Any]:
        from hydra.core.hydra_config import HydraConfig

        return run_member_job(self.jobs[HydraConfig.get().job.num])


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def launcher_config(overrides: list[str], sweep_dir: Path, job_name: str):
    """The composed config with its `hydra` node, as a multirun's master config: our defaults
    (no chdir, no logging setup in the caller's process, the sweep dir) unless overridden."""
    from hydra import compose as hydra_compose

    given = {_key(o) for o in overrides}
    defaults = {
        "hydra.sweep.dir": f"'{sweep_dir}'",
        "hydra.job.name": job_name,
        "hydra.job.chdir": "false",
        "hydra/job_logging": "none",
        "hydra/hydra_logging": "none",
    }
    _initialise_hydra()
    return hydra_compose(
        config_name="config",
        overrides=[
            *map(normalise_override, overrides),
            *(f"{k}={v}" for k, v in defaults.items() if k not in given),
            *search_path(generated_dir(_workdir_of(overrides))),
        ],
        return_hydra_config=True,
    )


def hydra_launch(
    overrides: list[str], jobs: dict[str, dict[str, Any]], sweep_dir: Path, job_name: str
) -> dict[str, dict[str, Any]]:
    """Every member job (JSON) as one job of the Hydra launcher `overrides` select; their results
    (JSON) by name. Job folders go to `sweep_dir` unless `hydra.sweep.dir` is given."""
    from hydra._internal.callbacks import Callbacks
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.plugins import Plugins
    from hydra.core.utils import JobStatus
    from hydra.types import HydraContext
    from omegaconf import OmegaConf

    names = list(jobs)
    cfg = launcher_config(overrides, sweep_dir, job_name)
    choice = cfg.hydra.runtime.choices.get(LAUNCHER_GROUP)
    context = HydraContext(config_loader=GlobalHydra.instance().config_loader(), callbacks=Callbacks(cfg))
    launcher = Plugins.instance().instantiate_launcher(
        hydra_context=context, task_function=MemberTask([jobs[n] for n in names]), config=cfg
    )
    task_overrides = list(OmegaConf.to_container(cfg.hydra.overrides.task))
    per_job = [[*task_overrides, *map(normalise_override, jobs[n]["overrides"])] for n in names]
    print(f"{len(names)} members to Hydra's {choice} launcher; job folders in {cfg.hydra.sweep.dir}")
    try:
        returns = launcher.launch(per_job, initial_job_idx=0)
    except Exception as err:  # e.g. submitit's UncompletedJobError: the job itself died
        raise RuntimeError(f"Hydra's {choice} launcher failed on {names}: {err}") from err
    failed = {n: r._return_value for n, r in zip(names, returns, strict=True) if r.status != JobStatus.COMPLETED}
    if failed:  # the members that completed are complete steps: a relaunch reuses them
        errors = "; ".join(f"sweep member {n}: its {choice} job failed: {e!r}" for n, e in failed.items())
        raise RuntimeError(errors) from next(iter(failed.values()))
    return {name: ret.return_value for name, ret in zip(names, returns, strict=True)}
