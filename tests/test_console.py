"""The console of `smollm run`: the stages, a progress bar per training run and evaluation, the
evaluations, each rebalance's decision with its reasons, the final table — no library noise.

Issue 17 counted 390 lines for `make demo`: 264 of them bytecode disassembly (dill's `dis`
output, captured from stdout while datasets fingerprints a dataset, turned into log lines by
the flows' `log_prints`) and 59 library progress bars. The command runs in its own process,
as a user runs it (its console is set up there: `flows/console.py`), with none of Prefect's or
the console's variables from this test session's environment.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import tiny_overrides

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

STAGES = ("stage1", "stage2", "stage3")
BUDGETS = [f"pipeline.stages.{index}.train_tokens=10240" for index in range(len(STAGES))]  # 20 steps each
SMALL_EVAL = [f"eval.tasks.{index}.num_items=16" for index in range(8)]  # conf/eval/offline.yaml's 8 tasks
PROGRESS = re.compile(r"^(?P<label>[^|:]+): +\d+%\|")  # one frame of a tqdm bar
NOISE = re.compile(
    r"\b(RESUME|LOAD_GLOBAL|LOAD_CONST|LOAD_FAST|LOAD_ATTR|RETURN_VALUE)\b"  # dis.dis output
    r"|Generating \w+ split|Creating parquet|Loading weights|Writing model shards|^Map\b"  # library progress bars
    r"|Starting temporary server|Task run '[^']+' - Finished in state Completed\(\)"  # Prefect's chatter
)
# the user's own settings of what the console shows, if any, would hide what this test looks for
USER_SETTINGS = (
    "PREFECT_",
    "MLFLOW_LOGGING_LEVEL",
    "HF_DATASETS_DISABLE_PROGRESS_BARS",
    "HF_HUB_DISABLE_PROGRESS_BARS",
)


@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory):
    """Prefect's database for these runs: the temporary server must not share ~/.prefect."""
    return tmp_path_factory.mktemp("prefect")


def run_command(argv: list[str], prefect_home, code: str = "") -> subprocess.CompletedProcess:
    """`smollm <argv>` in a fresh interpreter (after `code`), stdout and stderr interleaved."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(USER_SETTINGS)}
    env.update({"PREFECT_HOME": str(prefect_home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
    program = f"import sys; {code}\nfrom flows.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", program, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        timeout=900,
    )


@pytest.fixture(scope="module")
def console(built, prefect_home) -> list[str]:
    """The demo pipeline at 20 steps a stage and 16 items an evaluation task, with progress bars,
    on the session's built data: every line and progress-bar frame it printed."""
    workdir = built[0].workdir
    overrides = [o for o in tiny_overrides(workdir) if o != "train.progress=false" and "train_tokens" not in o]
    argv = ["run", *overrides, *BUDGETS, *SMALL_EVAL, "tracking.experiment=smollm-console"]
    done = run_command(argv, prefect_home)
    assert done.returncode == 0, done.stdout[-3000:]
    return [line.rstrip() for line in re.split(r"[\r\n]", done.stdout) if line.strip()]


def lines_of(console: list[str]) -> list[str]:
    """What is left once the progress bars' frames are removed."""
    return [line for line in console if not PROGRESS.match(line)]


def test_no_disassembly_no_library_progress_bars_no_prefect_chatter(console):
    noise = [line for line in console if NOISE.search(line)]
    assert not noise, f"{len(noise)} lines of noise, e.g.:\n" + "\n".join(noise[:10])


def test_a_progress_bar_per_training_run_and_evaluation_and_no_other(console):
    labels = {PROGRESS.match(line)["label"] for line in console if PROGRESS.match(line)}
    assert labels == {f"{kind} {stage}" for kind in ("train", "evaluate") for stage in STAGES}


def test_the_stages_evaluations_decisions_and_final_table_are_shown(console):
    text = "\n".join(lines_of(console))
    for index, stage in enumerate(STAGES):
        assert f"stage {index + 1}/3: {stage} on mixture " in text
        assert re.search(
            rf"{stage} evaluated at {10240 * (index + 1)} tokens: code [\d.]+, knowledge [\d.]+, math", text
        )
    for stage in STAGES[:2]:
        decision = re.search(rf"rebalance after {stage} proposes (\S+?): noisy_web [\d.]+ -> [\d.]+, .*\n", text)
        assert decision, f"no decision after {stage}"
        assert f"stage {STAGES.index(stage) + 2}/3: {STAGES[STAGES.index(stage) + 1]} on mixture {decision[1]}" in text
        reasons = text[decision.end() :].splitlines()[:3]
        assert [r.split(":")[0] for r in reasons] == [
            "  rule math_below_target",
            "  rule code_below_target",
            "  rule knowledge_regressed",
        ]
    assert "rebalance after stage3" not in text  # the last stage has no next one
    assert "pipeline demo finished" in text
    for index, stage in enumerate(STAGES):
        assert re.search(rf"^{stage} +True +{10240 * (index + 1)} +[\d.]+->[\d.]+ +\{{'code'", text, re.M)


def test_no_warning_is_repeated_and_the_console_is_short(console):
    lines = lines_of(console)
    untimed = [re.sub(r"^\d\d:\d\d:\d\d\.\d+ \| ", "", line) for line in lines]
    warnings = [line for line in untimed if "warn" in line.lower()]
    assert len(warnings) == len(set(warnings)), "\n".join(warnings)
    assert len(lines) <= 60, "\n".join(lines)


def test_a_failing_run_still_prints_its_traceback(tmp_path, prefect_home):
    """A bug inside a task: the console keeps Prefect's ERROR lines and the command's traceback."""
    boom = "import smollm.stage as s\ndef boom(cfg): raise RuntimeError('boom: the tokenizer broke')\ns.prepare_tokenizer = boom"
    done = run_command(["run", *tiny_overrides(tmp_path / "work")], prefect_home, code=boom)
    assert done.returncode != 0
    assert "Traceback (most recent call last)" in done.stdout
    assert "RuntimeError: boom: the tokenizer broke" in done.stdout
    assert re.search(r"ERROR +\| Task run 'build-tokenizer-\w+' - ", done.stdout), done.stdout[-3000:]
