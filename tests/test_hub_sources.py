"""The SmolLM2 recipe's hub sources, run offline on local stand-ins with the hub's real columns.

Each stand-in is laid out like its hub repo (README configs, parquet or jsonl.zst files, one
folder per language, a `save_to_disk` folder for one of them); the blob-id datasets (Stack-Edu,
Python-Edu) get a folder of gzip blobs behind a `file://` content_url. Every source YAML of
conf/data/source/ is loaded without Hydra and only `path` (and `content_url`) is swapped, so
the code that reads and tokenizes a stand-in is the code that streams the hub dataset. The
tokenizer likewise: conf/tokenizer/smollm2.yaml with its hub id swapped for a local folder.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from smollm.config import SourceConfig, TokenizerConfig
from smollm.data.shards import TokenizedSource, tokenize_source
from smollm.data.sources import iter_documents
from smollm.data.tokenizer import build_tokenizer
from smollm.schema import from_dict, to_dict

CONF = Path(__file__).resolve().parent.parent / "conf"
HUB_SOURCES = (
    "fineweb_edu",
    "dclm",
    "starcoderdata",
    "stack_edu",
    "finemath_3plus",
    "finemath_4plus",
    "infiwebmath_3plus",
    "infiwebmath_4plus",
    "open_web_math",
    "infimm_webmath",
    "cosmopedia_v2",
    "fineweb_edu_dedup",
    "python_edu",
    "fineweb_edu_long",
    "dclm_long",
    "books_long",
)
# RECIPE.md's sizes (tokens) for the sources it quotes.
RECIPE_TOKENS = {
    "open_web_math": 12e9,
    "infimm_webmath": 40e9,
    "finemath_4plus": 10e9,
    "finemath_3plus": 34e9,
    "infiwebmath_4plus": 8.5e9,
    "infiwebmath_3plus": 20.5e9,
    "stack_edu": 125e9,
}
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
LONG = 33_000  # characters: above the long sources' min_chars (32768)


def source_yaml(name: str) -> dict[str, Any]:
    return yaml.safe_load((CONF / "data" / "source" / f"{name}.yaml").read_text())


def hub_source(name: str, **overrides: Any) -> SourceConfig:
    """The shipped YAML as a typed config, Hydra-free, with `overrides` applied."""
    return from_dict(SourceConfig, {**source_yaml(name), **overrides}, f"data.sources.{name}")


# ---- stand-ins: the hub repos' layouts and columns, a few hundred tiny rows -------------------


def text(tag: str, i: int, long: bool = False) -> str:
    body = f"{tag} document {i}: the sum of {i} and {i + 1} is {2 * i + 1}.\n"
    return body * (LONG // len(body) + 1) if long else body


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def readme_configs(root: Path, configs: dict[str, str]) -> None:
    """A hub README whose YAML header maps config names to data files, as the hub repos do."""
    header = {
        "configs": [{"config_name": c, "data_files": [{"split": "train", "path": p}]} for c, p in configs.items()]
    }
    (root / "README.md").write_text(f"---\n{yaml.safe_dump(header)}---\n# local stand-in\n")


def web_rows(tag: str, n_short: int, n_long: int) -> list[dict[str, Any]]:
    """FineWeb-Edu's columns; `n_long` of the documents, spread through, fill an 8k sequence."""
    total = n_short + n_long
    long_at = set(range(0, total, total // n_long)[:n_long]) if n_long else set()
    return [
        {
            "text": text(tag, i, i in long_at),
            "id": f"<urn:uuid:{i:08d}>",
            "dump": "CC-MAIN-2024-10",
            "url": f"https://example.org/{i}",
            "file_path": "s3://commoncrawl/crawl-data/x.warc.gz",
            "language": "en",
            "language_score": 0.97,
            "token_count": 12,
            "score": 3.4,
            "int_score": 3,
        }
        for i in range(total)
    ]


def blobs(root: Path, contents: dict[str, str]) -> str:
    """Software Heritage's bucket layout: gzip blobs at content/<blob_id>; the file:// template."""
    (root / "content").mkdir(parents=True, exist_ok=True)
    for blob_id, content in contents.items():
        (root / "content" / blob_id).write_bytes(gzip.compress(content.encode()))
    return (root / "content").as_uri() + "/{blob_id}"


def blob_id(tag: str, i: int) -> str:
    return hashlib.sha1(f"{tag}{i}".encode()).hexdigest()


def fineweb_edu(root: Path) -> tuple[dict, dict]:
    rows = web_rows("fineweb-edu", 205, 55)
    for k, dump in enumerate(("CC-MAIN-2013-20", "CC-MAIN-2024-10")):
        write_parquet(root / "data" / dump / "train-00000-of-00001.parquet", rows[k * 130 : (k + 1) * 130])
    readme_configs(root, {"default": "data/*/*"})
    return {"path": str(root)}, {"texts": [r["text"] for r in rows]}


def dclm(root: Path) -> tuple[dict, dict]:
    import zstandard

    rows = [
        {
            "bff_contained_ngram_count_before_dedupe": 0,
            "language_id_whole_page_fasttext": {"en": 0.96},
            "metadata": {"WARC-Type": "conversion", "WARC-Target-URI": r["url"]},
            "previous_word_count": 120,
            "text": r["text"],
            "url": r["url"],
            "warcinfo": "isPartOf: CC-MAIN-2023-06",
            "fasttext_openhermes_reddit_eli5_vs_rw_v2_bigram_200k_train_prob": 0.1,
        }
        for r in web_rows("dclm", 205, 55)
    ]
    shard = root / "global-shard_01_of_10" / "local-shard_0_of_10" / "shard_00000000_processed.jsonl.zst"
    shard.parent.mkdir(parents=True)
    shard.write_bytes(zstandard.ZstdCompressor().compress("\n".join(json.dumps(r) for r in rows).encode()))
    return {"path": str(root)}, {"texts": [r["text"] for r in rows]}


def starcoderdata(root: Path) -> tuple[dict, dict]:
    texts = {}
    for lang, n in (("java", 70), ("python", 80), ("rust", 60)):
        rows = [
            {
                "max_stars_repo_path": f"src/f{i}.{lang}",
                "max_stars_repo_name": f"org/{lang}-repo",
                "max_stars_count": i,
                "id": f"{lang}-{i}",
                "content": f"// {lang} file {i}\nfn f{i}() {{}}\n",
            }
            for i in range(n)
        ]
        write_parquet(root / lang / "train-00000-of-00001.parquet", rows)
        texts[lang] = [r["content"] for r in rows]
    return {"path": str(root)}, {"texts": [t for lang in sorted(texts) for t in texts[lang]], "by_folder": texts}


STACK_EDU_LANGUAGES = source_yaml("stack_edu")["subset"]


def stack_edu(root: Path) -> tuple[dict, dict]:
    contents, per_language = {}, []
    for lang in STACK_EDU_LANGUAGES:
        rows = []
        for i in range(14):
            rows.append(
                {
                    "blob_id": blob_id(lang, i),
                    "language": lang,
                    "repo_name": f"org/{lang.lower()}",
                    "path": f"/src/file{i}",
                    "src_encoding": "UTF-8",
                    "length_bytes": 40,
                    "score": 3.2,
                    "int_score": 3,
                    "detected_licenses": ["MIT"],
                    "license_type": "permissive",
                }
            )
            if not (lang == "Go" and i == 5):  # one blob missing from the bucket: skipped
                contents[blob_id(lang, i)] = f"{lang} teaching example {i}\n"
        write_parquet(root / "repo" / lang / "train-00000-of-00001.parquet", rows)
        per_language.append([contents.get(r["blob_id"]) for r in rows])
    readme_configs(root / "repo", {lang: f"{lang}/train-*" for lang in STACK_EDU_LANGUAGES})
    url = blobs(root / "swh", contents)
    # the 15 configs' rows interleaved round-robin; the row whose blob is missing yields nothing
    texts = [t for t in round_robin_expected(per_language) if t is not None]
    return {"path": str(root / "repo"), "content_url": url}, {"texts": texts}


def round_robin_expected(parts: list[list[Any]]) -> list[Any]:
    out, iters = [], [iter(p) for p in parts]
    while iters:
        for it in list(iters):
            try:
                out.append(next(it))
            except StopIteration:
                iters.remove(it)
    return out


def finemath(root: Path) -> tuple[dict, dict]:
    texts = {}
    for config in ("finemath-3plus", "finemath-4plus", "infiwebmath-3plus", "infiwebmath-4plus"):
        rows = []
        for i in range(205):
            row: dict[str, Any] = {"url": f"https://math.example/{config}/{i}"}
            if config.startswith("finemath"):
                row |= {
                    "fetch_time": 1700000000,
                    "content_mime_type": "text/html",
                    "warc_filename": "crawl-data/x.warc.gz",
                    "warc_record_offset": 0,
                    "warc_record_length": 100,
                }
            row |= {
                "text": text(config, i),
                "token_count": 20,
                "char_count": 60,
                "metadata": "{}",
                "score": 3.5,
                "int_score": 3,
            }
            if config.startswith("finemath"):
                row |= {"crawl": "CC-MAIN-2024-10", "snapshot_type": "latest", "language": "en", "language_score": 0.9}
            rows.append(row)
        write_parquet(root / config / "train-00000-of-00001.parquet", rows)
        texts[config] = [r["text"] for r in rows]
    readme_configs(root, {c: f"{c}/train-*" for c in texts})
    return {"path": str(root)}, {"by_subset": texts}


def open_web_math(root: Path) -> tuple[dict, dict]:
    import datasets

    rows = [
        {"url": f"https://owm.example/{i}", "text": text("owm", i), "date": "2023-01-01", "metadata": "{}"}
        for i in range(205)
    ]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(root))
    return {"path": str(root)}, {"texts": [r["text"] for r in rows]}


def infimm_webmath(root: Path) -> tuple[dict, dict]:
    rows = []
    for i in range(205):
        segments = [f"Theorem {i}.", None, f"Proof of {i}: trivial."]
        rows.append(
            {
                "URL": f"https://infimm.example/{i}",
                "text_list": segments,
                "image_list": [None, f"https://img.example/{i}.png", None],
                "metadata": {"ft_lang_label": "__label__en", "ft_lang_prob": 0.9, "math_prob": 0.8, "size": 3},
            }
        )
    write_parquet(root / "data" / "train-00000-of-00001.parquet", rows)
    return {"path": str(root)}, {"texts": [f"Theorem {i}.\n\nProof of {i}: trivial." for i in range(205)]}


def smollm_corpus(root: Path) -> tuple[dict, dict]:
    cosmo = [
        {
            "prompt": f"Write a textbook unit {i}",
            "text": text("cosmopedia", i),
            "token_length": 20,
            "audience": "college_students",
            "format": "textbook",
            "seed_data": "web_samples_v2",
        }
        for i in range(205)
    ]
    dedup = [
        {"text": r["text"], "id": r["id"], "metadata": {k: r[k] for k in ("dump", "url", "language", "token_count")}}
        for r in web_rows("fineweb-edu-dedup", 205, 0)
    ]
    python = [
        {
            "blob_id": blob_id("py", i),
            "repo_name": "org/py",
            "path": f"/m{i}.py",
            "length_bytes": 30,
            "score": 4.1,
            "int_score": 4,
        }
        for i in range(205)
    ]
    write_parquet(root / "repo" / "cosmopedia-v2" / "train-00000-of-00001.parquet", cosmo)
    write_parquet(root / "repo" / "fineweb-edu-dedup" / "train-00000-of-00001.parquet", dedup)
    write_parquet(root / "repo" / "python-edu" / "train-00000-of-00001.parquet", python)
    readme_configs(root / "repo", {c: f"{c}/train-*" for c in ("cosmopedia-v2", "fineweb-edu-dedup", "python-edu")})
    sources = {r["blob_id"]: f"def f{i}():\n    return {i}\n" for i, r in enumerate(python)}
    url = blobs(root / "swh", sources)
    return {"path": str(root / "repo"), "content_url": url}, {
        "by_subset": {
            "cosmopedia-v2": [r["text"] for r in cosmo],
            "fineweb-edu-dedup": [r["text"] for r in dedup],
            "python-edu": list(sources.values()),
        }
    }


def project_gutenberg(root: Path) -> tuple[dict, dict]:
    books = {
        lang: [{"id": f"{lang}{i}", "text": text(f"book-{lang}", i, long=i % 5 != 4)} for i in range(29)]
        for lang in ("de", "en")
    }
    for lang, rows in books.items():
        write_parquet(root / "data" / f"{lang}-00000-of-00001-0123456789abcdef.parquet", rows)
    return {"path": str(root)}, {"texts": [r["text"] for r in books["en"]]}


STANDINS = {
    "fineweb_edu": fineweb_edu,
    "dclm": dclm,
    "starcoderdata": starcoderdata,
    "stack_edu": stack_edu,
    "finemath": finemath,
    "open_web_math": open_web_math,
    "infimm_webmath": infimm_webmath,
    "smollm_corpus": smollm_corpus,
    "project_gutenberg": project_gutenberg,
}
STANDIN_OF = {
    "fineweb_edu": "fineweb_edu",
    "fineweb_edu_long": "fineweb_edu",
    "dclm": "dclm",
    "dclm_long": "dclm",
    "starcoderdata": "starcoderdata",
    "stack_edu": "stack_edu",
    "finemath_3plus": "finemath",
    "finemath_4plus": "finemath",
    "infiwebmath_3plus": "finemath",
    "infiwebmath_4plus": "finemath",
    "open_web_math": "open_web_math",
    "infimm_webmath": "infimm_webmath",
    "cosmopedia_v2": "smollm_corpus",
    "fineweb_edu_dedup": "smollm_corpus",
    "python_edu": "smollm_corpus",
    "books_long": "project_gutenberg",
}


@pytest.fixture(scope="module")
def standins(tmp_path_factory) -> dict[str, tuple[dict, dict]]:
    root = tmp_path_factory.mktemp("hub")
    return {name: build(root / name) for name, build in STANDINS.items()}


def local_source(name: str, standins) -> tuple[SourceConfig, list[str]]:
    """The shipped source with only path (and content_url) pointing at its stand-in; the
    documents the hub dataset's rows of the stand-in should yield."""
    swap, expected = standins[STANDIN_OF[name]]
    shipped = source_yaml(name)
    if "content_url" in shipped:  # the bucket's key layout is the same, only the root differs
        assert shipped["content_url"].endswith("/content/{blob_id}") and swap["content_url"].endswith(
            "/content/{blob_id}"
        )
    source = hub_source(name, **{k: v for k, v in swap.items() if k == "path" or k in shipped})
    texts = expected["by_subset"][source.subset] if "by_subset" in expected else expected["texts"]
    return source, [t for t in texts if len(t.strip()) >= source.min_chars]


# ---- the shipped configs ----------------------------------------------------------------------


def test_every_hub_source_yaml_validates_and_names_a_hub_dataset():
    shipped = {p.stem for p in (CONF / "data" / "source").glob("*.yaml") if source_yaml(p.stem)["loader"] == "hf"}
    assert shipped == set(HUB_SOURCES)
    for name in HUB_SOURCES:
        source = hub_source(name)
        assert source.name == name and source.streaming and source.loader == "hf"
        assert HUB_ID.fullmatch(source.path or "") and not Path(source.path or "").exists(), source.path
        assert source.available_tokens and source.available_tokens > 1e9, name
        assert source.domain in ("web", "code", "math", "other") and source.category in (
            "knowledge",
            "reasoning",
            "math",
            "code",
        )
        assert source.content_url is None or source.content_url.startswith("https://"), name
    for name, tokens in RECIPE_TOKENS.items():
        assert hub_source(name).available_tokens == tokens, name


def test_data_smollm2_lists_every_hub_source_under_its_own_name():
    defaults = yaml.safe_load((CONF / "data" / "smollm2.yaml").read_text())["defaults"]
    entries = {key.split("@sources.")[1]: value for e in defaults if isinstance(e, dict) for key, value in e.items()}
    assert entries == {name: name for name in HUB_SOURCES}


def test_recipe_domains_of_the_hub_sources():
    domains = {name: hub_source(name).domain for name in HUB_SOURCES}
    assert {n for n, d in domains.items() if d == "web"} == {
        "fineweb_edu",
        "dclm",
        "fineweb_edu_dedup",
        "fineweb_edu_long",
        "dclm_long",
    }
    assert {n for n, d in domains.items() if d == "code"} == {"starcoderdata", "stack_edu", "python_edu"}
    assert {n for n, d in domains.items() if d == "other"} == {"cosmopedia_v2", "books_long"}


# ---- the same loader on stand-ins -------------------------------------------------------------


@pytest.mark.parametrize("name", HUB_SOURCES)
def test_hub_source_reads_its_local_standin_with_only_the_path_swapped(name, standins):
    source, expected = local_source(name, standins)
    assert list(iter_documents(source)) == expected
    assert len(expected) > source.heldout_docs  # something is left to train on


def test_long_sources_keep_only_documents_that_fill_an_8k_sequence(standins):
    for name, full in (("fineweb_edu_long", "fineweb_edu"), ("dclm_long", "dclm"), ("books_long", None)):
        source, expected = local_source(name, standins)
        docs = list(iter_documents(source))
        assert source.min_chars == 32768 and docs == expected
        assert all(len(doc) >= 32768 for doc in docs)
        if full is not None:  # the same dataset, unfiltered, has the short documents too
            assert len(list(iter_documents(local_source(full, standins)[0]))) > len(docs)


def test_starcoderdata_reads_one_or_several_language_folders(standins):
    swap, expected = standins["starcoderdata"]
    python = hub_source("starcoderdata", path=swap["path"], data_dir="python")
    assert list(iter_documents(python)) == expected["by_folder"]["python"]
    both = hub_source("starcoderdata", path=swap["path"], data_dir=["rust", "python"])
    by = expected["by_folder"]
    assert list(iter_documents(both)) == round_robin_expected([by["rust"], by["python"]])


def test_a_missing_blob_is_skipped_and_the_rest_keep_their_order(standins):
    source, expected = local_source("stack_edu", standins)
    docs = list(iter_documents(source))
    assert docs == expected and len(docs) == 15 * 14 - 1
    assert docs[:3] == [f"{lang} teaching example 0\n" for lang in STACK_EDU_LANGUAGES[:3]]


# ---- the tokenizer: a hub id or a local folder -------------------------------------------------


@pytest.fixture(scope="module")
def local_smollm2_tokenizer(tmp_path_factory) -> tuple[TokenizerConfig, Path]:
    """conf/tokenizer/smollm2.yaml pointed at a local folder holding a 49152-token stand-in."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    hub = from_dict(TokenizerConfig, yaml.safe_load((CONF / "tokenizer" / "smollm2.yaml").read_text()), "tokenizer")
    vocab = {hub.eos_token: 0}
    for char in pre_tokenizers.ByteLevel.alphabet():
        vocab.setdefault(char, len(vocab))
    while len(vocab) < hub.vocab_size:  # unused ids: the stand-in has the real vocabulary size
        vocab[f"<unused_{len(vocab)}>"] = len(vocab)
    raw = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    folder = tmp_path_factory.mktemp("SmolLM2-1.7B")
    eos = hub.eos_token
    PreTrainedTokenizerFast(tokenizer_object=raw, bos_token=eos, eos_token=eos, unk_token=eos).save_pretrained(folder)
    local = dataclasses.replace(hub, path=str(folder))
    assert {k: v for k, v in to_dict(local).items() if k != "path"} == {
        k: v for k, v in to_dict(hub).items() if k != "path"
    }
    assert HUB_ID.fullmatch(hub.path or "") and local.path != hub.path
    output = tmp_path_factory.mktemp("tokenizer")
    build_tokenizer(local, [], output)
    return local, output


def test_pretrained_tokenizer_loads_from_a_local_folder(local_smollm2_tokenizer):
    from transformers import AutoTokenizer

    config, output = local_smollm2_tokenizer
    tok = AutoTokenizer.from_pretrained(output)
    assert len(tok) == config.vocab_size == 49152 and tok.eos_token == "<|endoftext|>"
    sample = "def f(x):\n    return x ** 2  # café\n"
    assert tok.decode(tok.encode(sample, add_special_tokens=False)) == sample


def test_an_unreachable_pretrained_tokenizer_is_one_line_naming_the_path(tmp_path):
    hub = yaml.safe_load((CONF / "tokenizer" / "smollm2.yaml").read_text())
    config = from_dict(TokenizerConfig, {**hub, "path": str(tmp_path / "missing")}, "tokenizer")
    with pytest.raises(ValueError, match=r"^tokenizer\.path: cannot load '.*missing': [^\n]+$"):
        build_tokenizer(config, [], tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", HUB_SOURCES)
def test_hub_source_tokenizes_from_its_standin(name, standins, local_smollm2_tokenizer, tmp_path):
    """Read, hold out, tokenize: the build step of a hub source, on its stand-in."""
    from transformers import AutoTokenizer

    source, expected = local_source(name, standins)
    _, tokenizer_dir = local_smollm2_tokenizer
    manifest = tokenize_source(source, tokenizer_dir, tmp_path, shard_tokens=1 << 20)
    held = [json.loads(line)["text"] for line in (tmp_path / "heldout.jsonl").read_text().splitlines()]
    assert held == expected[: source.heldout_docs]
    assert manifest["num_docs"] == len(expected) - source.heldout_docs
    assert manifest["dtype"] == "uint16"  # 49152 ids fit
    built = TokenizedSource.open(tmp_path, verify=True)
    starts = np.load(tmp_path / "docs.npy")
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    first = built.shards[0][starts[0] : starts[1] - 1]  # up to the EOS that closes it
    assert tok.decode(first.tolist()) == expected[source.heldout_docs]


# ---- bad input: one line naming the field and the value, before any compute ---------------------


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("https://softwareheritage.s3.amazonaws.com/content/{blob_id", "expected '}' before end of string"),
        ("https://softwareheritage.s3.amazonaws.com/content/", "must name a column in braces"),
        ("https://softwareheritage.s3.amazonaws.com/content/{}", "braces must hold a plain column name"),
        ("https://softwareheritage.s3.amazonaws.com/content/{blob_id!r}", "braces must hold a plain column name"),
        ("s3://softwareheritage/content/{blob_id}", "must be an http, https or file URL"),
    ],
)
def test_a_bad_content_url_template_is_a_one_line_config_error(template, message):
    with pytest.raises(ValueError, match=f"^data.sources.stack_edu.content_url: {message}") as err:
        hub_source("stack_edu", content_url=template)
    assert "\n" not in str(err.value) and repr(template) in str(err.value)


def test_other_bad_source_fields_are_one_line_config_errors():
    cases = [
        ({"domain": "books"}, r"^data.sources.books_long.domain: 'books' is not one of"),
        ({"content_compression": "gzip"}, r"^data.sources.books_long.content_compression: needs a content_url"),
        ({"subset": []}, r"^data.sources.books_long.subset: must name at least one entry"),
    ]
    for overrides, message in cases:
        with pytest.raises(ValueError, match=message) as err:
            hub_source("books_long", **overrides)
        assert "\n" not in str(err.value)


def test_a_template_naming_no_column_fails_on_the_first_row(standins):
    source, _ = local_source("python_edu", standins)
    wrong = dataclasses.replace(source, content_url=source.content_url.replace("{blob_id}", "{sha}"))
    with pytest.raises(ValueError, match=r"data.sources.python_edu.content_url: 'sha' is not a column") as err:
        next(iter_documents(wrong))
    assert "blob_id" in str(err.value) and "\n" not in str(err.value)


def test_a_template_that_finds_no_object_is_an_error_not_an_empty_source(standins, tmp_path):
    source, _ = local_source("python_edu", standins)
    empty = dataclasses.replace(source, content_url=tmp_path.as_uri() + "/{blob_id}")
    with pytest.raises(ValueError, match=r"data.sources.python_edu.content_url: none of the first 64 objects exist"):
        next(iter_documents(empty))


def test_a_list_text_column_needs_text_join(standins):
    source, _ = local_source("infimm_webmath", standins)
    with pytest.raises(ValueError, match=r"data.sources.infimm_webmath.text_join: column 'text_list' holds a list"):
        next(iter_documents(dataclasses.replace(source, text_join=None)))


def test_plain_blobs_under_a_gzip_source_are_a_one_line_error(standins, tmp_path):
    source, _ = local_source("python_edu", standins)
    for i in range(3):
        (tmp_path / f"plain{i}").write_text("print('not compressed')\n")
    plain = dataclasses.replace(source, content_url=tmp_path.as_uri() + "/{path}")
    rows = [{"path": f"plain{i}"} for i in range(3)]
    from smollm.data.sources import fetched_documents

    with pytest.raises(ValueError, match=r"data.sources.python_edu.content_compression: .*plain0 is not gzip") as err:
        list(fetched_documents(plain, iter(rows)))
    assert "\n" not in str(err.value)


def test_what_changes_the_tokens_changes_a_source_identity():
    from smollm.stage import source_slice

    def changed(name: str, **change: Any) -> bool:
        source = hub_source(name)
        return source_slice(dataclasses.replace(source, **change)) != source_slice(source)

    for change in ({"domain": "web"}, {"category": "knowledge"}, {"max_epochs": 2.0}, {"streaming": False}):
        assert not changed("python_edu", **change), change
    assert changed("python_edu", content_url="https://mirror.example/{blob_id}")
    assert changed("python_edu", content_compression="none")
    assert changed("infimm_webmath", text_join=" ")
    assert changed("stack_edu", subset=["Python"])
