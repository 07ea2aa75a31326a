"""The tokenizer step: a byte-level BPE trained offline with `tokenizers`, or a pretrained one.

Either way the output is a Hugging Face tokenizer folder (`tokenizer.json` and friends) that
`AutoTokenizer.from_pretrained` loads, saved next to every checkpoint so lighteval can load it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from smollm.config import SourceConfig, TokenizerConfig
from smollm.data.sources import iter_documents


def training_text(sources: Iterable[SourceConfig], bytes_per_source: int) -> Iterator[str]:
    """Up to `bytes_per_source` of each source's training documents (held-out docs skipped)."""
    for source in sources:
        budget = bytes_per_source
        for index, doc in enumerate(iter_documents(source)):
            if index < source.heldout_docs:
                continue
            yield doc[:budget]
            budget -= len(doc.encode())
            if budget <= 0:
                break


def train_bpe(config: TokenizerConfig, sources: Iterable[SourceConfig], output: Path) -> None:
    """Train a byte-level BPE on the sources and save it in Hugging Face format."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=config.vocab_size,
        special_tokens=[config.eos_token],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tokenizer.train_from_iterator(training_text(sources, config.train_bytes_per_source), trainer)
    if tokenizer.get_vocab_size() != config.vocab_size:
        raise ValueError(
            f"tokenizer.vocab_size: the sources only support {tokenizer.get_vocab_size()} "
            f"tokens, got {config.vocab_size}"
        )
    wrap(tokenizer, config).save_pretrained(output)


def wrap(tokenizer, config: TokenizerConfig):
    from transformers import PreTrainedTokenizerFast

    eos = config.eos_token
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=eos, eos_token=eos, unk_token=eos, pad_token=eos
    )


def copy_pretrained(config: TokenizerConfig, output: Path) -> None:
    """A pretrained tokenizer (hub id or local folder), saved into the step output."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(config.path)
    except OSError as err:  # no such folder, or a hub id with no hub access and no cached copy
        raise ValueError(f"tokenizer.path: cannot load {config.path!r}: {str(err).splitlines()[0]}") from None
    if len(tokenizer) != config.vocab_size:
        raise ValueError(f"tokenizer.vocab_size: {config.path} has {len(tokenizer)}, got {config.vocab_size}")
    tokenizer.save_pretrained(output)


def build_tokenizer(config: TokenizerConfig, sources: Iterable[SourceConfig], output: Path) -> None:
    if config.kind == "train_bpe":
        train_bpe(config, sources, output)
    else:
        copy_pretrained(config, output)


def load_fast(tokenizer_dir: Path):
    """The raw `tokenizers.Tokenizer` (batch encoding in Rust, no Python per token)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json"))
