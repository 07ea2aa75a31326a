"""The model side of lighteval: a local checkpoint's config, and a `TransformersModel` whose
log-likelihood requests are batched by tokens.

Imports lighteval at module level; `lighteval_backend` imports this module lazily.

Why not `TransformersModel._loglikelihood_tokens` (lighteval 0.13): it sorts documents by
*characters* and packs `batch_size // max_choices` documents per forward pass, `max_choices`
taken over the whole run, so a one-choice bpb document fills a quarter of a batch beside
four-choice questions. On the offline suite (demo model, batch 32) that is 83 passes over 149k
token slots for 112k real tokens, and ~1.3x the model time of sorting the (context, choice)
sequences themselves by tokens, `batch_size` per pass: 68 passes over 116k slots. It also
log-softmaxes every position of the `[batch, length, vocab]` logits, and returns token ids as
tensors, which its details logger hashes through `str(tensor)` (~6% of that suite's time).
Here only the scored positions are normalised and ids are lists (the type `ModelResponse`
declares). The numbers are lighteval's: same prompts, tokenization
(`tok_encode_pair(pairwise=True)`), left truncation to the model's length, sums and greedy
checks (`tests/test_eval_scoring.py`).
"""

from __future__ import annotations

import torch
from lighteval.models.model_output import ModelResponse
from lighteval.models.transformers.transformers_model import TransformersModel, TransformersModelConfig
from lighteval.tasks.requests import Doc
from tqdm.auto import tqdm


class LocalModelConfig(TransformersModelConfig):
    """A checkpoint on local disk: no hub lookup of the model's commit sha (offline)."""

    def get_model_sha(self) -> str:
        return ""


class TokenBatchedModel(TransformersModel):
    """`TransformersModel` scoring log-likelihoods as token-length-sorted batches of
    `batch_size` (context + choice) sequences. Build it with `from_model(model, config)`.
    Rolling log-likelihoods, multi-process runs and automatic batch sizes go to lighteval's."""

    progress: str | None = None
    """The label of a progress bar over the batches (None: no bar)."""

    def _loglikelihood_tokens(self, docs: list[Doc], rolling: bool = False) -> list[ModelResponse]:
        if rolling or self.accelerator is not None or not self.batch_size:
            return super()._loglikelihood_tokens(docs, rolling=rolling)
        if not docs:
            return []
        contexts, choices = self._encode(docs)
        sequences = [(d, c) for d, doc_choices in enumerate(choices) for c in range(len(doc_choices))]
        sequences.sort(key=lambda s: -(len(contexts[s[0]]) + len(choices[s[0]][s[1]])))
        logprobs = [[0.0] * len(c) for c in choices]
        greedy = [[False] * len(c) for c in choices]
        starts = range(0, len(sequences), self.batch_size)
        for start in tqdm(starts, desc=self.progress, unit="batch", disable=self.progress is None, dynamic_ncols=True):
            batch = sequences[start : start + self.batch_size]
            sums, matches = self._score([(contexts[d], choices[d][c]) for d, c in batch])
            for (d, c), total, match in zip(batch, sums, matches, strict=True):
                logprobs[d][c], greedy[d][c] = total, match
        return [
            ModelResponse(
                logprobs=logprobs[d],
                argmax_logits_eq_gold=greedy[d],
                input_tokens=contexts[d],
                output_tokens=choices[d],
            )
            for d in range(len(docs))
        ]

    def _encode(self, docs: list[Doc]) -> tuple[list[list[int]], list[list[list[int]]]]:
        """`tok_encode_pair(prompt, choices, pairwise=True)` of every doc, in two tokenizer
        calls: the prompt's trailing whitespace moves into each choice; a trailing eos is cut."""
        prompts, texts = [], []
        for doc in docs:
            prompt = self.prompt_manager.prepare_prompt(doc)
            stripped = prompt.rstrip()
            prompts.append(stripped)
            texts.append([prompt[len(stripped) :] + choice for choice in doc.choices])
        contexts = self.tokenizer(prompts, add_special_tokens=self.add_special_tokens)["input_ids"]
        contexts = [c[:-1] if c and c[-1] == self.tokenizer.eos_token_id else c for c in contexts]
        flat = self.tokenizer([t for doc_texts in texts for t in doc_texts], add_special_tokens=False)["input_ids"]
        choices, start = [], 0
        for doc_texts in texts:
            choices.append(flat[start : start + len(doc_texts)])
            start += len(doc_texts)
        return contexts, choices

    def _score(self, pairs: list[tuple[list[int], list[int]]]) -> tuple[list[float], list[bool]]:
        """(sum log p(choice | context), whether greedy decoding gives the choice) per pair, in
        one right-padded forward pass; a sequence longer than the model keeps its last tokens."""
        sequences = [(context + choice)[-self.max_length :] for context, choice in pairs]
        width = max(len(s) for s in sequences)
        ids = torch.full((len(sequences), width), self.tokenizer.pad_token_id, dtype=torch.long)
        rows: list[int] = []  # (row, position) of the logits that predict each choice token
        positions: list[int] = []
        for row, (sequence, (_, choice)) in enumerate(zip(sequences, pairs, strict=True)):
            ids[row, : len(sequence)] = torch.tensor(sequence)
            scored = min(len(choice), len(sequence) - 1)
            rows += [row] * scored
            positions += range(len(sequence) - scored - 1, len(sequence) - 1)
        row_index = torch.tensor(rows, device=self.device)
        position_index = torch.tensor(positions, device=self.device)
        ids = ids.to(self.device)
        targets = ids[row_index, position_index + 1]
        logits = self.model(ids, use_cache=False).logits[row_index, position_index].float()
        token_logprobs = torch.log_softmax(logits, dim=-1).gather(1, targets[:, None])[:, 0]
        sums = torch.zeros(len(sequences), device=self.device).index_add_(0, row_index, token_logprobs)
        misses = torch.zeros(len(sequences), device=self.device)
        misses.index_add_(0, row_index, (logits.argmax(-1) != targets).float())
        return sums.tolist(), (misses == 0).tolist()
