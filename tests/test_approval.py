"""Approval in the Prefect UI: the pipeline pauses after a rebalance, a person approves, edits or
rejects the proposed mixture (here: through the same API the UI's form posts to), and the next
stage trains on the decision. Real flow runs on Prefect's test server."""

from __future__ import annotations

import threading
import time

import pytest
import yaml

from tests.conftest import tiny_overrides

ASK = ["rebalance.approval.ask=true", "rebalance.approval.timeout_seconds=120"]
EDIT = {"stdlib_prose": 0.5, "stdlib_code": 0.2, "synthetic_math": 0.3}


def paused_run(seen: set, timeout: float = 300):
    """The next flow run that is PAUSED with a fresh form (keyset) not in `seen`."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    state = FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            for run in client.read_flow_runs(flow_run_filter=FlowRunFilter(state=state)):
                keyset = run.state.state_details.run_input_keyset
                if keyset and keyset["response"] + str(run.id) not in seen:
                    seen.add(keyset["response"] + str(run.id))
                    return run
            time.sleep(0.3)
    raise TimeoutError("no flow run paused for approval")


def form(run) -> tuple[dict, str]:
    from prefect.input.actions import read_flow_run_input

    keyset = run.state.state_details.run_input_keyset
    schema = read_flow_run_input(keyset["schema"], flow_run_id=run.id)
    return schema, read_flow_run_input(keyset["description"], flow_run_id=run.id)


@pytest.mark.e2e
@pytest.mark.slow
def test_a_person_edits_the_proposal_an_invalid_edit_is_refused_and_the_next_stage_trains_on_the_edit(tmp_path):
    from prefect.flow_runs import resume_flow_run
    from prefect.testing.utilities import prefect_test_harness

    from flows.approval import rows
    from flows.pipeline import pipeline_flow

    overrides = [*tiny_overrides(tmp_path / "work"), *ASK]
    seen: set = set()
    answers: dict = {}

    def person():
        try:
            answer()
        except BaseException as err:  # the flow then times out; the assertion below says why
            answers["error"] = repr(err)

    def answer():
        run = paused_run(seen)
        answers["first_form"] = form(run)
        with pytest.raises(
            RuntimeError,
            match=r"Validation failed for field 'weights\[1\].weight'. Failure reason: -0.5 is less than the minimum of 0",
        ):
            resume_flow_run(run.id, run_input={"weights": rows({"stdlib_prose": -0.5, "stdlib_code": 1.5})})
        resume_flow_run(run.id, run_input={"weights": rows({"stdlib_prose": 0.7, "nope": 0.3})})
        run = paused_run(seen)  # asked again, with the reason
        answers["second_form"] = form(run)
        resume_flow_run(run.id, run_input={"weights": rows(EDIT), "note": "more math"})
        run = paused_run(seen)  # before stage3: stop here
        answers["third_form"] = form(run)
        resume_flow_run(run.id, run_input={"approve": False})

    with prefect_test_harness(server_startup_timeout=120):
        thread = threading.Thread(target=person, daemon=True)
        thread.start()
        result = pipeline_flow(overrides=overrides).to_dict()
        thread.join(timeout=60)
    assert "error" not in answers, answers["error"]

    schema, description = answers["first_form"]
    stage1, stage2 = result["stages"]
    proposed = stage1["proposal"]["weights"]
    assert schema["properties"]["weights"]["default"] == rows(proposed)  # the form starts at the proposal
    assert "Approve the mixture for stage2" in description and "| synthetic_math |" in description
    assert "rule math_below_target" in description  # the reasons are on the form
    _, description = answers["second_form"]
    assert "Your edit was rejected:** `mixture.weights.nope: is not a declared source" in description
    assert stage1["approval"] == {"how": "edited", "mixture": stage2["mixture"]}
    assert stage2["mixture"].startswith(stage1["next_mixture"] + "-edited-")
    assert stage2["summary"]["mixture"] == EDIT  # the next stage trained on the edited mixture
    written = (tmp_path / "work" / "generated_conf" / "mixture" / f"{stage2['mixture']}.yaml").read_text()
    assert "edited in the Prefect UI" in written and "note" not in yaml.safe_load(written)
    assert "more math" in written and yaml.safe_load(written)["weights"] == EDIT
    assert result["stopped"] == "before stage3: the proposed mixture was not approved (rejected)"

    # nobody answers: on_timeout applies (stage 1 and 2 are complete, so this takes seconds)
    with prefect_test_harness(server_startup_timeout=120):
        timeout = ["rebalance.approval.timeout_seconds=2", "rebalance.approval.on_timeout=proceed"]
        started = time.perf_counter()
        again = pipeline_flow(overrides=[*overrides, *timeout, "pipeline.stages.2.train_tokens=25600"]).to_dict()
        seconds = time.perf_counter() - started
    assert [s["approval"]["how"] for s in again["stages"][:2]] == ["timeout-proceed", "timeout-proceed"]
    assert again["stages"][1]["mixture"] == stage1["next_mixture"]  # the proposal, not the old edit
    assert again["stopped"] is None and len(again["stages"]) == 3
    print(f"re-run with two approval timeouts: {seconds:.1f}s")


def test_without_a_server_to_ask_on_the_configured_default_applies():
    from flows.approval import ask
    from flows.compose import compose
    from smollm.results import ProposedMixture

    proposal = ProposedMixture(name="demo-stage2-x", weights={"a": 1.0}, previous={}, explanation="")
    for on_timeout, mixture in (("proceed", "demo-stage2-x"), ("stop", None)):
        cfg = compose(["rebalance.approval.ask=true", f"rebalance.approval.on_timeout={on_timeout}"])
        decision = ask(cfg, proposal, "r", "stage2")
        assert (decision.mixture, decision.how) == (mixture, f"no-server-{on_timeout}")


def test_an_edit_is_validated_like_any_mixture_config():
    from flows.approval import validate_edit
    from flows.compose import compose
    from smollm.config import ConfigError

    cfg = compose([])
    assert validate_edit(cfg, {"stdlib_prose": 0.5, "stdlib_code": 0.5}).weights["stdlib_code"] == 0.5
    cases = {
        "mixture.weights: must sum to 1": {"stdlib_prose": 0.5, "stdlib_code": 0.4},
        "mixture.weights.stdlib_code: must be in [0, 1]": {"stdlib_prose": 1.0, "stdlib_code": -0.5},
        "mixture.weights.nope: is not a declared source": {"stdlib_prose": 0.5, "nope": 0.5},
        "mixture.weights: must name at least one source": {},
    }
    for message, weights in cases.items():
        with pytest.raises(ConfigError, match="^" + message.replace("[", r"\[").replace("]", r"\]")):
            validate_edit(cfg, weights)
