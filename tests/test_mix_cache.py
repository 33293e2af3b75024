"""The per-source token cache: a source is tokenized once per tokenizer and input, and every later mix
(any weights, any budget, the Python API a proposal tool uses) draws from it with identical output."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from mix_fixtures import build_slimpajama_dir, sample_documents

from slimpipe.mix.build import MixOptions, build_mix, fill_token_cache, realise_mix
from slimpipe.mix.config import load_mix

SEQ = 64


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    docs = sample_documents(tmp_path_factory.mktemp("sample"), size=0.25)
    return build_slimpajama_dir(tmp_path_factory.mktemp("slimpajama"), docs)


def _opt(tokens: int, cache: Path, **kw) -> MixOptions:
    return MixOptions(tokens=tokens, seq_len=SEQ, eval_tokens=2000, token_cache=str(cache), **kw)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_second_mix_tokenizes_nothing_and_a_new_source_only_itself(corpus, ray_session, tmp_path):
    cache = tmp_path / "cache"
    first = build_mix(corpus.root, load_mix("common_crawl=1,github=1"), tmp_path / "a", _opt(30_000, cache))
    c1 = first["token_cache"]
    assert c1["train_entries_hit"] == 0 and c1["train_entries_tokenized"] >= 2
    assert c1["holdout_shards_tokenized"] == 2 and c1["holdout_shards_hit"] == 0
    assert Path(c1["path"]).is_relative_to(cache)

    # other weights, another budget: every (shard, source) it needs is a hit, nothing is tokenized
    second = build_mix(corpus.root, load_mix("common_crawl=3,github=1"), tmp_path / "b", _opt(20_000, cache))
    c2 = second["token_cache"]
    assert c2["train_entries_tokenized"] == 0 and c2["holdout_shards_tokenized"] == 0
    assert c2["train_entries_hit"] > 0 and c2["holdout_shards_hit"] == 2

    # a source the cache lacks is tokenized; what the cache holds is never written again
    before = {p: p.stat().st_mtime_ns for p in cache.rglob("*.arrow")}
    third = build_mix(corpus.root, load_mix("common_crawl=1,wikipedia=1"), tmp_path / "c", _opt(20_000, cache))
    c3 = third["token_cache"]
    after = {p: p.stat().st_mtime_ns for p in cache.rglob("*.arrow")}
    assert {p: after[p] for p in before} == before
    new = [p for p in after if p not in before]
    # (a task past the needed prefix may finish while being cancelled: its entries are kept, not counted)
    assert any(p.parent.name == "wikipedia" for p in new) and 0 < c3["train_entries_tokenized"] <= len(new)
    assert c3["train_entries_hit"] > 0  # its common_crawl came from the cache

    # a cached build is byte-identical to one from a cold cache
    cold = build_mix(corpus.root, load_mix("common_crawl=3,github=1"), tmp_path / "cold",
                     _opt(20_000, tmp_path / "cold-cache"))
    assert cold["token_cache"]["train_entries_hit"] == 0
    for rel in ("train/part-00000/tokens.bin", "train/part-tails/seq_bytes.bin", "eval/github/tokens.bin"):
        assert _sha(tmp_path / "b" / rel) == _sha(tmp_path / "cold" / rel), rel
    assert cold["sources"] == second["sources"]


def test_fill_the_cache_once_then_realise_mixes_from_weights(corpus, ray_session, tmp_path):
    cache = tmp_path / "cache"
    filled = fill_token_cache(corpus.root, token_cache=str(cache), seq_len=SEQ)
    assert filled["train_entries_tokenized"] == 7 * 4  # every source of every train shard (7 x 4)
    for k, weights in enumerate(({"c4": 1, "book": 2}, {"arxiv": 1, "stackexchange": 1, "wikipedia": 5})):
        m = realise_mix(corpus.root, weights, 15_000, tmp_path / f"p{k}", name=f"proposal-{k}", seq_len=SEQ,
                        eval_tokens=2000, token_cache=str(cache))
        assert m["mix"]["name"] == f"proposal-{k}" and m["within_tolerance"]
        assert m["token_cache"]["train_entries_tokenized"] == 0 and m["token_cache"]["holdout_shards_tokenized"] == 0
    assert fill_token_cache(corpus.root, token_cache=str(cache), seq_len=SEQ)["train_entries_tokenized"] == 0


def test_an_unwritable_cache_is_one_clear_error(corpus, ray_session, tmp_path):
    from slimpipe.mix.build import MixBuildError

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(MixBuildError, match=r"token cache .*file.*--token-cache"):
        build_mix(corpus.root, load_mix("dc1"), tmp_path / "x", _opt(5_000, blocker / "cache"))
    assert not (tmp_path / "x").exists()  # before touching the output


def test_a_source_that_is_not_redpajamas_is_mixed_and_scored(ray_session, tmp_path):
    """``arabic_web`` (any name) is a source: a custom mix names it, it gets its share, its own eval set
    and cache entries; DC presets give it nothing."""
    docs = sample_documents(tmp_path / "sample", size=0.25)
    renamed = [(i, "arabic_web" if s == "wikipedia" else s, t) for i, s, t in docs]
    fx = build_slimpajama_dir(tmp_path / "sp", renamed)
    m = build_mix(fx.root, load_mix("common_crawl=1,arabic_web=1"), tmp_path / "m", _opt(20_000, tmp_path / "c"))
    assert m["sources"]["arabic_web"]["share_target"] == 0.5 and m["within_tolerance"]
    assert abs(m["sources"]["arabic_web"]["share_realised"] - 0.5) < 0.005
    assert m["eval"]["validation"]["arabic_web"]["written"] and (tmp_path / "m" / "eval" / "arabic_web").is_dir()
    assert any((tmp_path / "c").rglob("arabic_web/*.arrow"))
    dc2 = build_mix(fx.root, load_mix("dc2"), tmp_path / "r", _opt(20_000, tmp_path / "c"))
    assert "arabic_web" not in dc2["sources"] and set(dc2["epochs"]) == {"common_crawl", "github"}
    assert "arabic_web" in dc2["eval"]["validation"]  # still scored: every source of the data has an eval set
