"""Scale-out launchers: Hydra's submitit launcher and a Prefect work pool, and `prefect.yaml`.

Fast: the Slurm and work-pool launcher configs compose, the CLI picks the Hydra path, every
`prefect.yaml` deployment loads its flow. Slow: a tiny annealing sweep run through
`hydra/launcher=submitit_local` (real submitit subprocesses) gives the local path's members;
`prefect deploy --all` from `prefect.yaml` and a process worker run members for the work pool.
"""

from __future__ import annotations

import inspect
import os
import pickle
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import pytest
import yaml

from smollm.config import SweepConfig
from smollm.schema import ConfigError
from tests.conftest import tiny_overrides

REPO = Path(__file__).resolve().parent.parent
SLURM = [
    "hydra/launcher=submitit_slurm",
    "hydra.launcher.partition=gpu",
    "hydra.launcher.gpus_per_node=1",
    "hydra.launcher.cpus_per_task=8",
    "hydra.launcher.timeout_min=240",
]
# A cheap base: stage 1 at 100 steps, annealing runs of 100 steps.
ANNEAL = ["anneal.base=stage1", "pipeline.stages.0.train_tokens=51200", "anneal.train_tokens=51200"]
MEMBERS = [["anneal.candidate=synthetic_math"]]  # + the control


def test_the_slurm_launcher_config_composes(overrides, tmp_path):
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.plugins import Plugins
    from hydra.types import HydraContext
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
    from omegaconf import OmegaConf

    from flows.compose import MemberTask, compose, launcher_config

    cfg = launcher_config([*overrides, *SLURM], tmp_path / "sweep", "smollm-anneal")
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"] == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher["partition"], launcher["gpus_per_node"], launcher["cpus_per_task"]) == ("gpu", 1, 8)
    assert launcher["timeout_min"] == 240 and launcher["name"] == "smollm-anneal"
    assert launcher["submitit_folder"] == f"{tmp_path / 'sweep'}/.submitit/%j"
    assert cfg.hydra.job.chdir is False and cfg.hydra.runtime.choices["hydra/job_logging"] == "none"
    context = HydraContext(config_loader=GlobalHydra.instance().config_loader(), callbacks=None)
    instance = Plugins.instance().instantiate_launcher(hydra_context=context, task_function=MemberTask([]), config=cfg)
    assert isinstance(instance, SlurmLauncher) and instance.params["partition"] == "gpu"
    # the run config is the same with or without the launcher's overrides
    assert compose([*overrides, *SLURM]) == compose(overrides)


def test_the_cli_hands_a_sweep_with_a_hydra_launcher_to_it(overrides, monkeypatch, capsys):
    import flows.runtime
    import flows.sweep
    from flows.cli import main
    from flows.compose import compose

    seen = {}

    def fake_sweep_flow(**kwargs):
        from smollm.results import SweepResult

        seen.update(kwargs)
        fields = ("sweep_id", "folder", "tracking_uri", "sweep_run_id")
        empty = {"members": [], "trained": [], "rows": [], "runs": [], "data_built": [], "base": None, "chart": None}
        return SweepResult(kind="anneal", **empty, **dict.fromkeys(fields, "-"), seconds=0, members_seconds=0)

    monkeypatch.setattr(flows.sweep, "sweep_flow", fake_sweep_flow)
    monkeypatch.setattr(flows.runtime, "embedded_settings", nullcontext)
    args = ["anneal", "-m", *overrides, *SLURM, "anneal.candidate=synthetic_math,stdlib_code"]
    assert main(args) == 0
    assert seen["overrides"] == [*overrides, *SLURM, "sweep.launcher=hydra"]
    assert len(seen["members"]) == 2
    assert compose(seen["overrides"]).sweep.launcher == "hydra"

    assert main([*args, "sweep.launcher=work_pool", "sweep.deployment=a/b"]) == 2
    assert capsys.readouterr().err.startswith("error: sweep.launcher: is 'work_pool' but hydra/launcher=")


def test_the_work_pool_launcher_config_composes(overrides, capsys):
    from flows.cli import main
    from flows.compose import compose

    sweep = compose([*overrides, "sweep.launcher=work_pool", "sweep.deployment=smollm-sweep-member/gpu"]).sweep
    assert (sweep.launcher, sweep.deployment) == ("work_pool", "smollm-sweep-member/gpu")
    with pytest.raises(ConfigError, match=r"^sweep.deployment: is required for launcher 'work_pool', got None$"):
        compose([*overrides, "sweep.launcher=work_pool"])
    assert main(["anneal", "-m", *overrides, "sweep.launcher=work_pool", "anneal.candidate=synthetic_math"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: sweep.deployment: is required") and err.count("\n") == 1


def test_every_prefect_yaml_deployment_loads_its_flow(monkeypatch):
    from prefect.flows import load_flow_from_entrypoint

    monkeypatch.chdir(REPO)  # entrypoints are relative to the project root, as for `prefect deploy`
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    names = set()
    for deployment in spec["deployments"]:
        flow = load_flow_from_entrypoint(deployment["entrypoint"])
        names.add(f"{flow.name}/{deployment['name']}")
        params = deployment.get("parameters") or {}
        assert set(params) <= set(inspect.signature(flow.fn).parameters), deployment["entrypoint"]
        if params:
            flow.validate_parameters(params)  # types too; the other parameters have defaults
        assert deployment["work_pool"]["name"] == "smollm"
    entry = {d["entrypoint"] for d in spec["deployments"]}
    assert entry == {
        "flows/served.py:run_pipeline",
        "flows/served.py:run_stage",
        "flows/served.py:run_sweep",
        "flows/sweep.py:member_flow",
    }
    assert {"smollm-run-stage/stage", "smollm-run-pipeline/pipeline", "smollm-run-sweep/sweep"} <= names
    assert "smollm-sweep-member/default" in names  # what the README's sweep.deployment names


def test_a_failed_member_job_is_named(overrides, tmp_path):
    from flows.compose import MemberTask, hydra_launch
    from flows.sweep import member_specs
    from smollm.results import Checkpoint, MemberJob

    spec = member_specs("anneal", overrides, [["anneal.candidate=synthetic_math"]])[1]
    some = Checkpoint(checkpoint=str(tmp_path / "none"), identity="0" * 64)
    fields = {"name": "anneal-nope", "kind": "anneal", "overrides": ["anneal.candidate=nope"], "candidate": "nope"}
    job = MemberJob(**fields, cfg=spec.cfg, stage=spec.stage, tokenizer=some, sources={}, base=some, run_id="r0")
    job = job.to_dict()
    job["cfg"]["anneal"]["candidate"] = "nope"  # refused when the job loads its config, inside the job
    assert pickle.loads(pickle.dumps(MemberTask([job]))).jobs == [job]  # submitit pickles it
    with pytest.raises(RuntimeError, match=r"^sweep member anneal-nope: its basic job failed: ConfigError"):
        hydra_launch(overrides, {"anneal-nope": job}, tmp_path / "sweep", "smollm-anneal")


def test_with_launcher_leaves_the_basic_launcher_local():
    from flows.launchers import with_launcher

    assert with_launcher(["hydra/launcher=basic", "a=1"]) == ["hydra/launcher=basic", "a=1"]
    assert with_launcher(["hydra/launcher=submitit_local", "sweep.launcher=hydra"])[-1] == "sweep.launcher=hydra"


# --- real runs --------------------------------------------------------------------------------

SAME = ("checkpoint", "summary", "stage_tokens_per_source")


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """The same members through `hydra/launcher=submitit_local`, then on the local path."""
    from prefect.testing.utilities import prefect_test_harness

    from flows.runtime import embedded_settings
    from flows.sweep import sweep_flow

    workdir = tmp_path_factory.mktemp("launch") / "work"
    common = [*tiny_overrides(workdir), *ANNEAL]
    submitit = ["hydra/launcher=submitit_local", "sweep.launcher=hydra", "hydra.launcher.timeout_min=20"]
    submitit.append("sweep.threads_per_member=1")  # 2 cores, 2 jobs at once
    with prefect_test_harness(server_startup_timeout=120), embedded_settings():
        started = time.perf_counter()
        remote = sweep_flow(kind="anneal", overrides=[*common, *submitit], members=MEMBERS).to_dict()
        seconds = time.perf_counter() - started
        local = sweep_flow(kind="anneal", overrides=common, members=MEMBERS).to_dict()
    print(f"submitit_local sweep: {seconds:.1f}s, members {remote['members_seconds']:.1f}s")
    return workdir, common, remote, local


@pytest.mark.slow
def test_submitit_jobs_train_the_members_the_local_path_finds_complete(launched):
    workdir, _, remote, local = launched
    assert len(remote["members"]) == 2 and remote["trained"] == [m["name"] for m in remote["members"]]
    assert local["trained"] == []  # the same step identities: the local path has nothing to do
    for r, m in zip(remote["members"], local["members"], strict=True):
        assert (r["name"], r["identity"], r["eval_identity"]) == (m["name"], m["identity"], m["eval_identity"])
        assert {k: r[k] for k in SAME} == {k: m[k] for k in SAME}
        assert r["evals"] == pytest.approx(m["evals"], nan_ok=True) and r["evals"]
        assert r["summary"]["end_step"] - r["summary"]["start_step"] == 100
        assert (Path(r["checkpoint"]) / "_COMPLETE.json").is_file()
    assert remote["rows"] == local["rows"]
    jobs = sorted((workdir / "sweeps" / "launcher").glob("*/.submitit/*/*_result.pkl"))
    assert len(jobs) == 2  # one submitit job per member, under the work dir
    assert sorted(p.name for p in (workdir / "sweeps" / "launcher").glob("*/[0-9]")) == ["0", "1"]


def _prefect(*args: str, env: dict[str, str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "prefect", *args], cwd=REPO, env=env, **kwargs)


@pytest.mark.slow
def test_prefect_yaml_deploys_and_a_work_pool_runs_the_members(launched, tmp_path):
    """`prefect deploy --all` from prefect.yaml, a process worker, then the work-pool launcher on
    members already complete: the runs reuse the checkpoints; results come back from the stores."""
    from mlflow.tracking import MlflowClient
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    from flows.launchers import launch_members

    workdir, common, remote, _ = launched
    with prefect_test_harness(server_startup_timeout=120):
        env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_HOME": str(tmp_path / "home")}
        env |= {"PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_LOGGING_LEVEL": "WARNING"}
        for args in (["work-pool", "create", "smollm", "--type", "process"], ["--no-prompt", "deploy", "--all"]):
            done = _prefect(*args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            out = done.communicate(timeout=120)[0].decode()
            assert done.returncode == 0, out[-3000:]
        assert out.count("successfully created") == 4
        client = MlflowClient(remote["tracking_uri"])
        experiment = client.get_experiment_by_name("smollm-test").experiment_id
        jobs = pool_jobs(common, remote, lambda name: client.create_run(experiment, run_name=f"pool/{name}"))
        with pytest.raises(ConfigError, match=r"^sweep.deployment: no deployment 'smollm-sweep-member/nope'"):
            launch_members(
                SweepConfig(launcher="work_pool", deployment="smollm-sweep-member/nope"), jobs, common, set(jobs)
            )
        worker = _prefect("worker", "start", "--pool", "smollm", env=env, stdout=subprocess.DEVNULL)
        try:
            sweep = SweepConfig(launcher="work_pool", deployment="smollm-sweep-member/default")
            started = time.perf_counter()
            results = {n: r.to_dict() for n, r in launch_members(sweep, jobs, common, set(jobs)).items()}
            print(f"work pool: {time.perf_counter() - started:.1f}s for {len(jobs)} cached members")
        finally:
            worker.terminate()
            try:
                worker.wait(timeout=60)
            except subprocess.TimeoutExpired:  # a loaded machine: its shutdown is not under test
                worker.kill()
                worker.wait()
    for member in remote["members"]:
        result = results[member["name"]]
        assert result["run_id"] == jobs[member["name"]].run_id and result["trained"] is False
        assert {k: result[k] for k in SAME} == {k: member[k] for k in SAME}
        assert result["evals"] == pytest.approx(member["evals"], nan_ok=True)
        assert client.get_run(result["run_id"]).info.status == "FINISHED"


def pool_jobs(common, remote, new_run):
    """The sweep's members as the jobs a work pool gets, each with a fresh MLflow run."""
    from flows.sweep import member_specs
    from smollm import stage
    from smollm.results import Checkpoint, MemberJob

    specs = member_specs("anneal", common, MEMBERS)
    tokenizer = stage.prepare_tokenizer(specs[0].cfg)  # complete: found, not built
    jobs = {}
    for spec, member in zip(specs, remote["members"], strict=True):
        sources = {n: Checkpoint.of(stage.build_source(spec.cfg, n, tokenizer)) for n in stage.needed_sources(spec.cfg)}
        fields = {"name": member["name"], "kind": "anneal", "overrides": member["overrides"]}
        jobs[member["name"]] = MemberJob(
            **fields,
            candidate=member["candidate"],
            cfg=spec.cfg,
            stage=spec.stage,
            tokenizer=Checkpoint.of(tokenizer),
            sources=sources,
            base=Checkpoint(**remote["base"]),
            run_id=new_run(member["name"]).info.run_id,
        )
    return jobs


def test_the_launcher_plugin_is_pinned_and_the_environment_is_consistent():
    from importlib.metadata import version

    pins = dict(line.split("==") for line in (REPO / "constraints.txt").read_text().splitlines() if "==" in line)
    for package in ("hydra-submitit-launcher", "submitit", "hydra-core", "fastapi"):
        assert version(package) == pins[package], package
    check = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
