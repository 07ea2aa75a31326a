"""The served setup without Docker: `make serve` / `make stop`.

    python -m smollm.services start [--workdir work] [--prefect-port 4200] [--mlflow-port 5000]
    python -m smollm.services stop  [--workdir work]

`start` runs, on loopback, in the background, each in its own process group:

- a Prefect server (UI and API; its SQLite database in `<workdir>/services/prefect/`),
- an MLflow tracking server on the work dir's store (`mlflow.db`; artifacts served from
  `mlartifacts/`), so the embedded runs' results show there too,
- the executor, `python -m flows.served`: registers the stage, pipeline and sweep deployments
  and runs what is triggered, with `MLFLOW_TRACKING_URI` pointing the runs at that MLflow server,

waits until each answers, and prints the two UI addresses. What it started (pid, command line,
log) is written to `<workdir>/services/services.json`; `stop` stops exactly those processes
(their process groups, so the flow runs the executor started go too) and nothing else.

docker-compose.yml runs the same three commands (`*_command` below; a test checks they match),
with PostgreSQL as the store of both servers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from smollm.tracking_faults import process_start_time

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
DEPLOYMENTS = ("smollm-run-stage/stage", "smollm-run-pipeline/pipeline", "smollm-run-sweep/sweep")


def prefect_server_command(host: str, port: int | str) -> list[str]:
    return ["prefect", "server", "start", "--host", host, "--port", str(port)]


def mlflow_server_command(
    host: str, port: int | str, backend_store_uri: str, artifacts_destination: str, allowed_hosts: str | None = None
) -> list[str]:
    command = ["mlflow", "server", "--host", host, "--port", str(port), "--workers", "1"]
    command += ["--backend-store-uri", backend_store_uri, "--serve-artifacts"]
    command += ["--artifacts-destination", artifacts_destination]
    return [*command, "--allowed-hosts", allowed_hosts] if allowed_hosts else command


def executor_command() -> list[str]:
    return ["python", "-m", "flows.served"]


@dataclass(frozen=True)
class Services:
    workdir: Path
    host: str = HOST
    prefect_port: int = 4200
    mlflow_port: int = 5000

    @property
    def folder(self) -> Path:
        return self.workdir / "services"

    @property
    def state_file(self) -> Path:
        return self.folder / "services.json"

    @property
    def prefect_ui(self) -> str:
        return f"http://{self.host}:{self.prefect_port}"

    @property
    def prefect_api(self) -> str:
        return f"{self.prefect_ui}/api"

    @property
    def mlflow_ui(self) -> str:
        return f"http://{self.host}:{self.mlflow_port}"

    def env(self) -> dict[str, str]:
        """The environment of every process started (the flow runs inherit the executor's)."""
        return {
            **os.environ,
            "PREFECT_HOME": str(self.folder / "prefect"),
            "PREFECT_API_URL": self.prefect_api,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_API_URL": self.prefect_api,
            "MLFLOW_TRACKING_URI": self.mlflow_ui,
            "MLFLOW_ENABLE_TELEMETRY": "false",
            "DO_NOT_TRACK": "1",
            "SMOLLM_WORKDIR": str(self.workdir),
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1",
        }

    def commands(self) -> dict[str, list[str]]:
        store = f"sqlite:///{self.workdir / 'mlflow.db'}"
        return {
            "prefect-server": prefect_server_command(self.host, self.prefect_port),
            "mlflow": mlflow_server_command(self.host, self.mlflow_port, store, str(self.workdir / "mlartifacts")),
            "worker": executor_command(),
        }


def _executable(command: list[str]) -> list[str]:
    """`prefect`/`mlflow`/`python` from this environment (the venv), whatever PATH says."""
    binary = Path(sys.executable).parent / command[0]
    return [sys.executable if command[0] == "python" else str(binary), *command[1:]]


def _alive(process: dict) -> bool:
    """Whether the recorded process still runs (and its pid was not reused by another one)."""
    return process_start_time(process["pid"]) == process["started"]


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((host, port)) != 0


def _get(url: str, data: bytes | None = None) -> bytes | None:
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.read()
    except OSError:
        return None


def _write_state(services: Services, state: dict) -> None:
    tmp = services.state_file.with_suffix(".tmp")
    with open(tmp, "w") as f:
        json.dump(state, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, services.state_file)


def read_state(services: Services) -> dict | None:
    if not services.state_file.exists():
        return None
    return json.loads(services.state_file.read_text())


def _deployed(services: Services) -> set[str]:
    body = _get(f"{services.prefect_api}/deployments/filter", b"{}")
    if body is None:
        return set()
    flows = {f["id"]: f["name"] for f in json.loads(_get(f"{services.prefect_api}/flows/filter", b"{}") or b"[]")}
    return {f"{flows.get(d['flow_id'], '?')}/{d['name']}" for d in json.loads(body)}


def start(services: Services, timeout: float = 300) -> dict:
    """Start the three processes (unless they run already) and wait until they answer."""
    state = read_state(services)
    if state and any(_alive(p) for p in state["processes"]):
        print(f"already running (stop with `make stop`): Prefect {state['prefect_ui']}  MLflow {state['mlflow_ui']}")
        return state
    for name, port in (("prefect-port", services.prefect_port), ("mlflow-port", services.mlflow_port)):
        if not _port_free(services.host, port):
            raise SystemExit(f"error: {name}: {port} is already in use on {services.host}")
    services.folder.mkdir(parents=True, exist_ok=True)
    (services.workdir / "mlartifacts").mkdir(exist_ok=True)
    state = {"prefect_ui": services.prefect_ui, "mlflow_ui": services.mlflow_ui, "processes": []}
    ready = {
        "prefect-server": lambda: _get(f"{services.prefect_api}/health") is not None,
        "mlflow": lambda: _get(f"{services.mlflow_ui}/health") is not None,
        "worker": lambda: _deployed(services) >= set(DEPLOYMENTS),
    }
    try:
        for group in (("prefect-server", "mlflow"), ("worker",)):
            for name in group:
                state["processes"].append(_launch(services, name, services.commands()[name]))
                _write_state(services, state)
            for name in group:
                _wait(name, ready[name], state, timeout)
    except BaseException:
        stop(services)
        raise
    print(f"Prefect UI: {services.prefect_ui}\nMLflow UI:  {services.mlflow_ui}")
    print(f"logs: {services.folder}/*.log; stop with `make stop`")
    return state


def _launch(services: Services, name: str, command: list[str]) -> dict:
    log = services.folder / f"{name}.log"
    argv = _executable(command)
    with open(log, "ab") as out:
        process = subprocess.Popen(
            argv, cwd=REPO, env=services.env(), stdout=out, stderr=out, stdin=None, start_new_session=True
        )
    started = process_start_time(process.pid)
    return {"name": name, "pid": process.pid, "started": started, "command": argv, "log": str(log)}


def _wait(name: str, is_ready, state: dict, timeout: float) -> None:
    process = next(p for p in state["processes"] if p["name"] == name)
    deadline = time.monotonic() + timeout
    while not is_ready():
        if not _alive(process):
            tail = Path(process["log"]).read_text(errors="replace").splitlines()[-5:]
            raise SystemExit(f"error: {name} exited while starting; its log ends:\n" + "\n".join(tail))
        if time.monotonic() > deadline:
            raise SystemExit(f"error: {name} did not answer within {timeout:.0f} s (log: {process['log']})")
        time.sleep(0.5)


def stop(services: Services, timeout: float = 30) -> list[str]:
    """Stop the process groups `start` recorded (if they are still the processes it started)."""
    state = read_state(services)
    if state is None:
        print("nothing to stop")
        return []
    stopped = []
    for process in reversed(state["processes"]):
        if _alive(process):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process["pid"], signal.SIGTERM)
            stopped.append(process)
    deadline = time.monotonic() + timeout
    for process in stopped:
        while _alive(process) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(process):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process["pid"], signal.SIGKILL)
    for process in stopped:  # the rest of each group (e.g. a flow run's subprocess)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process["pid"], signal.SIGKILL)
    services.state_file.unlink()
    names = [p["name"] for p in stopped]
    print(f"stopped: {', '.join(names) or 'nothing (already gone)'}")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("start", "stop"))
    parser.add_argument("--workdir", default=os.environ.get("SMOLLM_WORKDIR", "work"))
    parser.add_argument("--prefect-port", type=int, default=int(os.environ.get("SMOLLM_PREFECT_PORT", 4200)))
    parser.add_argument("--mlflow-port", type=int, default=int(os.environ.get("SMOLLM_MLFLOW_PORT", 5000)))
    args = parser.parse_args(argv)
    services = Services(Path(args.workdir).resolve(), HOST, args.prefect_port, args.mlflow_port)
    if args.action == "start":
        start(services)
    else:
        stop(services)
    return 0


if __name__ == "__main__":
    sys.exit(main())
