"""Tests of what `smollm.evaluation` replaces inside lighteval for speed: the token-batched
log-likelihood scorer and the in-process stderr bootstrap give lighteval's own numbers.

    PYTHONPATH=. python -m pytest tests/test_eval_scoring.py -q
"""

from __future__ import annotations

import random

import pytest

from tests.test_evaluation import make_checkpoint

TEXTS = [
    f"Question: {a} + {b} = ?\nSolution: {a} + {b} = {a + b}. The sum is {a + b}." for a in range(30) for b in range(9)
]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory):
    """lighteval's `TransformersModel` and `TokenBatchedModel` on one tiny checkpoint whose
    context (24 tokens) is shorter than the longest request, batch size 8."""
    import torch
    from lighteval.models.transformers.transformers_model import TransformersModel
    from transformers import AutoModelForCausalLM

    from smollm.evaluation.lighteval_model import LocalModelConfig, TokenBatchedModel

    model_dir = make_checkpoint(tmp_path_factory.mktemp("scoring") / "model", TEXTS, seed=0, max_positions=24)
    config = LocalModelConfig(model_name="m", tokenizer=str(model_dir), device="cpu", batch_size=8)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    grad = torch.is_grad_enabled()
    pair = TransformersModel.from_model(model, config), TokenBatchedModel.from_model(model, config)
    torch.set_grad_enabled(grad)  # `from_model` switches autograd off for the thread
    return pair


def docs() -> list:
    from lighteval.tasks.requests import Doc

    rng = random.Random(0)
    out = []
    for index in range(21):
        a, b = rng.randrange(50), rng.randrange(50)
        choices = [f" {a + b + k}" for k in range(rng.choice([1, 2, 4]))]
        query = f"Question: {a} + {b} = ?\nSolution: {a} + {b} ="
        if index % 5 == 0:  # trailing whitespace moves into every choice
            query, choices = query + " ", [c.lstrip() for c in choices]
        if index % 7 == 0:  # longer than the model's 24 tokens: cut from the left
            query = "Some preamble that runs on and on. " * 3 + query
        out.append(Doc(task_name="t", query=query, choices=choices, gold_index=0))
    return out


@pytest.mark.slow
def test_token_batched_scores_equal_lightevals(models) -> None:
    lighteval, batched = models
    requests = docs()
    expected, got = lighteval._loglikelihood_tokens(requests), batched._loglikelihood_tokens(requests)
    for doc, want, have in zip(requests, expected, got, strict=True):
        assert have.logprobs == pytest.approx(want.logprobs, rel=1e-5, abs=1e-5), doc.query
        assert have.argmax_logits_eq_gold == want.argmax_logits_eq_gold
        assert have.input_tokens == want.input_tokens.tolist()
        assert have.output_tokens == [[t for t in row if t != -1] for row in want.output_tokens.tolist()]
    assert len({len(r.logprobs) for r in got}) == 3  # 1, 2 and 4 choices, batched together
    assert any(len(r.input_tokens) + max(map(len, r.output_tokens)) > 24 for r in got)


def test_serial_bootstrap_draws_what_the_pool_draws() -> None:
    from lighteval.metrics.utils import stderr

    from smollm.evaluation.lighteval_tasks import SerialBootstrap

    assert stderr._bootstrap_internal is SerialBootstrap  # installed on import
    pool_bootstrap = SerialBootstrap.__mro__[1]  # lighteval's own class
    population = [random.Random(1).random() for _ in range(40)]
    for seed in (0, 3):
        want = pool_bootstrap(number_draws=50, metric=_spread)((population, seed))
        assert SerialBootstrap(number_draws=50, metric=_spread)((population, seed)) == want


def _spread(sample: list[float]) -> float:
    """A corpus-level statistic (module level: the pool pickles it)."""
    return max(sample) - min(sample)


def test_bootstrapped_stderr_is_lightevals_value() -> None:
    from lighteval.metrics.utils import stderr

    import smollm.evaluation.lighteval_tasks  # noqa: F401 - installs SerialBootstrap

    population = [random.Random(2).random() for _ in range(30)]
    value = stderr.bootstrap_stderr(_spread, population, number_experiments=200)
    draws = random.Random(0)
    samples = [_spread(draws.choices(population, k=len(population))) for _ in range(200)]
    assert value == stderr.mean_stderr(samples)
