"""``slimpipe mix`` end to end on the embedded sample: shares, upsampling, determinism, holdout hygiene,
text output, shared tokenizers, resume and the command line (one real local Ray for the session)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from mix_fixtures import build_slimpajama_dir, sample_documents

from slimpipe.cli import main
from slimpipe.io.readers import read_all, read_batches
from slimpipe.io.writers import verify_manifest
from slimpipe.mix.build import (
    MixBuildError,
    MixOptions,
    build_mix,
    resolve_tokenizer,
    shard_input,
    worker_tokenizer,
)
from slimpipe.mix.command import mix_command
from slimpipe.mix.config import load_mix
from slimpipe.mix.packed import PackedDataset, open_mix
from slimpipe.outdir import OutputError
from slimpipe.sources import SOURCES

SEQ = 128


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    return sample_documents(tmp_path_factory.mktemp("sample"), size=0.25)


@pytest.fixture(scope="module")
def corpus(docs, tmp_path_factory):
    """A SlimPajama output of the sample, with one validation text planted in train (must be dropped)."""
    return build_slimpajama_dir(tmp_path_factory.mktemp("slimpajama"), docs, contaminate=True)


def _opt(tokens: int, **kw) -> MixOptions:
    kw.setdefault("seq_len", SEQ)
    kw.setdefault("eval_tokens", 4000)
    return MixOptions(tokens=tokens, **kw)


@pytest.fixture(scope="module")
def dc6(corpus, ray_session, tmp_path_factory):
    out = tmp_path_factory.mktemp("dc6") / "mix"
    opt = _opt(150_000, bucket_tokens=40_000)  # 4 shuffle buckets
    return out, build_mix(corpus.root, load_mix("dc6"), out, opt), opt


def _files_sha(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.bin"))}


def _contains(stream: np.ndarray, needle: np.ndarray) -> bool:
    """Whether ``needle`` occurs in ``stream`` as a run of whole tokens."""
    hay, pat = stream.astype("<u4").tobytes(), needle.astype("<u4").tobytes()
    pos = hay.find(pat)
    while pos != -1:
        if pos % 4 == 0:
            return True
        pos = hay.find(pat, pos + 1)
    return False


def test_gpt2_tokenizer_encodes_hello_world():
    assert worker_tokenizer("gpt2").encode("hello world") == [31373, 995]
    assert resolve_tokenizer("gpt2").encode("hello world") == [31373, 995]


def test_shards_take_their_source_from_records_not_folder_names(docs, tmp_path):
    fx = build_slimpajama_dir(tmp_path / "code" / "c4-runs", docs, train_shards=1)  # 'code' means github
    seen = set()
    for batch, _, _ in read_batches(shard_input(fx.root / "train/chunk1/example_train_0.jsonl.zst")):
        if batch is not None:
            seen |= set(batch.column("source").to_pylist())
    assert seen == {s for s, texts in fx.train.items() if texts}


def test_dc6_realised_shares_within_half_a_point(dc6, corpus):
    out, m, opt = dc6
    assert m["mix"]["name"] == "dc6" and m["buckets"] == 4 and m["within_tolerance"]
    train = PackedDataset(out / "train")
    # realised counts are measured on the packed stream: they add up to its targets exactly
    assert sum(e["tokens_realised"] for e in m["sources"].values()) == len(train) * SEQ == m["tokens_realised"]
    assert abs(m["tokens_realised"] - opt.tokens) < SEQ + 8
    for s, e in m["sources"].items():
        assert abs(100 * (e["share_realised"] - e["share_target"])) <= 0.5, s
        assert e["share_target"] == pytest.approx(load_mix("dc6").shares[s])
    # the manifest pins input, tokenizer and seeds
    assert m["input"]["manifest_sha256"] == hashlib.sha256((corpus.root / "manifest.json").read_bytes()).hexdigest()
    gpt2 = resolve_tokenizer("gpt2")
    assert m["tokenizer"]["identity"] == gpt2.identity == train.tokenizer["identity"]
    assert m["seeds"]["seed"] == 42
    # the trainer's reader opens it: one eval set per source, all with the train set's tokenizer
    train, evals = open_mix(out)
    assert sorted(evals) == sorted(SOURCES)
    assert all(len(ds) > 0 for ds in evals.values())
    assert resolve_tokenizer(str(out)).identity == gpt2.identity


def test_no_evaluation_document_in_training_sequences(dc6, corpus):
    out, m, _ = dc6
    tok = resolve_tokenizer("gpt2")
    stream = np.asarray(PackedDataset(out / "train").tokens)
    held = [t for split in (corpus.validation, corpus.test) for texts in split.values() for t in texts]
    assert corpus.contaminated in held
    def at_boundary(text: str) -> np.ndarray:
        """A document as the packer writes it: after an EOS, its first 256 tokens (+ EOS if shorter)."""
        ids = tok.encode(text)
        return np.array([tok.eos_id, *ids[:256], *([tok.eos_id] if len(ids) <= 256 else [])])

    for text in held:
        assert not _contains(stream, at_boundary(text)), text[:60]
    assert sum(e.get("holdout_overlap_dropped", 0) for e in m["sources"].values()) == 1  # the planted copy
    # positive control: the same search finds held-out documents in their own eval set (as its first piece) ...
    from slimpipe.evalset.build import cut_pieces, piece_chars

    cc_eval = np.asarray(PackedDataset(out / "eval" / "common_crawl").tokens)
    firsts = [t[: cut_pieces(t, piece_chars(SEQ))[0][1]] for t in corpus.validation["common_crawl"]]
    assert any(_contains(cc_eval, at_boundary(t)) for t in firsts)
    # ... and training documents in the training stream
    assert sum(_contains(stream, at_boundary(t)) for t in corpus.train["wikipedia"]) >= 1


def test_same_seed_same_bytes_other_seed_other_order(dc6, corpus, tmp_path):
    out, m, opt = dc6
    again = build_mix(corpus.root, load_mix("dc6"), tmp_path / "again", opt)
    assert _files_sha(out) == _files_sha(tmp_path / "again")
    assert again["sources"] == m["sources"]
    other = build_mix(corpus.root, load_mix("dc6"), tmp_path / "other", _opt(150_000, bucket_tokens=40_000, seed=7))
    assert _files_sha(out)["train/part-00000/tokens.bin"] != _files_sha(tmp_path / "other")["train/part-00000/tokens.bin"]
    assert other["within_tolerance"]


def test_upsampling_repeats_a_short_source_and_says_so(corpus, ray_session, tmp_path):
    warnings: list[str] = []
    m = build_mix(corpus.root, load_mix("book=1,common_crawl=1"), tmp_path / "up",
                  _opt(60_000, warn=warnings.append))
    book, cc = m["sources"]["book"], m["sources"]["common_crawl"]
    assert book["upsampled"] and not cc["upsampled"]
    assert book["tokens_target"] == 30_000 > book["tokens_available"]
    assert book["full_epochs"] == 30_000 // book["tokens_available"] >= 2
    assert book["epochs"] == pytest.approx(30_000 / book["tokens_available"])
    assert book["partial_epoch"] == pytest.approx(book["epochs"] - book["full_epochs"])
    assert book["pieces"] == book["full_epochs"] * book["docs_in_used_shards"] + book["truncated_docs"]
    assert any(w.startswith("book:") and "repeating" in w for w in warnings)
    assert m["warnings"] == warnings
    assert m["within_tolerance"] and m["input"]["used_all_shards"]


def test_text_format_writes_a_slimpajama_layout_mix(corpus, ray_session, tmp_path):
    out = tmp_path / "text"
    m = build_mix(corpus.root, load_mix("dc2"), out, _opt(40_000, output_format="text"))
    assert m["format"] == "slimpajama-jsonl-zst" and m["mix_format"] == "slimpipe-mix"
    assert verify_manifest(out) == []
    index = json.loads((out / "index.json").read_text())
    assert index["splits"]["train"][0]["path"] == "train/chunk1/example_train_0.jsonl.zst"
    train, rejects, _ = read_all([out / "train"])
    assert rejects.num_rows == 0
    assert set(train.column("source").to_pylist()) == {"common_crawl", "github"}
    tok = resolve_tokenizer("gpt2")
    counts = dict.fromkeys(("common_crawl", "github"), 0)
    for s, ids in zip(train.column("source").to_pylist(), tok.encode_batch(train.column("text").to_pylist()),
                      strict=True):
        counts[s] += len(ids) + 1
    total = sum(counts.values())
    assert abs(counts["github"] / total - load_mix("dc2").shares["github"]) <= 0.005
    valid, _, _ = read_all([out / "validation"])
    assert not set(valid.column("text").to_pylist()) & set(train.column("text").to_pylist())


def test_trained_tokenizer_is_shared_by_the_mixes_of_an_experiment(corpus, ray_session, tmp_path):
    first = build_mix(corpus.root, load_mix("dc1"), tmp_path / "a", _opt(20_000, tokenizer="train", vocab_size=400))
    assert (tmp_path / "a" / "tokenizer" / "tokenizer.json").is_file()
    assert first["tokenizer"]["vocab_size"] == 400
    # trained on the whole train split, not on the mix: another mix trains the very same tokenizer
    second = build_mix(corpus.root, load_mix("dc4"), tmp_path / "b", _opt(20_000, tokenizer="train", vocab_size=400))
    assert second["tokenizer"]["identity"] == first["tokenizer"]["identity"]
    # and the evaluation sets do not depend on the mix: runs on dc1 and dc4 are scored on the same tokens
    assert _files_sha(tmp_path / "a" / "eval") == _files_sha(tmp_path / "b" / "eval")
    # or reuses the first mix's tokenizer by pointing at that mix
    third = build_mix(corpus.root, load_mix("dc6"), tmp_path / "c", _opt(20_000, tokenizer=str(tmp_path / "a")))
    assert third["tokenizer"]["identity"] == first["tokenizer"]["identity"]
    train, evals = open_mix(tmp_path / "c")
    assert train.vocab_size == 400 and evals


def test_clear_errors(docs, dc6, ray_session, tmp_path):
    out, _, opt = dc6
    assert build_mix(Path(dc6[1]["input"]["path"]), load_mix("dc6"), out, opt) == dc6[1]  # built: nothing to do
    with pytest.raises(OutputError, match="holds a `slimpipe mix` run with other inputs or options"):
        build_mix(Path(dc6[1]["input"]["path"]), load_mix("dc5"), out, opt)
    no_se = build_slimpajama_dir(tmp_path / "no_se", [d for d in docs if d[1] != "stackexchange"])
    with pytest.raises(MixBuildError, match=r"stackexchange \(3\.3%\)"):
        build_mix(no_se.root, load_mix("dc6"), tmp_path / "x", opt)
    assert not (tmp_path / "x").exists()  # failed before touching the output


def test_rerun_after_interruption_reuses_tokenized_shards(corpus, ray_session, tmp_path):
    out = tmp_path / "resume"
    opt = _opt(30_000, keep_work=True, token_cache=str(tmp_path / "cache"))
    build_mix(corpus.root, load_mix("dc3"), out, opt)
    scratch = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("train-*/*/*.arrow")}
    assert scratch
    assert any((out / ".work" / "select").glob("*.arrow"))  # --keep-work keeps the selected pieces
    before = _files_sha(out / "train")
    (out / "manifest.json").unlink()  # as if killed before the end
    build_mix(corpus.root, load_mix("dc3"), out, opt)
    assert {p: p.stat().st_mtime_ns for p in scratch} == scratch
    assert _files_sha(out / "train") == before


def test_command_line(corpus, ray_session, tmp_path):
    out = tmp_path / "cli"
    args = [str(corpus.root), "--config", "dc2", "--tokens", "30k", "-o", str(out), "--seq-len", "64",
            "--eval-tokens", "2k", "--quiet"]
    result = CliRunner().invoke(mix_command, args)
    assert result.exit_code == 0, result.output
    assert "mix dc2" in result.output and "github" in result.output
    assert json.loads((out / "manifest.json").read_text())["tokens_requested"] == 30_000
    again = CliRunner().invoke(mix_command, args)
    assert again.exit_code == 0 and "mix dc2" in again.output  # the same mix: already built, nothing to do
    other = CliRunner().invoke(main, ["mix", *args[:2], "dc1", *args[3:]])  # main: one line, exit 2
    assert other.exit_code == 2 and "with other inputs or options" in other.output
    bad = CliRunner().invoke(mix_command, [args[0], "--config", "c4=1,red/dit=1", *args[3:]])
    assert bad.exit_code == 2 and "'red/dit' is not a source name" in bad.output
    # any name is a source, which the input must then hold: one line naming it, before any work
    absent = CliRunner().invoke(mix_command, [args[0], "--config", "c4=1,reddit=1", *args[3:5], "-o",
                                              str(tmp_path / "absent"), *args[7:]])
    assert absent.exit_code == 1 and "reddit (50.0%)" in absent.output and "no train documents" in absent.output
    assert not (tmp_path / "absent").exists()


def test_any_hf_tokenizer_json_and_an_input_without_index(docs, ray_session, tmp_path):
    """A lowercasing WordPiece tokenizer (bytes per id not exact: the packer apportions them), on an input
    whose index.json is missing (shards found by SlimPajama's layout, tokens counted while tokenizing)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    wp = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wp.normalizer = normalizers.BertNormalizer(lowercase=True)
    wp.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wp.train_from_iterator([t for _, _, t in docs[:150]],
                           trainers.WordPieceTrainer(vocab_size=600, special_tokens=["[UNK]", "[SEP]"],
                                                     show_progress=False))
    wp.save(str(tmp_path / "wordpiece.json"))
    plain = build_slimpajama_dir(tmp_path / "noindex", docs, with_index=False)
    assert not (plain.root / "index.json").exists()
    m = build_mix(plain.root, load_mix("dc2"), tmp_path / "wp", _opt(30_000, tokenizer=str(tmp_path / "wordpiece.json")))
    assert m["within_tolerance"] and m["tokenizer"]["vocab_size"] == 600
    assert m["input"]["index_sha256"] is None and m["input"]["train_shards"] == 4
    train, evals = open_mix(tmp_path / "wp")
    assert train.index["bytes_exact"] is False and train.total_bytes > 0
    assert (tmp_path / "wp" / "tokenizer" / "tokenizer.json").is_file()


def test_a_damaged_input_shard_is_reported(docs, ray_session, tmp_path):
    fx = build_slimpajama_dir(tmp_path / "sp", docs)
    shard = fx.root / "train/chunk1/example_train_0.jsonl.zst"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])  # cut mid-frame, as a failed copy would
    warnings: list[str] = []
    m = build_mix(fx.root, load_mix("dc2"), tmp_path / "mix", _opt(300_000, warn=warnings.append))
    assert m["input"]["used_all_shards"]  # (the budget needs upsampling, so every shard is read)
    assert [b["path"] for b in m["input"]["bad_shards"]] == ["train/chunk1/example_train_0.jsonl.zst"]
    assert any("example_train_0" in w and "truncated" in w for w in warnings)
