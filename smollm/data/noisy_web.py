"""Deterministic, seeded generator of low-quality web pages: the embedded default's unfiltered crawl.

Real pretraining corpora hold a lot of text that reads like language and teaches little — menus,
cookie banners, keyword-stuffed paragraphs, spam comments, listings. A team keeps some of it in a
first stage (it is plentiful) and a good loop learns to stop spending tokens on it. This source
is that text, made from fixed word lists, so it is the same on every machine and unlimited:

    >>> from smollm.data.noisy_web import generate_documents
    >>> docs = list(generate_documents(seed=0, num_docs=3))

It shares the prose's alphabet and common words, so it is not trivially separable, but it has
no sentence structure, no code and no arithmetic worth learning: its value for every category
the suite measures is far below the other sources'.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

WORDS = (
    "the of and to in is you that it he was for on are as with his they at be this have from or "
    "one had by word but not what all were we when your can said there use an each which she do "
    "how their if will up other about out many then them these so some her would make like him "
    "into time has look two more write go see number no way could people my than first water "
    "been call who oil its now find long down day did get come made may part best top free new "
    "online price deal offer shop click here today sale home page news blog post share follow "
    "login account email subscribe download read more next previous menu search cart review "
    "rating stars cheap quality service fast easy great amazing guide tips tricks ultimate"
).split()
MENU = ("Home", "About", "Contact", "Blog", "Shop", "Login", "Sign up", "FAQ", "Careers", "Press", "Privacy", "Terms")
BANNERS = (
    "We use cookies to improve your experience. By continuing you accept our cookie policy. Accept | Decline",
    "Subscribe to our newsletter and get 10% off your first order!",
    "This site contains affiliate links. We may earn a commission.",
    "JavaScript is disabled in your browser. Please enable it to continue.",
)


def _words(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))


def menu(rng: random.Random) -> str:
    return " | ".join(rng.sample(MENU, rng.randint(4, len(MENU))))


def seo_paragraph(rng: random.Random) -> str:
    """Keyword stuffing: a few words repeated in no order."""
    keys = rng.sample(WORDS, 4)
    return " ".join(rng.choice(keys) if rng.random() < 0.4 else rng.choice(WORDS) for _ in range(rng.randint(30, 80)))


def listing(rng: random.Random) -> str:
    lines = []
    for _ in range(rng.randint(3, 8)):
        name = _words(rng, 2, 4).title()
        lines.append(
            f"{name} - ${rng.randint(1, 999)}.{rng.randint(0, 99):02d} ({rng.randint(0, 5)} stars) Add to cart"
        )
    return "\n".join(lines)


def comments(rng: random.Random) -> str:
    lines = []
    for _ in range(rng.randint(2, 6)):
        user = f"user{rng.randint(1, 99999)}"
        lines.append(f"{user}: {_words(rng, 3, 15)} {rng.choice(('!!!', '??', ':)', 'lol', '', 'www.example.com'))}")
    return "\n".join(lines)


SECTIONS: tuple[Callable[[random.Random], str], ...] = (seo_paragraph, seo_paragraph, listing, comments)


def page(rng: random.Random) -> str:
    """One page: a menu, a banner, a few sections, a footer."""
    title = _words(rng, 3, 8).title()
    body = "\n\n".join(rng.choice(SECTIONS)(rng) for _ in range(rng.randint(2, 4)))
    footer = f"(c) {rng.randint(2005, 2025)} {_words(rng, 1, 2).title()} Inc. All rights reserved. {menu(rng)}"
    return f"{menu(rng)}\n{rng.choice(BANNERS)}\n\n{title}\n\n{body}\n\n{footer}\n"


def generate_documents(*, seed: int, num_docs: int) -> Iterator[str]:
    """`num_docs` pages, identical for the same seed on every machine."""
    rng = random.Random(seed)
    for _ in range(num_docs):
        yield page(rng)
