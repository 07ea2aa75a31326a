"""docker-compose.yml's services as plain processes (no Docker engine here): a PostgreSQL server
initialised by the compose's own init script, then the Prefect and MLflow servers with the
compose's own commands and database URLs (only the host names changed to loopback), and a real
flow run and a real MLflow run stored in PostgreSQL through them.

PostgreSQL comes from Debian's `postgresql` package (`scripts/install-test-deps.sh`, run by
`make test`); `initdb` refuses root, so the cluster runs as the `postgres` user.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from smollm.services import Services, _executable

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
PASSWORD = "test-only-password"


def _pg_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        pytest.fail("PostgreSQL is not installed: run scripts/install-test-deps.sh (make test does)")
    return found[-1].parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _as_postgres(*argv: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    return subprocess.run([*prefix, *argv], env=env, check=True, capture_output=True, text=True, **kw)


def _substitute(text: str, port: int) -> str:
    """Compose's variables and service host names, as the plain processes here see them."""
    for variable in ("${POSTGRES_USER:-smollm}",):
        text = text.replace(variable, "smollm")
    while "${POSTGRES_PASSWORD:?" in text:
        start = text.index("${POSTGRES_PASSWORD:?")
        text = text[:start] + PASSWORD + text[text.index("}", start) + 1 :]
    return text.replace("@postgres:5432/", f"@127.0.0.1:{port}/")


@pytest.fixture(scope="module")
def postgres():
    """A throwaway cluster on a free loopback port, initialised like compose's postgres service."""
    bin_dir, port = _pg_bin(), _free_port()
    root = Path(tempfile.mkdtemp(prefix="smollm-pg-"))
    data, pwfile = root / "data", root / "pw"
    pwfile.write_text(PASSWORD)
    if os.geteuid() == 0:
        for path in (root, pwfile):
            shutil.chown(path, "postgres")
    environment = COMPOSE["services"]["postgres"]["environment"]
    _as_postgres(
        str(bin_dir / "initdb"), "-D", str(data), "-U", "smollm", "--pwfile", str(pwfile), "-A", "scram-sha-256"
    )
    options = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={root}"
    _as_postgres(str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start")
    env = {**os.environ, "PGPASSWORD": PASSWORD, "PGHOST": "127.0.0.1", "PGPORT": str(port), "PGUSER": "smollm"}
    try:
        # what the postgres image does with POSTGRES_DB, then compose's init script
        subprocess.run(
            ["psql", "-d", "postgres", "-c", f"CREATE DATABASE {environment['POSTGRES_DB']};"], env=env, check=True
        )
        script = REPO / "docker" / "postgres-init" / "10-mlflow-db.sh"
        init_env = {**env, "POSTGRES_USER": "smollm", "POSTGRES_DB": environment["POSTGRES_DB"]}
        subprocess.run(["sh", str(script)], env=init_env, check=True)
        yield port
    finally:
        _as_postgres(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop")
        shutil.rmtree(root, ignore_errors=True)


def _start(command: list[str], env: dict, log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(_executable(command), cwd=REPO, env=env, stdout=out, stderr=out, start_new_session=True)


def _wait(url: str, process: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise AssertionError(f"{url} did not answer; log:\n{log.read_text()[-3000:]}")


def test_compose_services_store_a_flow_run_and_an_mlflow_run_in_postgres(postgres, tmp_path):
    services = COMPOSE["services"]
    prefect_port, mlflow_port = _free_port(), _free_port()
    local = Services(tmp_path, prefect_port=prefect_port, mlflow_port=mlflow_port)
    env = {k: v for k, v in local.env().items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    prefect_env = {k: _substitute(str(v), postgres) for k, v in services["prefect-server"]["environment"].items()}
    prefect_env["PREFECT_UI_API_URL"] = local.prefect_api
    prefect_cmd = [_substitute(w, postgres) for w in services["prefect-server"]["command"]]
    prefect_cmd[prefect_cmd.index("0.0.0.0")] = "127.0.0.1"
    prefect_cmd[prefect_cmd.index("4200")] = str(prefect_port)
    mlflow_cmd = [_substitute(w, postgres) for w in services["mlflow"]["command"]]
    mlflow_cmd[mlflow_cmd.index("0.0.0.0")] = "127.0.0.1"
    mlflow_cmd[mlflow_cmd.index("5000")] = str(mlflow_port)
    mlflow_cmd[mlflow_cmd.index("/mlartifacts")] = str(tmp_path / "mlartifacts")
    mlflow_cmd[mlflow_cmd.index("--allowed-hosts") + 1] = f"127.0.0.1:{mlflow_port}"
    processes = [
        (_start(prefect_cmd, {**env, **prefect_env}, tmp_path / "prefect.log"), tmp_path / "prefect.log"),
        (_start(mlflow_cmd, env, tmp_path / "mlflow.log"), tmp_path / "mlflow.log"),
    ]
    try:
        _wait(f"{local.prefect_api}/health", *processes[0])
        _wait(f"{local.mlflow_ui}/health", *processes[1])
        # a real flow run through the Prefect server, and a real MLflow run through the MLflow server
        script = (
            "from prefect import flow\n"
            "import mlflow\n"
            "@flow(name='compose-check')\n"
            "def check():\n"
            "    mlflow.set_experiment('compose-check')\n"
            "    with mlflow.start_run() as run:\n"
            "        mlflow.log_metric('eval/category/code', 0.42)\n"
            "        mlflow.log_text('served', 'note.txt')\n"
            "    return run.info.run_id\n"
            "print(check())\n"
        )
        client_env = {**env, "PREFECT_API_URL": local.prefect_api, "MLFLOW_TRACKING_URI": local.mlflow_ui}
        done = subprocess.run(
            [*_executable(["python"]), "-c", script], env=client_env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr[-3000:]
        run_id = done.stdout.strip().splitlines()[-1]
        # both stored in PostgreSQL, each in its own database
        psql = {
            **os.environ,
            "PGPASSWORD": PASSWORD,
            "PGHOST": "127.0.0.1",
            "PGPORT": str(postgres),
            "PGUSER": "smollm",
        }

        def query(db: str, sql: str) -> str:
            return subprocess.run(
                ["psql", "-d", db, "-tAc", sql], env=psql, check=True, capture_output=True, text=True
            ).stdout.strip()

        assert (
            query(
                "prefect",
                "SELECT state_type FROM flow_run f JOIN flow ON f.flow_id = flow.id WHERE flow.name = 'compose-check'",
            )
            == "COMPLETED"
        )
        assert (
            query("mlflow", f"SELECT value FROM metrics WHERE run_uuid = '{run_id}' AND key = 'eval/category/code'")
            == "0.42"
        )
        assert list((tmp_path / "mlartifacts").rglob("note.txt")), "the artifact went through the served artifact store"
    finally:
        for process, _ in processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=60)
