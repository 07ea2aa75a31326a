"""Count Hydra compositions during ONE tiny pipeline run end to end, under Prefect's test harness.

Runs the demo pipeline at the test suite's tiny sizes (`tiny_overrides` of the checkout's
tests/conftest.py; a fresh temporary work dir) with real steps (BPE training, tokenization, a small
model that trains, evaluation, an SQLite MLflow store, Prefect flow runs), and counts:

  (i)  calls of Hydra's own `hydra.compose` (patched on the `hydra` package and on the
       `hydra.compose` module, so `from hydra import compose` inside a function counts);
  (ii) calls into the project's composition entry points: every public function of
       `flows.compose` whose name starts with `compose`, wrapped on that module and wherever it
       was already imported by name into a `flows.*`/`tasks.*`/`smollm.*` module. Nested calls
       (`compose_stage` calling `compose`) count too; "outermost" counts only the calls not made
       from inside another counted one on the same thread.

Then prints both counts and the wall time. It uses the checkout it is run from (that folder goes
first on `sys.path`, ahead of any editable install), so it works on any checkout of the project:

    cd <repo root> && python scripts/count_compose.py [repo root] [--via auto|flow|cli]

`--via flow` calls `flows.pipeline.pipeline_flow(overrides=...)` inside
`flows.runtime.embedded_settings()`; `--via cli` calls `flows.cli.main(["run", ...])`; `auto`
(the default) tries the flow and falls back to the CLI when those modules are not there.
`--compose-module` names another module of composition entry points, should it move.
It takes a few minutes (real training of a tiny model).
"""

from __future__ import annotations

import os

ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "MLFLOW_ENABLE_TELEMETRY": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_LOGGING_LEVEL": "WARNING",
}
os.environ.update(ENV)  # before anything imports prefect

import argparse  # noqa: E402
import collections  # noqa: E402
import functools  # noqa: E402
import importlib  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

PROJECT_PREFIXES = ("flows.", "tasks.", "smollm.")


class Counter:
    """Thread-safe call counts, with a per-thread depth to tell outermost calls from nested ones."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: collections.Counter[str] = collections.Counter()
        self.outermost: collections.Counter[str] = collections.Counter()
        self.local = threading.local()

    def wrap(self, name: str, original):
        self.calls[name] = self.outermost[name] = 0  # listed even when never called

        @functools.wraps(original)
        def counted(*args, **kwargs):
            depth = getattr(self.local, "depth", 0)
            with self.lock:
                self.calls[name] += 1
                if depth == 0:
                    self.outermost[name] += 1
            self.local.depth = depth + 1
            try:
                return original(*args, **kwargs)
            finally:
                self.local.depth = depth

        counted.__wrapped_original__ = original
        return counted


def patch_hydra(counter: Counter) -> None:
    """`hydra.compose` (the package attribute) and `hydra.compose.compose` (the module's) -> one wrapper."""
    import hydra

    module = sys.modules["hydra.compose"]
    original = module.compose
    wrapper = counter.wrap("hydra.compose", original)
    wrapper.compose = wrapper  # `import hydra.compose; hydra.compose.compose(...)` still resolves
    module.compose = wrapper
    hydra.compose = wrapper


def patch_project(counter: Counter, module_name: str) -> dict[int, object]:
    """Wrap `<module>.compose*` on the module; returns {id(original): wrapper} to re-bind copies."""
    module = importlib.import_module(module_name)
    replaced: dict[int, object] = {}
    for name, obj in list(vars(module).items()):
        if name.startswith("compose") and inspect.isfunction(obj) and obj.__module__ == module.__name__:
            wrapper = counter.wrap(f"{module_name}.{name}", obj)
            setattr(module, name, wrapper)
            replaced[id(obj)] = wrapper
    return replaced


def rebind(replaced: dict[int, object]) -> list[str]:
    """Replace the originals wherever a project module had already imported them by name."""
    rebound = []
    for mod_name, mod in list(sys.modules.items()):
        if mod is None or not mod_name.startswith(PROJECT_PREFIXES):
            continue
        for attr, value in list(vars(mod).items()):
            wrapper = replaced.get(id(value))
            if wrapper is not None and wrapper is not value and getattr(wrapper, "__wrapped_original__", None) is value:
                setattr(mod, attr, wrapper)
                rebound.append(f"{mod_name}.{attr}")
    return rebound


def run_flow(overrides: list[str]):
    from flows.pipeline import pipeline_flow
    from flows.runtime import embedded_settings

    with embedded_settings():
        return pipeline_flow(overrides=overrides)


def run_cli(overrides: list[str]):
    from flows.cli import main

    code = main(["run", *overrides])
    if code:
        raise SystemExit(f"smollm run exited {code}")
    return None


def import_entry(via: str) -> str:
    """Import the entry point's modules now (so their by-name copies can be re-bound); which one."""
    if via in ("auto", "flow"):
        try:
            importlib.import_module("flows.pipeline")
            importlib.import_module("flows.runtime")
            return "flow"
        except ImportError as err:
            if via == "flow":
                raise
            print(f"flows.pipeline / flows.runtime not importable ({err}); using the CLI")
    importlib.import_module("flows.cli")
    return "cli"


def summary(result) -> str:
    if not isinstance(result, dict):
        return "(ran through the CLI; its report is above)"
    stages = [f"{s.get('stage')}(trained={s.get('trained')})" for s in result.get("stages", [])]
    return f"pipeline {result.get('pipeline')}: {', '.join(stages)}; stopped={result.get('stopped')}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", nargs="?", default=".", help="the repo root (default: the current folder)")
    parser.add_argument("--via", choices=("auto", "flow", "cli"), default="auto")
    parser.add_argument("--compose-module", default="flows.compose")
    args = parser.parse_args(argv)

    root = Path(args.root).resolve()
    os.chdir(root)
    sys.path.insert(0, str(root))  # this checkout's packages, not an editable install's
    started_all = time.perf_counter()

    import flows
    import smollm

    for package in (flows, smollm):
        where = Path(package.__file__).resolve()
        if root not in where.parents:
            raise SystemExit(f"{package.__name__} imports from {where}, not from {root}")
    print(f"checkout: {root}  (flows from {Path(flows.__file__).parent}, smollm from {Path(smollm.__file__).parent})")

    counter = Counter()
    patch_hydra(counter)
    try:
        replaced = patch_project(counter, args.compose_module)
    except ImportError as err:
        print(f"{args.compose_module}: not importable ({err}); project entry points not counted")
        replaced = {}
    via = import_entry(args.via)
    rebound = rebind(replaced)
    print(f"{len(replaced)} entry points of {args.compose_module}; re-bound copies: {', '.join(rebound) or 'none'}")

    from prefect.testing.utilities import prefect_test_harness

    with tempfile.TemporaryDirectory(prefix="count-compose-") as tmp:
        from tests.conftest import tiny_overrides

        overrides = tiny_overrides(Path(tmp) / "work")
        with prefect_test_harness(server_startup_timeout=120):
            started = time.perf_counter()
            result = run_flow(overrides) if via == "flow" else run_cli(overrides)
            run_seconds = time.perf_counter() - started
    total_seconds = time.perf_counter() - started_all

    hydra_calls = counter.calls["hydra.compose"]
    project = {k: v for k, v in counter.calls.items() if k != "hydra.compose"}
    outer = {k: v for k, v in counter.outermost.items() if k != "hydra.compose"}
    print()
    print(summary(result))
    print(f"via: {via}")
    print(f"(i)  hydra.compose calls: {hydra_calls}")
    print(f"(ii) project composition entry-point calls: {sum(project.values())} (outermost: {sum(outer.values())})")
    for name in sorted(project):
        print(f"       {name}: {project[name]} (outermost: {outer.get(name, 0)})")
    module = sys.modules.get(args.compose_module)
    cached = getattr(getattr(module, "_compose_json", None), "cache_info", None)
    if cached is not None:
        print(f"     {args.compose_module}._compose_json cache: {cached()}")
    print(f"wall time: pipeline {run_seconds:.1f} s; whole script (harness start/stop included) {total_seconds:.1f} s")
    record = {
        "via": via,
        "hydra_compose": hydra_calls,
        "project_compose": sum(project.values()),
        "project_compose_outermost": sum(outer.values()),
        "per_entry_point": project,
        "pipeline_seconds": round(run_seconds, 1),
        "total_seconds": round(total_seconds, 1),
    }
    print("RESULT " + json.dumps(record, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
