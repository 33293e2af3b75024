"""The trainer reads a packed mix from object storage (a real S3-compatible server on loopback): the mix
is cached on local disk once and training on it is the same as training on the local folder."""

from __future__ import annotations

import json
from pathlib import Path
from pydoc_data.topics import topics

import pytest

from slimpipe import storage
from slimpipe.mix.packed import write_mix
from slimpipe.mix.tokenizer import train_bpe

MICRO = """\
name: micro
model: {n_layer: 1, d_model: 32, n_head: 2, d_ff: 96, max_seq_len: 32}
train: {seq_len: 32, batch_size: 8, micro_batch: 8, lr: 3.0e-3, warmup_fraction: 0.1, schedule: linear}
"""


def test_train_from_a_mix_uri_equals_training_from_the_folder(s3_server, tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    from slimpipe.train.loop import train
    from slimpipe.train.plan import TrainConfig

    texts = [topics[k] for k in sorted(topics)]
    tok = train_bpe(texts, vocab_size=300, out=tmp_path / "bpe")
    write_mix(tmp_path / "mix", texts[:-6], {"book": texts[-6:]}, tok, 32)
    (tmp_path / "mix" / "manifest.json").write_text(json.dumps({"eval_set": "abc123"}) + "\n")
    (tmp_path / "micro.yaml").write_text(MICRO)
    uri = f"{s3_server['url']}/mixes/micro"
    storage.upload_tree(tmp_path / "mix", uri)
    monkeypatch.setenv("SLIMPIPE_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)
    for name, mix in (("local", str(tmp_path / "mix")), ("s3", uri)):
        cfg = TrainConfig(mix_dir=mix, out_dir=str(tmp_path / name), model=str(tmp_path / "micro.yaml"),
                          max_steps=3, eval_interval=3, eval_sequences=4, export=False, seed=1)
        train(cfg)
    local = json.loads((tmp_path / "local" / "metrics.json").read_text())
    remote = json.loads((tmp_path / "s3" / "metrics.json").read_text())
    assert remote["steps"] == local["steps"] == 3 and remote["tokens"] == local["tokens"]
    assert remote["final_train_loss"] == local["final_train_loss"]
    assert remote["eval"] == local["eval"] and "book" in json.dumps(remote["eval"])
    assert remote.get("eval_set") == local.get("eval_set") == "abc123"
    assert any(Path(tmp_path / "cache").rglob("tokens.bin"))


def test_a_mix_from_s3_to_s3_equals_the_local_build(s3_server, ray_session, tmp_path):
    """SLIMPAJAMA_DIR, OUT and the token cache all in object storage: the same bytes as a local build,
    nothing left in OUT but the mix, and the second build is served by the cache in the bucket."""
    from mix_fixtures import build_slimpajama_dir, sample_documents

    from slimpipe.mix.build import MixOptions, build_mix
    from slimpipe.mix.config import load_mix

    fx = build_slimpajama_dir(tmp_path / "sp", sample_documents(tmp_path / "sample", size=0.1))
    base = f"{s3_server['url']}/mixtest"
    storage.upload_tree(fx.root, f"{base}/sp")
    opt = dict(tokens=12_000, seq_len=32, eval_tokens=1500, bucket_tokens=4_000)
    local = build_mix(fx.root, load_mix("dc2"), tmp_path / "local", MixOptions(**opt))
    remote = build_mix(f"{base}/sp", load_mix("dc2"), f"{base}/mix", MixOptions(**opt))
    assert remote["sources"] == local["sources"] and remote["train"] == local["train"]
    assert remote["token_cache"]["path"].startswith(f"{base}/sp/_cache/tokens/")
    files = {f[len(f"{base}/mix/"):] for f in storage.list_files(f"{base}/mix")}
    assert not any(f.startswith(".work") for f in files) and "manifest.json" in files
    for f in sorted(x for x in files if x.endswith(".bin")):
        assert storage.read_bytes(f"{base}/mix/{f}") == (tmp_path / "local" / f).read_bytes(), f
    assert "tokenizer/tokenizer.json" in files or any(f.startswith("tokenizer/") for f in files)
    # the first mix's tokenizer, by its URI: the same tokenizer, so the cache in the bucket serves it all
    again = build_mix(f"{base}/sp", load_mix("dc2"), f"{base}/mix2", MixOptions(**opt, tokenizer=f"{base}/mix"))
    assert again["tokenizer"]["identity"] == local["tokenizer"]["identity"]
    assert again["token_cache"]["train_entries_tokenized"] == 0 and again["token_cache"]["train_entries_hit"] > 0
    # a tokenizer trained for an OUT in the bucket lands in OUT/tokenizer, and Ray tasks load it from there
    trained = build_mix(f"{base}/sp", load_mix("dc1"), f"{base}/mix3",
                        MixOptions(**opt, tokenizer="train", vocab_size=300))
    assert trained["tokenizer"]["vocab_size"] == 300 and trained["within_tolerance"]
    assert storage.exists(f"{base}/mix3/tokenizer/tokenizer.json")
    from slimpipe.mix.packed import open_mix

    train, evals = open_mix(f"{base}/mix", cache_dir=tmp_path / "cache")
    assert len(train) == local["train"]["n_sequences"] and set(evals) == set(open_mix(tmp_path / "local")[1])


def test_the_command_line_takes_uris_and_names_a_bad_one(s3_server, ray_session, tmp_path):
    from click.testing import CliRunner
    from mix_fixtures import build_slimpajama_dir, sample_documents

    from slimpipe.mix.command import mix_command

    fx = build_slimpajama_dir(tmp_path / "sp", sample_documents(tmp_path / "sample", size=0.1))
    base = f"{s3_server['url']}/cli"
    storage.upload_tree(fx.root, f"{base}/sp")
    args = ["--config", "dc2", "--tokens", "8k", "--seq-len", "32", "--eval-tokens", "1k", "--quiet"]
    ok = CliRunner().invoke(mix_command, [f"{base}/sp", *args, "-o", f"{base}/mix"])
    assert ok.exit_code == 0, ok.output
    assert f"manifest: {base}/mix/manifest.json" in ok.output and storage.exists(f"{base}/mix/manifest.json")
    again = CliRunner().invoke(mix_command, [f"{base}/sp", *args, "-o", f"{base}/mix"])
    assert again.exit_code == 0 and "mix dc2" in again.output  # the same mix on the same OUT: already built
    bad = CliRunner().invoke(mix_command, [f"{s3_server['url']}-missing/sp", *args, "-o", str(tmp_path / "x")])
    assert bad.exit_code == 1 and "-missing/sp" in bad.output and len(bad.output.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
    local = CliRunner().invoke(mix_command, [str(tmp_path / "nothing"), *args, "-o", str(tmp_path / "y")])
    assert local.exit_code == 2 and "no such folder" in local.output
