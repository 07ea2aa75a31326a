"""Evaluation items: a pure function of (suite seed, task, held-out documents).

Every item is `{"query": str, "choices": [str, ...], "gold": int}`. The model scores each
choice's log-likelihood given the query; for `bpb` items the single "choice" is the scored
rest of a document. Items are written as one jsonl file per task, the local dataset lighteval
loads.

    >>> from smollm.evaluation.suite import EvalTask
    >>> task = EvalTask(name="add1", kind="math_mcq", category="math", num_items=2)
    >>> build_items(task, seed=0, documents=None)[0]
    {'query': 'Question: 4 + 3 = ?\\nSolution: 4 + 3 =', 'choices': [' 6', ' 5', ' 11', ' 7'], 'gold': 3}
"""

from __future__ import annotations

import bisect
import json
import random
import re
from collections.abc import Sequence
from pathlib import Path

from smollm.data.synthetic_math import addition
from smollm.evaluation.suite import EvalTask

LETTERS = "ABCDEFGHIJ"
MAX_TRIES = 50  # resampling a distractor chunk that collides or is blank


def read_heldout(path: Path) -> list[str]:
    """The non-blank `text` fields of a held-out jsonl file, in file order."""
    with open(path, encoding="utf-8") as f:
        docs = [json.loads(line)["text"] for line in f if line.strip()]
    return [d for d in docs if d.strip()]


def task_rng(task: EvalTask, seed: int) -> random.Random:
    """Seeded by what defines the questions, not the task name: the CF and MCF variants of
    one task see the same questions. A str seed hashes the same on every machine."""
    key = f"{seed}|{task.kind}|{task.source}|{task.num_digits}|{task.num_choices}"
    key += f"|{task.context_chars}|{task.choice_chars}|{task.prefix_chars}|{task.max_chars}"
    return random.Random(key)


def build_items(task: EvalTask, seed: int, documents: Sequence[str] | None) -> list[dict]:
    """The task's items; `documents` are the held-out texts of `task.source` (None for math)."""
    rng = task_rng(task, seed)
    if task.kind == "math_mcq":
        return [_mcq(task, *_math_question(task, rng)) for _ in range(task.num_items)]
    if documents is None:
        raise ValueError(f"{task.name}: kind {task.kind!r} needs held-out documents of {task.source!r}")
    if task.kind == "continuation_mcq":
        return [_mcq(task, *q) for q in _continuation_questions(task, documents, rng)]
    return _bpb_items(task, documents, rng)


def write_items(items: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps(item, ensure_ascii=False) + "\n")


def _mcq(task: EvalTask, question: str, options: list[str], gold: int) -> dict:
    """CF: the options are the continuations; MCF: lettered options, the letters are scored."""
    if task.formulation == "cf":
        return {"query": question, "choices": options, "gold": gold}
    lines = [f"{LETTERS[i]}. {' '.join(option.split())}" for i, option in enumerate(options)]
    query = question.removesuffix("Answer:").rstrip("\n") + "\n" + "\n".join(lines) + "\nAnswer:"
    return {"query": query, "choices": [f" {LETTERS[i]}" for i in range(len(options))], "gold": gold}


def _math_question(task: EvalTask, rng: random.Random) -> tuple[str, list[str], int]:
    """A sum with nearby non-negative distractors.

    CF is a cloze of the worked solution, as the training documents write it
    (`Question: a + b = ?\\nSolution: a + b =` -> ` 8`); MCF asks for the lettered answer
    (`Question: a + b = ?` + options + `Answer:`). Measured on the demo's stage checkpoints, the
    cloze moves from chance to ~0.65 while an `Answer:` prompt with no worked step stays at chance.
    """
    problem = addition(rng, task.num_digits)
    answer = problem.answer
    spread = task.num_choices + 1
    nearby = [answer + k for k in range(-spread, spread + 1) if k != 0 and answer + k >= 0]
    values = [answer, *rng.sample(nearby, task.num_choices - 1)]
    rng.shuffle(values)
    expression = problem.question.removesuffix(" = ?")
    question = f"Question: {problem.question}\n"
    question += f"Solution: {expression} =" if task.formulation == "cf" else "Answer:"
    return question, [f" {v}" for v in values], values.index(answer)


_WORD_END = re.compile(r"(?<=\S)\s")


class _Ends:
    """Word ends of each document, found once: positions p where doc[p] is whitespace and
    doc[p-1] is not. Cutting there keeps the context free of trailing whitespace (which
    lighteval would move into every choice) and starts each choice the way the tokenizer saw
    it in training."""

    def __init__(self, documents: Sequence[str]):
        self.documents = documents
        self._cache: dict[int, list[int]] = {}

    def __call__(self, index: int, lo: int, hi: int) -> list[int]:
        """Word ends of document `index` in [lo, hi)."""
        if index not in self._cache:
            self._cache[index] = [m.start() for m in _WORD_END.finditer(self.documents[index])]
        ends = self._cache[index]
        return ends[bisect.bisect_left(ends, lo) : bisect.bisect_left(ends, hi)]


def _chunk(doc: str, start: int, max_chars: int) -> str:
    """`doc[start:start+max_chars]`, cut back to its last word end in the second half."""
    chunk = doc[start : start + max_chars]
    if start + max_chars < len(doc):
        ends = [m.start() for m in _WORD_END.finditer(chunk, max_chars // 2)]
        chunk = chunk[: ends[-1]] if ends else chunk
    return chunk


def _continuation_questions(
    task: EvalTask, documents: Sequence[str], rng: random.Random
) -> list[tuple[str, list[str], int]]:
    """Context = a chunk of a document; choices = its true next chunk and chunks of others."""
    ends = _Ends(documents)
    need = task.context_chars + task.choice_chars

    def cuts(i: int) -> list[int]:
        return ends(i, task.context_chars, len(documents[i]) - task.choice_chars)

    usable = [i for i, doc in enumerate(documents) if len(doc) > need and cuts(i)]
    if len(usable) < task.num_choices:
        raise ValueError(
            f"{task.name}: source {task.source!r} has {len(usable)} documents longer than context_chars + "
            f"choice_chars = {need} with a word break; need num_choices={task.num_choices}"
        )
    questions = []
    for _ in range(task.num_items):
        index = rng.choice(usable)
        doc = documents[index]
        cut = rng.choice(cuts(index))
        options = [_chunk(doc, cut, task.choice_chars)]
        for _ in range(MAX_TRIES * task.num_choices):
            if len(options) == task.num_choices:
                break
            other = rng.choice(usable)
            starts = ends(other, 1, len(documents[other]) - 1) if other != index else []
            option = _chunk(documents[other], rng.choice(starts), task.choice_chars) if starts else ""
            if option.strip() and option not in options:
                options.append(option)
        if len(options) < task.num_choices:
            raise ValueError(f"{task.name}: found no {task.num_choices} distinct choices in {task.source!r}")
        gold = rng.randrange(task.num_choices)
        options[0], options[gold] = options[gold], options[0]
        questions.append((doc[cut - task.context_chars : cut].lstrip(), options, gold))
    return questions


def _bpb_items(task: EvalTask, documents: Sequence[str], rng: random.Random) -> list[dict]:
    """Up to `num_items` documents (a seeded sample, kept in file order), truncated to
    `max_chars`; the text up to the first word end after `prefix_chars` is context, the rest
    is scored."""
    items = []
    for doc in documents:
        text = doc[: task.max_chars]
        cut = _WORD_END.search(text, task.prefix_chars)
        if cut and cut.start() < len(text) - 1 and text[: cut.start()].strip():
            items.append({"query": text[: cut.start()], "choices": [text[cut.start() :]], "gold": 0})
    if not items:
        raise ValueError(
            f"{task.name}: source {task.source!r} has no document longer than prefix_chars={task.prefix_chars}"
        )
    if len(items) > task.num_items:
        keep = sorted(rng.sample(range(len(items)), task.num_items))
        items = [items[i] for i in keep]
    return items
