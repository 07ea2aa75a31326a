"""The served setup, without servers: the deployments' forms, `make serve`'s commands, and
docker-compose.yml / Dockerfile running the same commands (no Docker engine here)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from flows import served
from flows.compose import CONF_DIR
from smollm.schema import ConfigError
from smollm.services import Services, executor_command, mlflow_server_command, prefect_server_command

REPO = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())


def _schema(name: str) -> dict:
    deployment = next(d for d in served.deployments() if d.name == name)
    return deployment._parameter_openapi_schema.model_dump()


def test_the_forms_offer_the_configs_choices_and_quick_run_needs_nothing():
    pipelines = sorted(p.stem for p in CONF_DIR.glob("pipeline/*.yaml"))
    for name in ("stage", "pipeline", "sweep"):
        schema = _schema(name)
        assert schema.get("required", []) == []  # every parameter has a default: Quick run works
        fields = schema["properties"]
        assert fields["pipeline"]["enum"] == pipelines and fields["pipeline"]["default"] == "demo"
        assert "allow-listed keys only" in fields["overrides"]["description"]
    stage = _schema("stage")["properties"]
    assert stage["stage"]["default"] == "stage1"
    assert {"stage1", "stage2", "stage3", "stage4", "long_context"} == set(stage["stage"]["enum"])
    assert stage["seed"]["minimum"] == 0 and stage["seed"]["default"] == 0
    assert stage["train_tokens"]["default"] is None
    sweep = _schema("sweep")["properties"]
    assert sweep["kind"]["enum"] == ["anneal", "ablate"] and sweep["max_concurrency"]["default"] == 2
    assert _schema("pipeline")["properties"]["ask_approval"]["default"] is False


def test_a_stage_not_in_the_pipeline_or_a_bad_value_fails_naming_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SMOLLM_WORKDIR", str(tmp_path / "work"))
    with pytest.raises(ConfigError, match=r"^stage: 'stage4' is not a stage of pipeline 'demo' \(its stages: stage1"):
        served.stage_index("demo", "stage4")
    with pytest.raises(ConfigError, match=r"^pipeline: no pipeline config named 'nope'"):
        served.checked("nope", [])
    with pytest.raises(ConfigError, match=r"overrides\[0\]: 'hydra.run.dir=/etc' is rejected"):
        served.checked("demo", ["hydra.run.dir=/etc"])
    with pytest.raises(ConfigError, match=r"train.micro_batch_size"):
        served.checked("demo", ["train.micro_batch_size=-1"])  # allowed key, invalid value: the schema says
    run = served.checked(
        "demo", ["train.optimizer.lr=0.001"], **{"train.seed": 3, "pipeline.stages.0.train_tokens": None}
    )
    assert run == ["pipeline=demo", "train.seed=3", "train.optimizer.lr=0.001"]
    assert not (tmp_path / "work" / "tokenizer").exists()  # nothing computed


def test_make_serve_starts_the_three_commands_on_loopback(tmp_path):
    services = Services(tmp_path / "work", prefect_port=4300, mlflow_port=5300)
    commands = services.commands()
    assert commands == {
        "prefect-server": ["prefect", "server", "start", "--host", "127.0.0.1", "--port", "4300"],
        "mlflow": mlflow_server_command(
            "127.0.0.1", 5300, f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}", str(tmp_path / "work" / "mlartifacts")
        ),
        "worker": ["python", "-m", "flows.served"],
    }
    env = services.env()
    assert (
        env["PREFECT_API_URL"] == "http://127.0.0.1:4300/api" and env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5300"
    )
    assert env["SMOLLM_WORKDIR"] == str(tmp_path / "work")
    makefile = (REPO / "Makefile").read_text()
    assert "$(PY) -m smollm.services start" in makefile and "$(PY) -m smollm.services stop" in makefile


def _flags(command: list[str]) -> tuple[list[str], dict[str, str | None]]:
    """A command line as (positional words, {flag: value or None})."""
    words, flags, i = [], {}, 0
    while i < len(command):
        if command[i].startswith("--"):
            has_value = i + 1 < len(command) and not command[i + 1].startswith("--")
            flags[command[i]] = command[i + 1] if has_value else None
            i += 2 if has_value else 1
        else:
            words.append(command[i])
            i += 1
    return words, flags


def test_compose_runs_the_same_commands_as_make_serve():
    services = COMPOSE["services"]
    local = Services(Path("/work")).commands()
    assert services["prefect-server"]["command"] == prefect_server_command("0.0.0.0", 4200)
    mlflow = services["mlflow"]["command"]
    _, flags = _flags(mlflow)
    assert mlflow == mlflow_server_command(
        "0.0.0.0", 5000, flags["--backend-store-uri"], "/mlartifacts", flags["--allowed-hosts"]
    )
    assert services["worker"]["command"] == executor_command()
    for name, command in local.items():  # the same program and flags; only hosts, ports, stores differ
        compose_words, compose_flags = _flags(services[name]["command"])
        words, flags = _flags(command)
        assert compose_words == words
        assert set(compose_flags) - {"--allowed-hosts"} == set(flags), name
    dockerfile = (REPO / "Dockerfile").read_text()
    cmd = re.search(r"^CMD (\[.*\])$", dockerfile, re.M)
    assert cmd and json.loads(cmd.group(1)) == executor_command()
    # the worker reaches the servers by their service names, through the variables make serve sets
    env = services["worker"]["environment"]
    assert (
        env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
        and env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    )
    assert set(env) <= set(Services(Path("/work")).env())


def test_compose_stores_in_postgres_binds_loopback_and_commits_no_password():
    services = COMPOSE["services"]
    assert set(services) == {"postgres", "prefect-server", "mlflow", "worker"}
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
    prefect_db = services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    _, mlflow_flags = _flags(services["mlflow"]["command"])
    assert prefect_db.startswith("postgresql+asyncpg://") and prefect_db.endswith("@postgres:5432/prefect")
    assert mlflow_flags["--backend-store-uri"].endswith("@postgres:5432/mlflow")
    assert mlflow_flags["--backend-store-uri"].startswith("postgresql://")
    text = (REPO / "docker-compose.yml").read_text()
    # every use of the password is a required variable: compose refuses to start without .env
    uses = re.findall(r"\$\{POSTGRES_PASSWORD([^}]*)\}", text)
    assert len(uses) == 3 and all(use.startswith(":?") for use in uses)
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    assert re.search(r"^POSTGRES_PASSWORD=\s*$", (REPO / ".env.example").read_text(), re.M)
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=REPO)
    assert ignored.returncode == 0, ".env must be git-ignored"
    init = (REPO / "docker" / "postgres-init" / "10-mlflow-db.sh").read_text()
    assert (
        "CREATE DATABASE mlflow" in init
        and "./docker/postgres-init:/docker-entrypoint-initdb.d:ro" in (services["postgres"]["volumes"])
    )


def test_the_image_installs_the_pinned_mlflow_with_the_path_traversal_fix():
    dockerfile = (REPO / "Dockerfile").read_text()
    assert 'pip install -c constraints.txt -e ".[postgres]"' in dockerfile
    assert "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in dockerfile
    pins = dict(line.split("==") for line in (REPO / "constraints.txt").read_text().splitlines() if "==" in line)
    major, minor, *_ = (int(x) for x in pins["mlflow"].split("."))
    assert (major, minor) >= (3, 8)
    assert "psycopg" in pins and "asyncpg" in pins  # MLflow's and Prefect's PostgreSQL drivers
    import mlflow

    assert mlflow.__version__ == pins["mlflow"]
