"""Faults in the DAG's steps: a corrupted or truncated token shard is caught by its checksum (or
size) and rebuilt; a transient task failure is retried by Prefect, a persistent one fails the
flow with its cause, and a deterministic one (a bad value, a bug) is not retried."""

from __future__ import annotations

import pytest

from flows.compose import compose
from tests.conftest import tiny_overrides

pytestmark = pytest.mark.slow


@pytest.fixture
def math_source(tmp_path):
    from smollm import stage

    cfg = compose(tiny_overrides(tmp_path / "work"))
    tokenizer = stage.prepare_tokenizer(cfg)
    built = stage.build_source(cfg, "synthetic_math", tokenizer)
    return cfg, tokenizer, built


def _shard(output):
    return sorted(output.glob("shard-*.bin"))[0]


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "delete"])
def test_a_damaged_shard_is_detected_and_rebuilt(math_source, damage, capsys):
    from smollm import stage
    from smollm.data.shards import TokenizedSource

    cfg, tokenizer, built = math_source
    shard = _shard(built.output)
    good = shard.read_bytes()
    if damage == "flip a byte":
        shard.write_bytes(good[:100] + bytes([good[100] ^ 0xFF]) + good[101:])
    elif damage == "truncate":
        shard.write_bytes(good[: len(good) // 2])
    else:
        shard.unlink()
    assert TokenizedSource.problem(built.output) is not None
    again = stage.build_source(cfg, "synthetic_math", tokenizer)
    assert again.computed and again.output == built.output
    assert _shard(again.output).read_bytes() == good and TokenizedSource.problem(again.output) is None
    assert "; rebuilding it" in capsys.readouterr().err
    assert not stage.build_source(cfg, "synthetic_math", tokenizer).computed  # and then reused


def test_size_only_verification_still_catches_a_truncated_shard(math_source):
    from smollm.data.shards import TokenizedSource

    _, _, built = math_source
    shard = _shard(built.output)
    data = shard.read_bytes()
    shard.write_bytes(data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
    assert TokenizedSource.problem(built.output, checksum=False) is None  # same size: only the checksum sees it
    shard.write_bytes(data[:-2])
    assert "bytes, the manifest says" in TokenizedSource.problem(built.output, checksum=False)


def test_a_transient_task_failure_is_retried_and_a_persistent_one_fails_the_flow_with_its_cause(tmp_path, monkeypatch):
    from prefect import flow
    from prefect.testing.utilities import prefect_test_harness

    import smollm.stage
    from tasks.data import tokenizer_task as build_tokenizer

    cfg = compose(tiny_overrides(tmp_path / "work"))
    real = smollm.stage.prepare_tokenizer
    calls = {"n": 0}

    def flaky(config):
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError("the shared filesystem hiccuped")
        return real(config)

    @flow
    def builds(config):
        return build_tokenizer(config)

    with prefect_test_harness(server_startup_timeout=120):
        monkeypatch.setattr(smollm.stage, "prepare_tokenizer", flaky)
        state = builds(cfg, return_state=True)
        assert state.is_completed() and calls["n"] == 2  # retried once, then it worked

        def broken(config):
            calls["n"] += 1
            raise OSError("disk full")

        monkeypatch.setattr(smollm.stage, "prepare_tokenizer", broken)
        calls["n"] = 0
        failed = builds(cfg, return_state=True)
        assert failed.is_failed() and calls["n"] == 2  # the retry failed too
        assert "OSError: disk full" in failed.message

        def wrong(config):
            calls["n"] += 1
            raise ValueError("tokenizer.vocab_size: must be > 0, got 0")

        monkeypatch.setattr(smollm.stage, "prepare_tokenizer", wrong)
        calls["n"] = 0
        failed = builds(cfg, return_state=True)
        assert failed.is_failed() and calls["n"] == 1  # deterministic: failing again would say nothing new
        assert "ValueError: tokenizer.vocab_size" in failed.message

        def tracking_server_away(config):  # MLflow's client wraps the refused connection
            from mlflow.tracking import MlflowClient

            calls["n"] += 1
            if calls["n"] == 1:
                MlflowClient("http://127.0.0.1:9").search_experiments()  # nothing listens on port 9
            return real(config)

        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        monkeypatch.setattr(smollm.stage, "prepare_tokenizer", tracking_server_away)
        calls["n"] = 0
        assert builds(cfg, return_state=True).is_completed() and calls["n"] == 2  # a connection error: retried
