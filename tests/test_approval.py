"""Approval in the Prefect UI: the pipeline pauses after a rebalance, a person approves, edits or
rejects the proposed mixture (here: through the same API the UI's form posts to), and the next
stage trains on the decision. Real flow runs on Prefect's test server."""

from __future__ import annotations

import re
import threading
import time

import pytest
import yaml

from tests.conftest import tiny_overrides

ASK = ["rebalance.approval.ask=true", "rebalance.approval.timeout_seconds=120"]
THREE_SOURCES = ["mixture.weights.stdlib_prose=0.6", "mixture.weights.stdlib_code=0.3", "~mixture.weights.noisy_web"]
"""Stage 1 on prose, code and math only (0.6 / 0.3 / 0.1), for the constraint checks below."""
# edits of the tiny pipeline's stage-2 proposal, from demo_stage1 (prose .45, code .25, web .2, math .1)
EDIT = {"stdlib_prose": 0.45, "stdlib_code": 0.2, "noisy_web": 0.07, "synthetic_math": 0.28}
PAST_MAX_CHANGE = {"stdlib_prose": 0.2, "stdlib_code": 0.45, "noisy_web": 0.25, "synthetic_math": 0.1}


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
def test_a_person_edits_the_proposal_an_edit_invalid_or_past_a_constraint_is_refused_the_next_stage_trains_on_the_edit(
    tmp_path,
):
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
        resume_flow_run(run.id, run_input={"weights": rows(PAST_MAX_CHANGE)})
        run = paused_run(seen)  # a constraint the proposal held: asked again, naming it
        answers["third_form"] = form(run)
        resume_flow_run(run.id, run_input={"weights": rows(EDIT), "note": "more math"})
        run = paused_run(seen)  # before stage3: stop here
        answers["fourth_form"] = form(run)
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
    _, description = answers["third_form"]
    assert "rejected:** `mixture.weights.stdlib_prose: 0.2 is more than max_change 0.2 below 0.45" in description
    assert stage1["approval"] == {"how": "edited", "mixture": stage2["mixture"], "overridden_constraints": []}
    assert stage2["mixture"].startswith(stage1["next_mixture"] + "-edited-")
    assert stage2["summary"]["mixture"] == EDIT  # the next stage trained on the edited mixture
    written = (tmp_path / "work" / "generated_conf" / "mixture" / f"{stage2['mixture']}.yaml").read_text()
    assert "edited in the Prefect UI" in written and "note" not in yaml.safe_load(written)
    assert "more math" in written and yaml.safe_load(written)["weights"] == EDIT
    assert "overridden_constraints: []" in written  # EDIT keeps stage1's proposal's constraints
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
    from smollm.rebalance import Constraints
    from smollm.results import ProposedMixture

    constraints = Constraints({}, max_change=0.2, next_stage_tokens=1000)
    proposal = ProposedMixture(
        name="demo-stage2-x", weights={"a": 1.0}, previous={}, explanation="", constraints=constraints
    )
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


# The demo config with declared token counts, so the constraints are built like a stage's
# (`smollm.runs.rebalance_inputs`) without building sources: synthetic_math's epoch cap is
# the weight w with 600000 w + 400000 (w - 0.2) = 6 epochs x 40000 - 100000 consumed: w = 0.22
# (stage 2 takes w, stage 3 can come down to w - max_change 0.2 and must fit in what is left).
# The hand rules on a three-source stage-1 mixture (noisy_web at 0), math at 6 epochs.
DECLARED = [
    "rebalance=demo_rules",
    *THREE_SOURCES,
    "data.sources.synthetic_math.max_epochs=6",
    "data.sources.noisy_web.available_tokens=100000000",
    "data.sources.stdlib_prose.available_tokens=100000000",
    "data.sources.stdlib_code.available_tokens=100000000",
    "data.sources.synthetic_math.available_tokens=40000",
]
MATH_LOW = {"category/math": 0.3, "category/code": 0.9, "category/knowledge": 0.5}
WITHIN = {"stdlib_prose": 0.55, "stdlib_code": 0.25, "synthetic_math": 0.2}
PAST_EPOCH_CAP = {"stdlib_prose": 0.5, "stdlib_code": 0.2, "synthetic_math": 0.3}


def proposed_mixture(overrides=(), workdir=None):
    """The demo rules' real proposal after stage1, as the rebalance task hands it to approval."""
    from flows.compose import compose
    from smollm.rebalance import propose
    from smollm.results import ProposedMixture
    from smollm.runs import rebalance_inputs

    work = [f"workdir={workdir}"] if workdir else []
    cfg = compose([*DECLARED, *work, *overrides])
    consumed = {"stdlib_prose": 600_000, "stdlib_code": 300_000, "synthetic_math": 100_000}
    inputs = rebalance_inputs(cfg, 0, consumed, {}, MATH_LOW, None, [])
    p = propose(cfg.rebalance, inputs)
    proposed = ProposedMixture(
        name="demo-stage2-test",
        weights=p.weights,
        previous=p.previous,
        explanation=p.markdown("Next mixture for stage2"),
        constraints=inputs.constraints,
    )
    return cfg, proposed


def test_an_edit_is_held_to_the_constraints_the_proposal_was_held_to():
    from flows.approval import check_constraints
    from smollm.config import ConfigError

    _, proposed = proposed_mixture()
    assert proposed.previous == {"stdlib_prose": 0.6, "stdlib_code": 0.3, "synthetic_math": 0.1}
    assert proposed.weights["synthetic_math"] == pytest.approx(0.22)  # the rule's +0.15, capped
    assert check_constraints(proposed, WITHIN, override=False) == ()
    _, loose = proposed_mixture(["rebalance.max_change=1"])
    cases = [
        (
            proposed,
            {"stdlib_prose": 0.35, "stdlib_code": 0.45, "synthetic_math": 0.2},
            "stdlib_prose: 0.35 is more than max_change 0.2 below 0.6",
        ),
        (
            proposed,
            PAST_EPOCH_CAP,
            "synthetic_math: 0.3 exceeds the epoch cap 0.22 (6 epochs of 40000 tokens, 100000 consumed, over 600000 tokens"
            " and 400000 later ones that come down by at most max_change 0.2 a stage)",
        ),
        (
            proposed,
            {"stdlib_prose": 0.7, "synthetic_math": 0.3},
            "stdlib_code: 0 is below min_weight 0.05; mixture.weights.stdlib_code: 0 is more than max_change 0.2 below 0.3; mixture.weights.synthetic_math: 0.3 exceeds the epoch cap",
        ),
        (
            loose,
            {"stdlib_prose": 0.3, "stdlib_code": 0.05, "synthetic_math": 0.65},
            "synthetic_math: 0.65 exceeds max_weight 0.6",
        ),
        (
            loose,
            {"stdlib_prose": 0.05, "stdlib_code": 0.75, "synthetic_math": 0.2},
            "stdlib_prose: 0.05 is below min_weight 0.1",
        ),
    ]
    for which, weights, message in cases:
        with pytest.raises(ConfigError, match="^" + re.escape("mixture.weights." + message)) as err:
            check_constraints(which, weights, override=False)
        assert "\n" not in str(err.value) and str(err.value).endswith("(tick override_constraints to accept it anyway)")
    overridden = check_constraints(proposed, PAST_EPOCH_CAP, override=True)
    assert overridden == (
        "mixture.weights.synthetic_math: 0.3 exceeds the epoch cap 0.22 (6 epochs of 40000 tokens, 100000 consumed, over"
        " 600000 tokens and 400000 later ones that come down by at most max_change 0.2 a stage)",
    )


def provenance(path) -> dict:
    """The provenance header of a generated mixture (YAML in comments, before `why:`)."""
    lines = path.read_text().splitlines()[2:]  # the mark and generated_at
    return yaml.safe_load("\n".join(line[2:] for line in lines[: lines.index("# why:")]))


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def approve_in_a_flow(tmp_path, answers):
    """`approve_next` in a real flow run that pauses on the test server, answered by a person
    thread posting `answers` (run inputs) in turn; the forms it saw, the result, the tracker."""
    from prefect import flow
    from prefect.flow_runs import resume_flow_run

    from flows.approval import approve_next
    from smollm.results import StageResult
    from smollm.tracking import make_tracker

    cfg, proposed = proposed_mixture(ASK, workdir=tmp_path / "work")
    tracker = make_tracker(cfg.tracking, tmp_path / "work")
    run_id = tracker.start_run("stage/stage1")
    stage = StageResult(
        **{"stage": "stage1", "stage_index": 0, "mixture": "demo_stage1", "init": None, "checkpoint": "-"},
        **{"identity": "-", "trained": True, "data_built": [], "tokens_seen": 1_000_000, "summary": {}},
        **{"evals": {}, "next_mixture": proposed.name, "proposal": proposed, "stage_run_id": run_id, "sweeps": {}},
        steps=[],
    )
    seen: set = set()
    forms: list = []

    def person():
        for answer in answers:
            try:
                run = paused_run(seen, timeout=60)
            except TimeoutError:  # not asked again: the assertions on `forms` say so
                return
            forms.append(form(run)[1])
            resume_flow_run(run.id, run_input=answer)

    @flow(name="approval-test")
    def approval_flow():
        return approve_next(cfg, stage, "stage2", tracker)

    thread = threading.Thread(target=person, daemon=True)
    thread.start()
    mixture, after = approval_flow()
    thread.join(timeout=60)
    return forms, mixture, after, tracker, run_id


@pytest.mark.slow
def test_an_edit_past_a_constraint_is_refused_naming_it_and_accepted_with_override_constraints(tmp_path, harness):
    from flows.approval import rows

    answers = [{"weights": rows(PAST_EPOCH_CAP)}, {"weights": rows(PAST_EPOCH_CAP), "override_constraints": True}]
    forms, mixture, stage, tracker, run_id = approve_in_a_flow(tmp_path, answers)
    broken = (
        "mixture.weights.synthetic_math: 0.3 exceeds the epoch cap 0.22 (6 epochs of 40000 tokens, 100000 consumed, over"
        " 600000 tokens and 400000 later ones that come down by at most max_change 0.2 a stage)"
    )
    assert len(forms) == 2 and "Your edit was rejected" not in forms[0]
    assert f"Your edit was rejected:** `{broken} (tick override_constraints" in forms[1]  # asked again
    assert stage.approval == {"how": "edited", "mixture": mixture, "overridden_constraints": [broken]}
    written = tmp_path / "work" / "generated_conf" / "mixture" / f"{mixture}.yaml"
    assert yaml.safe_load(written.read_text())["weights"] == PAST_EPOCH_CAP  # the next stage trains on it
    header = provenance(written)
    assert header["overridden_constraints"] == [broken]
    assert header["constraints"]["sources"]["synthetic_math"]["available_tokens"] == 40000
    assert f"constraint overridden: {broken}" in written.read_text()  # in the reasons too
    assert tracker.load_dict(run_id, "rebalance/approval.json")["overridden_constraints"] == [broken]
    tags = tracker.client.get_run(run_id).data.tags
    assert tags["smollm.approval"] == "edited" and tags["smollm.approval.overridden_constraints"] == broken


@pytest.mark.slow
def test_an_edit_within_the_constraints_is_accepted_and_recorded_as_holding_them(tmp_path, harness):
    from flows.approval import rows

    forms, mixture, stage, tracker, run_id = approve_in_a_flow(tmp_path, [{"weights": rows(WITHIN), "note": "less"}])
    assert len(forms) == 1 and stage.approval == {"how": "edited", "mixture": mixture, "overridden_constraints": []}
    written = tmp_path / "work" / "generated_conf" / "mixture" / f"{mixture}.yaml"
    assert yaml.safe_load(written.read_text())["weights"] == WITHIN
    assert provenance(written)["overridden_constraints"] == []
    assert "within the proposal's constraints" in written.read_text()
    assert tracker.load_dict(run_id, "rebalance/approval.json")["overridden_constraints"] == []
