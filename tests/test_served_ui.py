"""The served setup as a person uses it: `make serve`, then a real Chromium clicks Quick run in the
Prefect UI and finds the stage run's evaluations in the MLflow UI; `make stop` stops it all.

Chromium is Debian's (`scripts/install-test-deps.sh`, run by `make test`), driven by Playwright.
Screenshots go to `test-outputs/served_ui/` (git-ignored). Also: overrides sent through the
Prefect API are checked, and a rejected one fails the run before any compute.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from smollm.services import Services, read_state

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
OUTPUTS = REPO / "test-outputs" / "served_ui"
CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
RUN_TIMEOUT = 900


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """`make serve` on free ports and a fresh work dir; `make stop` afterwards stops all it started."""
    services = Services(tmp_path_factory.mktemp("served") / "work", prefect_port=_free_port(), mlflow_port=_free_port())
    env = {
        **os.environ,
        "SMOLLM_WORKDIR": str(services.workdir),
        "SMOLLM_PREFECT_PORT": str(services.prefect_port),
        "SMOLLM_MLFLOW_PORT": str(services.mlflow_port),
    }
    env.pop("PREFECT_API_URL", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    started = subprocess.run(["make", "serve"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert started.returncode == 0, started.stdout + started.stderr
    assert (
        f"Prefect UI: {services.prefect_ui}" in started.stdout and f"MLflow UI:  {services.mlflow_ui}" in started.stdout
    )
    state = read_state(services)
    assert state is not None
    try:
        yield services
    finally:
        stopped = subprocess.run(["make", "stop"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert stopped.returncode == 0, stopped.stderr
        assert not [p["name"] for p in state["processes"] if _alive(p["pid"])]  # exactly what it started: gone
        assert not services.state_file.exists()


def _trigger(services: Services, overrides: list[str]):
    """Run the stage deployment through the Prefect API (as any API caller could) and wait."""
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: services.prefect_api}):
        return run_deployment("smollm-run-stage/stage", parameters={"overrides": overrides}, timeout=300)


@pytest.mark.parametrize("override", ["model._target_=os.system", "hydra.run.dir=/etc"])
def test_a_forbidden_override_sent_through_the_api_fails_the_run_naming_it(served, override):
    run = _trigger(served, ["train.seed=1", override])
    assert run.state.is_failed(), run.state
    assert f"overrides[1]: {override!r} is rejected" in run.state.message
    assert not (served.workdir / "tokenizer").exists() and not (served.workdir / "train").exists()  # no compute


def _browser(playwright, folder: Path):
    assert Path(CHROMIUM).exists(), "Debian's chromium is missing: run scripts/install-test-deps.sh (make test does)"
    profile = folder / "chromium-profile"
    shutil.rmtree(profile, ignore_errors=True)
    return playwright.chromium.launch_persistent_context(
        str(profile), executable_path=CHROMIUM, headless=True, args=FLAGS, viewport={"width": 1400, "height": 900}
    )


def _flow_runs(services: Services, deployment_id: str) -> list[dict]:
    import httpx

    body = {"deployments": {"id": {"any_": [deployment_id]}}, "sort": "EXPECTED_START_TIME_DESC"}
    return httpx.post(f"{services.prefect_api}/flow_runs/filter", json=body, timeout=10).json()


def test_quick_run_from_the_prefect_ui_completes_and_its_metrics_are_in_the_mlflow_ui(served):
    from mlflow import MlflowClient
    from playwright.sync_api import expect, sync_playwright

    OUTPUTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = _browser(playwright, served.workdir)
        page = browser.new_page()
        page.set_default_timeout(60_000)

        # Prefect: Deployments -> smollm-run-stage's deployment -> Run -> Quick run
        page.goto(f"{served.prefect_ui}/deployments")
        row = page.get_by_role("row").filter(has_text="smollm-run-stage")
        row.get_by_role("link", name="stage", exact=True).click()
        page.wait_for_url("**/deployments/deployment/*")
        deployment_id = page.url.rstrip("/").rsplit("/", 1)[1]
        before = {r["id"] for r in _flow_runs(served, deployment_id)}
        page.screenshot(path=OUTPUTS / "1-prefect-deployment.png")
        page.get_by_role("button", name="Run", exact=True).click()
        clicked = time.monotonic()
        page.get_by_text("Quick run", exact=True).click()

        # the run it created, opened from the deployment's run list, watched until Completed
        deadline = time.monotonic() + 60
        while not (runs := [r for r in _flow_runs(served, deployment_id) if r["id"] not in before]):
            assert time.monotonic() < deadline, "Quick run created no flow run"
            time.sleep(0.5)
        (run,) = runs
        assert run["parameters"] == {}  # the deployment's defaults: pipeline demo, stage1
        page.goto(f"{served.prefect_ui}/deployments/deployment/{deployment_id}")
        page.get_by_role("link", name=run["name"], exact=True).click()
        page.wait_for_url(f"**/runs/flow-run/{run['id']}")
        expect(page.get_by_text(run["name"]).first).to_be_visible()
        page.goto("about:blank")  # the live run page redraws constantly: it would take a core from the run
        state = ""
        deadline = time.monotonic() + RUN_TIMEOUT
        while time.monotonic() < deadline:
            state = next(r for r in _flow_runs(served, deployment_id) if r["id"] == run["id"])["state_type"]
            if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                break
            time.sleep(5)
        completed = time.monotonic() - clicked
        page.goto(f"{served.prefect_ui}/runs/flow-run/{run['id']}")
        page.wait_for_load_state("networkidle")
        page.screenshot(path=OUTPUTS / "2-prefect-flow-run.png", full_page=True)
        assert state == "COMPLETED", f"flow run {run['name']} ended {state}; see {served.folder}/worker.log"
        expect(page.get_by_text("Completed").first).to_be_visible()
        (OUTPUTS / "timing.txt").write_text(f"click Quick run -> flow run Completed: {completed:.1f} s\n")
        print(f"click Quick run -> Completed: {completed:.1f} s")

        # MLflow: the experiment -> the stage run -> its evaluation metrics
        client = MlflowClient(tracking_uri=served.mlflow_ui)
        experiment = client.get_experiment_by_name("smollm-demo")
        assert experiment is not None
        (stage_run,) = client.search_runs(
            [experiment.experiment_id], filter_string="attributes.run_name = 'stage/stage1'"
        )
        assert stage_run.info.status == "FINISHED"
        evals = {k: v for k, v in stage_run.data.metrics.items() if k.startswith("eval/category/")}
        assert evals, "the stage run has no eval/category metrics"
        page.goto(f"{served.mlflow_ui}/#/experiments")
        page.get_by_text("Model training", exact=True).click()  # the UI opens on GenAI
        page.get_by_role("link", name="smollm-demo").first.click()
        page.get_by_role("link", name="stage/stage1").first.click()
        page.wait_for_url(f"**/runs/{stage_run.info.run_id}**")
        for key, value in evals.items():  # the metrics table: each category score, as stored
            expect(page.get_by_role("row").filter(has_text=key).first).to_contain_text(repr(value))
        page.get_by_role("row").filter(has_text="eval/category/").first.scroll_into_view_if_needed()
        page.screenshot(path=OUTPUTS / "3-mlflow-stage-run.png")
        browser.close()
