"""Small packed mixes of the embedded sample for the training-recipe tests (phases, ALiBi, continual, muP).

Real text: the embedded sample (``slimpipe sample``), split per source into train and held-out documents,
tokenized with a small byte-level BPE trained on it and packed with :func:`slimpipe.mix.packed.write_mix`
(the small-data path of ``slimpipe mix``). Two mixes share the tokenizer: ``web`` (prose sources) and
``code`` (github + stackexchange heavy), like Crystal's language-heavy and code-heavier phases.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from slimpipe.mix.packed import write_mix
from slimpipe.mix.tokenizer import HFTokenizer, train_bpe
from tests.mix_fixtures import sample_documents

MICRO_YAML = """\
name: micro
model: {n_layer: 2, d_model: 64, n_head: 4, d_ff: 170, max_seq_len: 64}
train: {seq_len: 64, batch_size: 8, micro_batch: 8, lr: 3.0e-3, warmup_fraction: 0.1, schedule: linear}
"""

WEB = ("c4", "common_crawl", "wikipedia", "book", "arxiv")
CODE = ("github", "stackexchange")


def split_sample(folder: Path) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Per source: training texts and two held-out texts (deterministic)."""
    by: dict[str, list[str]] = defaultdict(list)
    for _id, source, text in sorted(sample_documents(folder / "sample")):
        by[source].append(text)
    train = {s: texts[2:] for s, texts in by.items() if len(texts) > 2}
    held = {s: texts[:2] for s, texts in by.items() if len(texts) > 2}
    return train, held


def build_mixes(root: Path, vocab_size: int = 384, seq_len: int = 64) -> dict[str, Path]:
    """``web`` and ``code`` mixes (one tokenizer), a ``other-tok`` mix (a different tokenizer), a preset."""
    train, held = split_sample(root)
    tok = train_bpe([t for texts in train.values() for t in texts], vocab_size=vocab_size, out=root / "bpe")
    web_train = [t[:4000] for s in WEB for t in train.get(s, [])]
    code_train = [t[:4000] for s in CODE for t in train.get(s, [])] + web_train[:20]
    evals_web = {s: held[s] for s in ("c4", "wikipedia") if s in held}
    evals_code = {s: held[s] for s in ("github", "stackexchange") if s in held}
    write_mix(root / "web", web_train, evals_web, tok, seq_len)
    write_mix(root / "code", code_train, {**evals_code, "c4": held["c4"]}, tok, seq_len)
    other = train_bpe(code_train[:30], vocab_size=300, out=root / "bpe-other")
    write_mix(root / "other-tok", code_train, evals_code, other, seq_len)
    for name, t, sources in (("web", tok, WEB), ("code", tok, CODE), ("other-tok", other, CODE)):
        # the part of `slimpipe mix`'s manifest that compare reads (name, weights, tokenizer)
        manifest = {"mix": {"name": name, "weights": {s: 1.0 for s in sources}}, "tokenizer": t.describe()}
        (root / name / "manifest.json").write_text(json.dumps(manifest))
    (root / "micro.yaml").write_text(MICRO_YAML)
    return {"web": root / "web", "code": root / "code", "other": root / "other-tok",
            "model": root / "micro.yaml", "bpe": root / "bpe"}


def load_bpe(path: Path) -> HFTokenizer:
    return HFTokenizer(path / "tokenizer.json")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def assert_resumed_run_equals(full: Path, cut: Path, step: str) -> list[dict]:
    """A resumed run (``cut``) equals the uninterrupted one (``full``): the checkpoint ``step``'s model
    and optimizer state bit for bit, and the training log but for wall-clock fields. Returns the log."""
    import torch

    from slimpipe.train.checkpoint import read_checkpoint

    a = read_checkpoint(full / "checkpoints" / step)
    b = read_checkpoint(cut / "checkpoints" / step)
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    for pid, st in a["optimizer"]["state"].items():
        for k, v in st.items():
            assert torch.equal(v, b["optimizer"]["state"][pid][k]), (pid, k)
    strip = ("step_s", "tokens_per_s")
    la = [{k: v for k, v in r.items() if k not in strip} for r in read_jsonl(full / "train_log.jsonl")]
    lb = [{k: v for k, v in r.items() if k not in strip} for r in read_jsonl(cut / "train_log.jsonl")]
    assert la == lb
    return la
