"""The eval-drift guard (issue 17, item 5): each evaluation's suite fingerprint, in its step's
identity and its record, and the rebalance that refuses to compare scores across stages whose
evaluations differ (unless told to, which it records).

    PYTHONPATH=. python -m pytest tests/test_eval_drift.py -q

Fingerprints are computed from the real conf/eval suites, lighteval's installed task modules and
our own sources (edited copies of their text where a test changes a prompt function); the
rebalance reads real `EvalResult`s through `smollm.runs.rebalance_inputs`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from smollm.evaluation import EvalResult, EvalSuite
from smollm.evaluation import fingerprint as fp
from smollm.evaluation import source_reading as sr
from smollm.evaluation.fingerprint import SuiteFingerprint, suite_fingerprint
from smollm.evaluation.result import category_means
from smollm.evaluation.suite import lighteval_family_file
from smollm.rebalance import EvalDrift, RebalanceInputs, propose
from smollm.schema import ConfigError
from smollm.steps import StepResult
from smollm.tracking import NullTracker
from tests.conftest import tiny_overrides

REPO = Path(__file__).resolve().parents[1]
OFFLINE = yaml.safe_load((REPO / "conf" / "eval" / "offline.yaml").read_text())
BUILTIN = {
    "name": "builtin",
    "tasks": [
        {"name": "hellaswag_cf", "kind": "lighteval", "task": "hellaswag", "category": "knowledge"},
        {"name": "arc_easy_cf", "kind": "lighteval", "task": "arc:easy", "category": "knowledge"},
        {"name": "mmlu_mcf", "kind": "lighteval", "task": "mmlu", "category": "knowledge", "formulation": "mcf"},
        {"name": "gsm8k", "kind": "lighteval", "task": "gsm8k", "category": "math", "formulation": "native"},
    ],
}
REFUSAL = (
    "rebalance: task prose_next_cf changed between stage1 and stage2 (items.context_chars: 192 -> 100), "
    "read by rule knowledge_regressed (category/knowledge); set rebalance.accept_eval_drift=true to compare anyway"
)


def suite(base: dict, *, suite_changes: dict | None = None, **task_changes: dict) -> EvalSuite:
    """`base` with some suite fields and some tasks' fields (by task name) changed."""
    data = copy.deepcopy(base)
    data.update(suite_changes or {})
    data["tasks"] = [{**task, **task_changes.get(task["name"], {})} for task in data["tasks"]]
    return EvalSuite.from_dict(data)


def changed(before: SuiteFingerprint, after: SuiteFingerprint, task: str) -> set[str]:
    old, new = before.compared(task), after.compared(task)
    assert old is not None and new is not None
    return {key for key in new if old[key] != new[key]}


# --- the fingerprint --------------------------------------------------------------------------


def test_the_fingerprint_is_the_same_in_another_process_and_imports_no_lighteval():
    code = (
        "import json, sys, yaml\n"
        "from smollm.evaluation import EvalSuite\n"
        "from smollm.evaluation.fingerprint import suite_fingerprint\n"
        "digests = [suite_fingerprint(EvalSuite.from_dict(yaml.safe_load(open(f'conf/eval/{n}.yaml')))).digest\n"
        "           for n in ('offline', 'smollm2_base')]\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'lighteval', 'torch', 'transformers', 'datasets'})\n"
        "print(json.dumps([digests, heavy]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    digests, heavy = json.loads(done.stdout)
    here = [suite_fingerprint(EvalSuite.from_dict(yaml.safe_load((REPO / f"conf/eval/{n}.yaml").read_text())))
            for n in ("offline", "smollm2_base")]  # fmt: skip
    assert digests == [f.digest for f in here] and heavy == []
    assert SuiteFingerprint.from_dict(json.loads(json.dumps(here[1].to_dict()))) == here[1]
    # what the brief names, per task
    gsm8k = here[1].tasks["gsm8k_5shot"]
    assert gsm8k.num_fewshot == 5 and gsm8k.fewshot_seed == fp.FEWSHOT_SEED
    assert gsm8k.metrics == ["Metrics.expr_gold_metric"] and gsm8k.dataset_path == "openai/gsm8k"
    assert gsm8k.generation == {"generation_size": 256, "stop_sequence": ["Question:"]}
    assert here[1].tasks["mmlu_pro_mcf"].dataset_revision == "3373e0b32277875b8db2aa555a333b78a08477ea"
    assert here[1].tasks["mmlu_cf"].members == 57 and here[1].lighteval == "0.13.0"


def test_few_shot_count_formulation_and_metric_change_a_tasks_fingerprint_and_nothing_else():
    base = suite_fingerprint(suite(BUILTIN))
    shots = suite_fingerprint(suite(BUILTIN, gsm8k={"num_fewshot": 5}))
    assert changed(base, shots, "gsm8k") == {"num_fewshot", "fewshot_seed"}
    assert all(not changed(base, shots, t) for t in ("hellaswag_cf", "arc_easy_cf", "mmlu_mcf"))
    # lighteval's own prompt and metric instead of our cloze and acc/acc_norm
    native = suite_fingerprint(suite(BUILTIN, hellaswag_cf={"formulation": "native"}))
    assert changed(base, native, "hellaswag_cf") == {"formulation", "prompt_function", "metrics"}
    assert native.tasks["hellaswag_cf"].metrics == ["Metrics.exact_match"]  # as hellaswag.py declares it
    assert base.tasks["hellaswag_cf"].metrics == [
        "LogLikelihoodAccMetric()",
        "LogLikelihoodAccMetric(normalization=LogProbCharNorm())",
    ]
    cloze = suite_fingerprint(suite(BUILTIN, mmlu_mcf={"formulation": "cf"}))
    assert changed(base, cloze, "mmlu_mcf") == {"formulation", "prompt_function"}
    # what does not change a score does not change the fingerprint
    same = suite(BUILTIN, suite_changes={"name": "renamed", "batch_size": 8, "device": "cuda", "save_details": False})
    assert suite_fingerprint(same).digest == base.digest
    # custom tasks: the items' settings and the suite seed
    offline = suite_fingerprint(suite(OFFLINE))
    assert changed(offline, suite_fingerprint(suite(OFFLINE, suite_changes={"seed": 1})), "math_add1_cf") == {"items"}
    longer = suite_fingerprint(suite(OFFLINE, prose_next_cf={"context_chars": 100}))
    assert changed(offline, longer, "prose_next_cf") == {"items"} and not changed(offline, longer, "code_next_cf")


def test_a_prompt_functions_source_and_what_it_reaches_change_its_hash_and_nothing_else():
    path = lighteval_family_file("arc")
    assert path is not None
    source = path.read_text()
    base = sr.declared_task(source, "arc:easy")
    prompt = source.replace('query=f"Question: {line', 'query=f"Q: {line', 1)
    metric = source.replace("Metrics.loglikelihood_acc,", "Metrics.loglikelihood_acc_norm,", 2)
    unreached = source.replace('choices = record["choices"]["text"]', 'choices = list(record["choices"]["text"])')
    assert len({source, prompt, metric, unreached}) == 4  # every edit applied
    edited = {name: sr.declared_task(text, "arc:easy") for name, text in [("prompt", prompt), ("metric", metric)]}
    assert {k for k in base if base[k] != edited["prompt"][k]} == {"prompt_function", "declaration"}
    assert {k for k in base if base[k] != edited["metric"][k]} == {"metrics", "declaration"}
    assert edited["metric"]["metrics"] == ["Metrics.loglikelihood_acc_norm"]
    # `record_to_sample` is another config field (inspect-ai's), not reached from arc_prompt
    assert sr.declared_task(unreached, "arc:easy")["prompt_function"] == base["prompt_function"]
    # our own prompt functions and item builders: each task kind's own, with their helpers
    tasks, items = sr.module_source(fp.TASKS_MODULE), sr.module_source(fp.ITEMS_MODULE)
    mcq, bpb = sr.source_digest(tasks, ["mcq_doc"]), sr.source_digest(tasks, ["bpb_doc"])
    bpb_edited = tasks.replace('scored = line["choices"][0]', 'scored = str(line["choices"][0])')
    assert bpb_edited != tasks and sr.source_digest(bpb_edited, ["bpb_doc"]) != bpb
    assert sr.source_digest(bpb_edited, ["mcq_doc"]) == mcq
    letters = items.replace('LETTERS = "ABCDEFGHIJ"', 'LETTERS = "abcdefghij"')
    assert letters != items
    assert sr.source_digest(letters, ["_mcq"]) != sr.source_digest(items, ["_mcq"])  # a constant it reaches
    assert sr.source_digest(letters, ["_bpb_items"]) == sr.source_digest(items, ["_bpb_items"])
    metrics = tasks.replace("LogLikelihoodAccMetric(normalization=LogProbCharNorm())", "LogLikelihoodAccMetric()")
    assert sr.returned_list(metrics, "mcq_metrics") == ["LogLikelihoodAccMetric()", "LogLikelihoodAccMetric()"]


def test_a_local_dataset_counts_by_its_contents_and_a_held_out_source_by_its_revision(tmp_path):
    (tmp_path / "test.jsonl").write_text('{"ctx": "a"}\n')
    local = suite(BUILTIN, hellaswag_cf={"dataset_path": str(tmp_path)})
    first = suite_fingerprint(local).tasks["hellaswag_cf"]
    assert first.dataset_path == str(tmp_path) and first.dataset_revision is None and first.dataset_digest
    (tmp_path / "test.jsonl").write_text('{"ctx": "b"}\n')
    assert suite_fingerprint(local).tasks["hellaswag_cf"].dataset_digest != first.dataset_digest
    (tmp_path / "test.jsonl").write_text('{"ctx": "a"}\n')
    assert suite_fingerprint(local).tasks["hellaswag_cf"].dataset_digest == first.dataset_digest
    offline = suite_fingerprint(suite(OFFLINE), {"stdlib_prose": "abc123"})
    assert offline.tasks["prose_next_cf"].dataset_path == "heldout:stdlib_prose"
    assert offline.tasks["prose_next_cf"].dataset_revision == "abc123"
    assert offline.tasks["code_next_cf"].dataset_revision is None


@pytest.mark.slow
def test_what_is_read_from_source_agrees_with_lighteval_and_our_tables():
    """The one test here that imports lighteval (~10 s): the static reading against the real objects."""
    from smollm.evaluation import lighteval_builtin

    tables = fp.builtin_tables()
    assert tables.adapters == {f: (t.__name__, a.__name__) for f, (t, a) in lighteval_builtin.ADAPTERS.items()}
    assert set(tables.native_metrics) == set(lighteval_builtin.NATIVE_METRICS)
    for task in suite(BUILTIN).tasks:
        resolved = lighteval_builtin.resolve(task, 0)
        path = lighteval_family_file(str(task.task).split(":")[0])
        assert path is not None
        declared = sr.declared_group(path.read_text(), str(task.task))
        config = resolved.configs[0]
        assert declared.get("members", 1) == len(resolved.configs)
        assert declared["dataset_path"] == config.hf_repo and declared["dataset_revision"] == config.hf_revision
        assert declared["fewshot_split"] == config.few_shots_split
        assert declared["generation"]["generation_size"] == config.generation_size


# --- the evaluation's identity and record ----------------------------------------------------


def test_the_eval_step_identity_holds_the_fingerprint(tmp_path, monkeypatch):
    from flows.compose import compose
    from smollm.stage import eval_step

    cfg = compose(tiny_overrides(tmp_path / "work"))
    checkpoint = StepResult(tmp_path / "train" / "demo-stage1-abc", "a" * 64, computed=False)
    sources = {n: StepResult(tmp_path / n, f"{n}-{'b' * 40}", computed=False) for n in sorted(cfg.data.sources)}
    step = eval_step(cfg, checkpoint, sources)
    expected = suite_fingerprint(cfg.eval_suite, {n: r.identity[:16] for n, r in sources.items()})
    assert step.config["fingerprint"] == expected.to_dict()
    assert (
        step.config["fingerprint"]["tasks"]["prose_next_cf"]["dataset_revision"]
        == sources["stdlib_prose"].identity[:16]
    )
    # the same suite config under another lighteval: another evaluation
    monkeypatch.setattr(fp, "lighteval_version", lambda: "0.14.0")
    upgraded = eval_step(cfg, checkpoint, sources)
    assert upgraded.config["suite"] == step.config["suite"] and upgraded.identity != step.identity
    assert upgraded.config["fingerprint"]["lighteval"] == "0.14.0"


def test_results_json_carries_the_fingerprint():
    fingerprint = suite_fingerprint(suite(OFFLINE)).to_dict()
    result = EvalResult(suite="offline", metrics={"a/acc": 0.5}, categories={}, fingerprint=fingerprint)
    again = EvalResult.from_json(result.to_json())
    assert again == result and SuiteFingerprint.from_dict(again.fingerprint).digest == fingerprint["digest"]


# --- the rebalance ---------------------------------------------------------------------------


def evaluated(eval_suite: EvalSuite, score: float) -> EvalResult:
    """A result as `evaluate_checkpoint` returns it: every primary metric at `score`, the
    category means of those, the suite's fingerprint."""
    metrics = {f"{t.name}/{t.primary_metric}": score for t in eval_suite.tasks}
    return EvalResult(
        suite=eval_suite.name,
        metrics=metrics,
        categories=category_means(eval_suite, metrics),
        fingerprint=suite_fingerprint(eval_suite).to_dict(),
    )


def logged(result: EvalResult) -> dict[str, float]:
    """What `tracked_evaluate` logs of a result (and the stage flow keeps)."""
    return {**{f"eval/{k}": v for k, v in result.metrics.items()}, **{f"eval/category/{k}": v for k, v in result.categories.items()}}  # fmt: skip


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo config (rules: knowledge_regressed reads the change of category/knowledge) and
    its three sources as built data steps (manifests with their token counts)."""
    from flows.compose import compose

    root = tmp_path_factory.mktemp("drift")
    cfg = compose(tiny_overrides(root / "work"))
    sources = {}
    for name in sorted(cfg.data.sources):
        (root / name).mkdir()
        (root / name / "manifest.json").write_text(json.dumps({"num_tokens": 10**9}))
        sources[name] = StepResult(root / name, name, computed=False)
    return cfg, sources


def stage2_inputs(demo, before: EvalResult, after: EvalResult, *, fingerprints: bool = True) -> RebalanceInputs:
    """The rebalance after stage2 of the demo (`rebalance_inputs`), between two results."""
    from smollm.runs import decision_metrics, rebalance_inputs

    cfg, sources = demo
    return rebalance_inputs(
        cfg,
        1,
        {},
        sources,
        decision_metrics(logged(after), {}),
        decision_metrics(logged(before), {}),
        [],
        fingerprint=SuiteFingerprint.from_dict(after.fingerprint) if fingerprints else None,
        previous_fingerprint=SuiteFingerprint.from_dict(before.fingerprint) if fingerprints else None,
    )


def test_a_rule_comparing_stages_refuses_when_a_task_it_reads_was_evaluated_differently(demo, tmp_path):
    from smollm.runs import tracked_rebalance

    cfg, _ = demo
    stage1, stage2 = (
        evaluated(suite(OFFLINE), 0.4),
        evaluated(suite(OFFLINE, prose_next_cf={"context_chars": 100}), 0.3),
    )
    inputs = stage2_inputs(demo, stage1, stage2)
    assert inputs.previous_stage == "stage1" and inputs.stage == "stage2"
    with pytest.raises(EvalDrift) as refused:
        propose(cfg.rebalance, inputs)
    assert str(refused.value) == REFUSAL and isinstance(refused.value, ConfigError)
    # nothing is written or recorded
    tracker = NullTracker()
    run = tracker.start_run("stage/stage2")
    cfg = dataclasses.replace(cfg, workdir=str(tmp_path))
    with pytest.raises(EvalDrift):
        tracked_rebalance(cfg, inputs, tracker, stage_run_id=run, pipeline_run_id=None, mixture_name="demo-stage3-x")
    assert tracker.runs[run]["artifacts"] == {} and not (tmp_path / "generated_conf").exists()
    # a task that joins the category average changes what the average means
    added = {"name": "prose_next_mcf", "kind": "continuation_mcq", "category": "knowledge", "source": "stdlib_prose", "formulation": "mcf"}  # fmt: skip
    joined = evaluated(EvalSuite.from_dict({**OFFLINE, "tasks": [*OFFLINE["tasks"], added]}), 0.3)
    with pytest.raises(
        EvalDrift, match=r"task prose_next_mcf changed between stage1 and stage2 \(suite: absent -> present\)"
    ):
        propose(cfg.rebalance, stage2_inputs(demo, stage1, joined))


def test_drift_no_rule_compares_across_stages_is_not_refused(demo):
    cfg, _ = demo
    stage1 = evaluated(suite(OFFLINE), 0.4)
    same = propose(cfg.rebalance, stage2_inputs(demo, stage1, evaluated(suite(OFFLINE), 0.3)))
    # math_add1_cf: read by a rule on this stage's value only; bpb_stdlib_prose: in no category average
    others = suite(OFFLINE, math_add1_cf={"num_items": 50}, bpb_stdlib_prose={"max_chars": 256})
    proposal = propose(cfg.rebalance, stage2_inputs(demo, stage1, evaluated(others, 0.3)))
    assert proposal.eval_drift == [] and proposal.weights == same.weights
    assert proposal.explanation == same.explanation
    # the first stage's rebalance compares nothing
    first = dataclasses.replace(stage2_inputs(demo, stage1, evaluated(others, 0.3)), previous_metrics=None)
    assert propose(cfg.rebalance, first).eval_drift == []


def test_accepted_drift_proceeds_and_is_recorded_in_the_mixture_and_mlflow(demo, tmp_path):
    from smollm.replay import recorded_decision, replay
    from smollm.runs import tracked_rebalance

    cfg, _ = demo
    accepting = dataclasses.replace(cfg, workdir=str(tmp_path), rebalance=dataclasses.replace(cfg.rebalance, accept_eval_drift=True))  # fmt: skip
    stage1 = evaluated(suite(OFFLINE), 0.4)
    drifted = stage2_inputs(demo, stage1, evaluated(suite(OFFLINE, prose_next_cf={"context_chars": 100}), 0.3))
    undrifted = stage2_inputs(demo, stage1, evaluated(suite(OFFLINE), 0.3))
    tracker = NullTracker()
    run = tracker.start_run("stage/stage2")
    path, proposal = tracked_rebalance(accepting, drifted, tracker, stage_run_id=run, pipeline_run_id=None, mixture_name="demo-stage3-x")  # fmt: skip
    line = "eval drift accepted (rebalance.accept_eval_drift=true): " + REFUSAL.split("rebalance: ", 1)[1].split(";")[0]
    assert proposal.eval_drift == [line] and proposal.explanation[0] == line
    assert proposal.weights == propose(cfg.rebalance, undrifted).weights  # the same decision, now on record
    header = provenance_of(path)
    assert header["accepted_eval_drift"] == [line]
    assert header["eval_fingerprint"] == drifted.fingerprint.digest != header["previous_eval_fingerprint"]
    artifacts = tracker.runs[run]["artifacts"]
    assert artifacts["rebalance/proposal.json"]["accepted_eval_drift"] == [line]
    assert artifacts["rebalance/proposal.json"]["policy"]["accept_eval_drift"] is True
    assert tracker.runs[run]["tags"]["smollm.eval_drift_accepted"] == "true"
    # the record replays: the recorded policy accepts again, one that does not refuses again
    decision = recorded_decision(tracker, run)
    assert decision is not None and decision.inputs.previous_fingerprint == drifted.previous_fingerprint
    assert replay([decision])[0]["same"]
    with pytest.raises(EvalDrift, match="task prose_next_cf changed"):
        replay([decision], cfg.rebalance)


def provenance_of(path: Path) -> dict:
    """The provenance a generated mixture's header holds (`write_mixture`: `# <yaml>` lines
    after the mark and the time, up to `# why:`)."""
    lines = path.read_text().splitlines()
    return yaml.safe_load("\n".join(line[2:] for line in lines[2 : lines.index("# why:")]))


def test_inputs_recorded_before_fingerprints_are_not_checked(demo):
    cfg, _ = demo
    stage1 = evaluated(suite(OFFLINE), 0.4)
    old = stage2_inputs(demo, stage1, evaluated(suite(OFFLINE, prose_next_cf={"context_chars": 100}), 0.3))
    record = {
        k: v for k, v in old.to_dict().items() if k not in ("fingerprint", "previous_fingerprint", "previous_stage")
    }
    assert propose(cfg.rebalance, RebalanceInputs.from_dict(record)).eval_drift == []


def test_the_plan_refuses_drift_between_stages_before_any_compute(tmp_path, capsys):
    from flows.cli import main
    from flows.plan import preflight

    overrides = [*tiny_overrides(tmp_path / "work"), "pipeline.stages.1.overrides=['eval.tasks.3.context_chars=100']"]
    with pytest.raises(ConfigError) as refused:
        preflight(overrides)
    assert str(refused.value) == REFUSAL
    assert main(["run", *overrides]) == 2 and REFUSAL in capsys.readouterr().err
    assert not (tmp_path / "work").exists()
    plan = preflight([*overrides, "rebalance.accept_eval_drift=true"])
    assert [w for w in plan.warnings if "eval drift accepted" in w] == [
        "rebalance after stage2: eval drift accepted: " + REFUSAL.split("rebalance: ", 1)[1].split(";")[0]
    ]
