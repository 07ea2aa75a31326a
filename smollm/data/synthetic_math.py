"""Deterministic, seeded generator of arithmetic and short word problems with worked answers.

The math source of the embedded default: it exists on every machine, is unlimited, and its
difficulty is controlled, so a tiny model can be seen to learn it in minutes.

    >>> from smollm.data.synthetic_math import generate_documents
    >>> docs = list(generate_documents(seed=0, num_docs=3))
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

NAMES = ("Ada", "Ben", "Chen", "Dina", "Eli", "Fay", "Gus", "Hana", "Ivan", "Jo")
ITEMS = ("apples", "books", "coins", "pens", "shells", "cards", "stones", "cups")


@dataclass(frozen=True)
class Problem:
    """One problem: the question as shown to a model, and its integer answer."""

    question: str
    answer: int
    worked: str

    def document(self) -> str:
        """The training text: question, worked solution, answer."""
        return f"Question: {self.question}\nSolution: {self.worked}\nAnswer: {self.answer}\n"


def addition(rng: random.Random, num_digits: int) -> Problem:
    """`a + b` with operands of exactly `num_digits` digits (1 digit: 0..9)."""
    low = 0 if num_digits == 1 else 10 ** (num_digits - 1)
    a, b = rng.randint(low, 10**num_digits - 1), rng.randint(low, 10**num_digits - 1)
    return Problem(f"{a} + {b} = ?", a + b, f"{a} + {b} = {a + b}.")


def subtraction(rng: random.Random, num_digits: int) -> Problem:
    """`a - b` with a >= b, so answers stay non-negative."""
    a, b = sorted((rng.randint(0, 10**num_digits - 1), rng.randint(0, 10**num_digits - 1)))[::-1]
    return Problem(f"{a} - {b} = ?", a - b, f"{a} - {b} = {a - b}.")


def multiplication(rng: random.Random, num_digits: int) -> Problem:
    """`a * b`, single-digit second operand."""
    a, b = rng.randint(0, 10**num_digits - 1), rng.randint(0, 9)
    return Problem(f"{a} * {b} = ?", a * b, f"{a} * {b} = {a * b}.")


def word_problem(rng: random.Random, num_digits: int) -> Problem:
    """A two-step story problem (have, get, give away) with its worked steps."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    have, get = rng.randint(1, 10**num_digits - 1), rng.randint(1, 10**num_digits - 1)
    give = rng.randint(0, have + get)
    question = (
        f"{name} has {have} {item}. {name} gets {get} more {item} "
        f"and gives away {give}. How many {item} does {name} have now?"
    )
    worked = f"{have} + {get} = {have + get}. {have + get} - {give} = {have + get - give}."
    return Problem(question, have + get - give, worked)


GENERATORS = (addition, addition, subtraction, multiplication, word_problem)


def random_problem(rng: random.Random) -> Problem:
    """A problem of a random kind, 1 or 2 digits, single digits favoured (what tiny models learn)."""
    kind = rng.choice(GENERATORS)
    return kind(rng, 1 if rng.random() < 0.6 else 2)


def generate_documents(*, seed: int, num_docs: int) -> Iterator[str]:
    """`num_docs` training documents, identical for the same seed on every machine."""
    rng = random.Random(seed)
    for _ in range(num_docs):
        yield random_problem(rng).document()
