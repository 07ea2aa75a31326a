"""A step's identity is everything its output depends on: an edit of any module in its import
closure, or another version of a library the closure imports, makes exactly the dependent steps
"to run" in `smollm plan`, and nothing else; a hub source's declared revision is in its identity.

The closure is read from a copy of the source tree (`step_code.ROOT` pointed at it), so the edits
never touch the checkout; the work dir is the session's built data (tokenizer and sources
complete), so "to run" is the plan's own verdict on real outputs.
"""

import json
import shutil
import subprocess
import sys

import pytest

from flows.plan import make_plan
from smollm import step_code
from smollm.config import SourceConfig
from smollm.data.sources import hub_commit, is_hub_id
from smollm.stage import source_slice
from tests.test_plan import _tiny

CHECKOUT = step_code.ROOT
CACHED = (step_code.imported_names, step_code.closure, step_code.module_hash, step_code.libraries)


def _forget() -> None:
    for function in CACHED:
        function.cache_clear()


@pytest.fixture(scope="module")
def copied(tmp_path_factory):
    """A copy of the project's modules (made once: each test restores what it edits)."""
    root = tmp_path_factory.mktemp("tree")
    shutil.copytree(CHECKOUT / "smollm", root / "smollm", ignore=shutil.ignore_patterns("__pycache__"))
    return root


@pytest.fixture(scope="module")
def baseline(built, copied):
    """The plan's steps with the copy hashed, before any edit."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(step_code, "ROOT", copied)
        _forget()
        yield _steps(built)
    _forget()


@pytest.fixture
def tree(copied, baseline, monkeypatch):
    """The copy, hashed in place of the checkout's; edits of it are undone after the test."""
    originals = {p: p.read_bytes() for p in (copied / "smollm").rglob("*.py")}
    monkeypatch.setattr(step_code, "ROOT", copied)
    _forget()
    yield copied
    for path, data in originals.items():
        if path.read_bytes() != data:
            path.write_bytes(data)
    _forget()


def _steps(built) -> dict[tuple[str, str], tuple[str, bool]]:
    cfg = built[0]
    plan = make_plan([f"workdir={cfg.workdir}", *_tiny(cfg)])
    return {
        (s.kind, s.name.split("-")[0] if s.kind == "eval" else s.name): (s.identity, s.complete)
        for s in plan.stages[0].steps
    }


def _edit(tree, module: str) -> None:
    path = tree.joinpath(*module.split(".")).with_suffix(".py")
    path.write_text(path.read_text() + "\n# an edit\n")
    _forget()


def _changed(before: dict, after: dict) -> set[str]:
    assert before.keys() == after.keys()
    return {key[0] for key, (identity, _) in before.items() if after[key][0] != identity}


def test_identities_do_not_depend_on_where_the_tree_is(built, tree, baseline, monkeypatch):
    copy = _steps(built)
    assert copy == baseline
    assert all(complete for (kind, _), (_, complete) in copy.items() if kind in ("tokenizer", "tokens"))
    monkeypatch.setattr(step_code, "ROOT", CHECKOUT)
    _forget()
    assert _steps(built) == copy


@pytest.mark.parametrize(
    ("module", "dependent"),
    [
        ("smollm.data.blend", {"train", "eval"}),  # which source each sample comes from
        ("smollm.spikes", {"train", "eval"}),
        ("smollm.checkpoint", {"train", "eval"}),
        ("smollm.distributed", {"train", "eval"}),
        ("smollm.data.shards", {"tokens", "train", "eval"}),
        ("smollm.data.tokenizer", {"tokenizer", "tokens", "train", "eval"}),
        ("smollm.evaluation.lighteval_tasks", {"eval"}),
        ("smollm.rebalance.rules", set()),  # decides mixtures, computes no step
        ("smollm.plan", set()),
    ],
)
def test_an_edit_makes_exactly_the_dependent_steps_to_run(built, tree, baseline, module, dependent):
    before = baseline
    _edit(tree, module)
    after = _steps(built)
    assert _changed(before, after) == dependent
    for (kind, name), (_, complete) in after.items():
        if kind in ("tokenizer", "tokens"):  # built by the session: complete unless their code changed
            assert complete == (kind not in dependent), (kind, name)


@pytest.mark.parametrize(
    ("distribution", "dependent"),
    [
        ("torch", {"train", "eval"}),
        ("numpy", {"tokens", "train", "eval"}),
        ("tokenizers", {"tokenizer", "tokens", "train", "eval"}),
        ("lighteval", {"eval"}),
        ("prefect", set()),  # the orchestrator's: no step imports it
    ],
)
def test_another_library_version_makes_exactly_its_users_to_run(
    built, tree, baseline, monkeypatch, distribution, dependent
):
    before = baseline
    real = step_code.metadata.version
    monkeypatch.setattr(
        step_code.metadata, "version", lambda name: "0.0.0-other" if name == distribution else real(name)
    )
    _forget()
    assert _changed(before, _steps(built)) == dependent


def test_the_closure_is_read_from_the_source_without_importing():
    closure = step_code.closure(("smollm.train",))
    assert {"smollm.data.blend", "smollm.spikes", "smollm.checkpoint", "smollm.distributed"} <= set(closure)
    assert "smollm.evaluation.lighteval_backend" in step_code.closure(("smollm.evaluation.lighteval_backend",))
    libraries = step_code.libraries(("smollm.evaluation.lighteval_backend",))
    assert {"lighteval", "torch", "transformers", "python"} <= set(libraries)
    assert "lighteval" not in step_code.libraries(("smollm.train",))
    with pytest.raises(ValueError, match=r"^step code: no source for module 'smollm\.nope'"):
        step_code.closure(("smollm.nope",))
    code = (
        "import sys; from smollm import step_code; "
        "step_code.libraries(('smollm.evaluation.lighteval_backend',)); print('lighteval' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"  # lighteval's import takes seconds: the plan never pays it


def test_a_hub_source_s_revision_is_part_of_its_identity_and_is_read_as_declared(tmp_path, monkeypatch):
    hub = SourceConfig(name="fw", loader="hf", path="HuggingFaceFW/fineweb-edu")
    pinned = SourceConfig(name="fw", loader="hf", path="HuggingFaceFW/fineweb-edu", revision="a" * 40)
    assert source_slice(hub) != source_slice(pinned) and source_slice(pinned)["revision"] == "a" * 40
    assert is_hub_id(hub.path) and not is_hub_id(str(tmp_path)) and not is_hub_id("parquet")
    assert hub_commit(pinned) is None  # offline (HF_HUB_OFFLINE): the cached copy of the declared revision
    local = SourceConfig(name="fw", loader="hf", path=str(tmp_path), revision="v1")
    assert hub_commit(local) is None  # a local stand-in has no hub revision


def test_a_hub_revision_is_resolved_to_the_commit_the_hub_names_when_it_answers(monkeypatch):
    """A loopback server answering the hub's dataset-info route (the call `hub_commit` makes)
    stands in for the hub, which this machine cannot reach."""
    import http.server
    import threading

    from huggingface_hub import constants

    asked = []

    class Hub(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            known = {"/api/datasets/org/data/revision/v1": "b" * 40, "/api/datasets/org/data": "c" * 40}
            if self.path not in known:  # the client's own calls (huggingface_hub asks for more than we do)
                self.send_error(404)
                return
            asked.append(self.path)
            sha = known[self.path]
            body = json.dumps({"id": "org/data", "sha": sha}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
        tagged = SourceConfig(name="d", loader="hf", path="org/data", revision="v1")
        assert hub_commit(tagged) == "b" * 40
        assert hub_commit(SourceConfig(name="d", loader="hf", path="org/data")) == "c" * 40  # its default branch
    finally:
        server.shutdown()
    assert asked == ["/api/datasets/org/data/revision/v1", "/api/datasets/org/data"]


def test_a_complete_source_never_asks_the_hub(built, monkeypatch):
    """The commit is asked only when a source is built: a cache hit works with the hub away."""
    import smollm.stage

    def away(source):
        raise AssertionError(f"asked the hub for {source.name}")

    monkeypatch.setattr(smollm.stage, "hub_commit", away)
    cfg, tokenizer, sources = built
    for name, result in sources.items():
        again = smollm.stage.build_source(cfg, name, tokenizer)
        assert not again.computed and again.identity == result.identity
