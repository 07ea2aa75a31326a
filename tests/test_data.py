"""Data build: offline sources, the BPE tokenizer, token shards, manifests and identities."""

import dataclasses
import json

import numpy as np
import pytest

from smollm import stage
from smollm.config import SourceConfig
from smollm.data.shards import TokenizedSource, sha256_file
from smollm.data.sources import iter_documents
from smollm.data.synthetic_math import generate_documents


def test_builtin_sources_exist_offline_and_are_deterministic():
    prose = SourceConfig(name="p", loader="builtin", builtin="stdlib_prose", num_docs=50)
    code = SourceConfig(name="c", loader="builtin", builtin="stdlib_code", num_docs=5)
    assert list(iter_documents(prose)) == list(iter_documents(prose))
    assert any("def " in doc for doc in iter_documents(code))
    docs = list(generate_documents(seed=3, num_docs=20))
    assert docs == list(generate_documents(seed=3, num_docs=20))
    assert docs != list(generate_documents(seed=4, num_docs=20))
    assert all(doc.startswith("Question: ") and "\nAnswer: " in doc for doc in docs)


def test_tokenizer_is_a_hugging_face_tokenizer_with_the_configured_vocab(built):
    from transformers import AutoTokenizer

    cfg, tokenizer, _ = built
    tok = AutoTokenizer.from_pretrained(tokenizer.output)
    assert len(tok) == cfg.tokenizer.vocab_size
    assert tok.eos_token == "<|endoftext|>"
    text = "def add(a, b):\n    return a + b\n"
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_shards_manifest_and_heldout(built):
    cfg, _, sources = built
    for name, result in sources.items():
        src = TokenizedSource.open(result.output, verify=True)
        manifest = src.manifest
        assert manifest["num_tokens"] == sum(len(s) for s in src.shards) > 0
        assert all(sha256_file(result.output / s["file"]) == s["sha256"] for s in manifest["shards"])
        starts = np.load(result.output / "docs.npy")
        assert len(starts) == manifest["num_docs"] and starts[0] == 0
        eos = int(src.shards[0][starts[1] - 1]) if len(starts) > 1 else None
        assert eos == 0  # each document ends with <|endoftext|> (id 0)
        heldout = [json.loads(line)["text"] for line in src.heldout_path.read_text().splitlines()]
        assert len(heldout) == cfg.data.sources[name].heldout_docs


def test_completed_build_is_not_redone_and_mixture_changes_do_not_retokenize(built):
    cfg, tokenizer, sources = built
    again = stage.build_source(cfg, "synthetic_math", tokenizer)
    assert not again.computed and again.output == sources["synthetic_math"].output
    reweighted = dataclasses.replace(
        cfg,
        mixture=dataclasses.replace(
            cfg.mixture, weights={"stdlib_prose": 0.2, "stdlib_code": 0.2, "synthetic_math": 0.6}
        ),
    )
    assert stage.source_step(reweighted, "synthetic_math", tokenizer).identity == sources["synthetic_math"].identity
    assert stage.tokenizer_step(reweighted).identity == tokenizer.identity
    capped = dataclasses.replace(cfg.data.sources["synthetic_math"], max_epochs=2.0)
    other = dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, sources={**cfg.data.sources, "synthetic_math": capped})
    )
    assert stage.source_step(other, "synthetic_math", tokenizer).identity == sources["synthetic_math"].identity


def test_hf_loader_reads_local_files_with_the_same_code_path(tmp_path):
    rows = [{"text": f"document number {i}", "id": i} for i in range(5)]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    source = SourceConfig(name="local", loader="hf", path="json", data_files=str(path), heldout_docs=1)
    assert list(iter_documents(source)) == [r["text"] for r in rows]


def test_hf_loader_reads_one_folder_of_a_dataset_like_starcoderdata_languages(tmp_path):
    for language, rows in (("python", ["def f():\n    pass\n"]), ("rust", ["fn main() {}\n"])):
        folder = tmp_path / "starcoderdata" / language
        folder.mkdir(parents=True)
        (folder / "train-00000.jsonl").write_text("\n".join(json.dumps({"content": r, "id": "x"}) for r in rows))
    source = SourceConfig(
        name="sc_py",
        loader="hf",
        path="json",
        data_dir=str(tmp_path / "starcoderdata" / "python"),
        text_field="content",
        streaming=False,
    )
    assert list(iter_documents(source)) == ["def f():\n    pass\n"]
    wrong = dataclasses.replace(source, text_field="text")
    with pytest.raises(ValueError, match=r"data.sources.sc_py.text_field: 'text' is not a column"):
        list(iter_documents(wrong))
