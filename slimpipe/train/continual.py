"""Continual pretraining: start a run from another run's final checkpoint, optionally with more tokens.

``slimpipe train NEW_MIX --init-from RUN`` (or ``--phases``) loads RUN's last checkpoint into the model and
then trains with a fresh optimizer and its own warmup and schedule. Before the first step the loaded
model is scored on this run's held-out sets; ``metrics.json["init_from"]`` records the source run, the
bits per byte before and after, and their difference per source (``forgetting``: positive means the
source got worse, which is what happens to the old sources when the mix moves away from them).

Language adaptation (e.g. Llama 2 to Arabic) also extends the tokenizer: :func:`extend_tokenizer` trains
a byte-level BPE on the new data and appends its tokens (and merges) after the old ones, so every old id
keeps its meaning; ``slimpipe extend-tokenizer`` runs it, ``slimpipe mix --tokenizer DIR`` packs the new
mix with it. When the mix's tokenizer is such an extension of RUN's, each new embedding row starts as the
mean of the embeddings of the token's pieces under the old tokenizer; a first phase with
``train: embeddings`` (see :mod:`slimpipe.train.phases`) then trains only the embeddings.

Refused before training, with one line: a different architecture, or a different vocabulary that is not
an extension of RUN's.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click
import torch

from slimpipe.mix.packed import TOKENIZER_DIR, PackedDataset
from slimpipe.mix.tokenizer import EOS_TEXT, HFTokenizer, load_tokenizer, train_bpe
from slimpipe.train.data import Mix

log = logging.getLogger(__name__)

ARCH_KEYS = ("n_layer", "n_head", "d_model", "d_ff", "bias", "mup")


# ---------------------------------------------------------------------------------------------- tokenizer

def _bpe_parts(tok: HFTokenizer) -> tuple[dict, dict[str, int], list[tuple[str, str]]]:
    data = json.loads(tok.path.read_text(encoding="utf-8"))
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise ValueError(f"{tok.path}: only BPE tokenizers can be extended (this one is {model.get('type')!r})")
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return data, dict(model["vocab"]), merges  # type: ignore[return-value]


def extend_tokenizer(base: HFTokenizer, texts: list[str], new_tokens: int, out: str | Path) -> HFTokenizer:
    """A tokenizer whose first ``base.vocab_size`` ids are ``base``'s and whose next ``new_tokens`` ids are
    the most frequent merges of a BPE trained on ``texts`` that ``base`` lacks (merges appended after the
    old ones, so text without the new pieces tokenizes as before)."""
    if new_tokens < 1:
        raise ValueError("new_tokens must be >= 1")
    data, vocab, merges = _bpe_parts(base)
    if max(vocab.values()) + 1 != base.vocab_size or set(vocab.values()) != set(range(base.vocab_size)):
        raise ValueError(f"{base.path}: ids are not 0..{base.vocab_size - 1}; cannot append tokens")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fresh = train_bpe(texts, vocab_size=base.vocab_size + new_tokens, out=out / ".fresh")
    _, _, fresh_merges = _bpe_parts(fresh)
    added: list[str] = []
    for a, b in fresh_merges:
        token = a + b
        if token in vocab or a not in vocab or b not in vocab:
            continue
        vocab[token] = base.vocab_size + len(added)
        merges.append((a, b))
        added.append(token)
        if len(added) == new_tokens:
            break
    if not added:
        raise ValueError("the new texts add no token the base tokenizer lacks")
    data["model"]["vocab"] = vocab
    data["model"]["merges"] = [[a, b] for a, b in merges]
    path = out / "tokenizer.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    tmp.replace(path)
    for p in (out / ".fresh").iterdir():
        p.unlink()
    (out / ".fresh").rmdir()
    ext = HFTokenizer(path, eos_token=EOS_TEXT if base.eos_id == 0 else None)
    if ext.eos_id != base.eos_id:
        raise ValueError(f"extended tokenizer lost the end-of-text id {base.eos_id}")
    log.info("extended %s by %d tokens (%d asked) -> %s", base.path, len(added), new_tokens, path)
    return ext


def is_extension(base: HFTokenizer, ext: HFTokenizer) -> bool:
    """Every id of ``base`` names the same token in ``ext`` (and ``ext`` only adds ids)."""
    try:
        _, v0, _ = _bpe_parts(base)
        _, v1, _ = _bpe_parts(ext)
    except (ValueError, KeyError):
        return False
    return ext.vocab_size >= base.vocab_size and all(v1.get(t) == i for t, i in v0.items())


def old_pieces(base: HFTokenizer, ext: HFTokenizer) -> dict[int, list[int]]:
    """For each id ``ext`` adds: the ids of its pieces under ``base``'s BPE (same byte-level symbols)."""
    from tokenizers.models import BPE

    _, vocab, merges = _bpe_parts(base)
    model = BPE(vocab=vocab, merges=merges)
    inverse = {i: t for t, i in _bpe_parts(ext)[1].items()}
    return {i: [t.id for t in model.tokenize(inverse[i])] for i in range(base.vocab_size, ext.vocab_size)}


# ---------------------------------------------------------------------------------------------- init

def _run_tokenizer(run: Path, config: dict) -> HFTokenizer | None:
    mix_dir = Path(config.get("train", {}).get("mix_dir", ""))
    for d in (run / "model" / TOKENIZER_DIR, run / "model", mix_dir / TOKENIZER_DIR):
        if (d / "tokenizer.json").is_file():
            tok = load_tokenizer(d)
            return tok if isinstance(tok, HFTokenizer) else None
    return None


def _final_checkpoint(run: Path) -> tuple[dict, dict[str, torch.Tensor], str]:
    """(trainer meta with plan and step, full model state on the CPU, name) of a run's last checkpoint."""
    from slimpipe.train.checkpoint import checkpoints, load_model_state, read_meta

    found = checkpoints(run)
    if not found:
        raise ValueError(f"--init-from {run}: no checkpoint in {run / 'checkpoints'}")
    return read_meta(found[-1]), load_model_state(found[-1]), found[-1].name


def init_from_run(model: torch.nn.Module, run_dir: str | Path, train_set: PackedDataset, mix: Mix | str | Path,
                  eval_sets: dict[str, PackedDataset] | None = None, *, batch_size: int = 8,
                  device: torch.device | str = "cpu") -> dict:
    """Load ``run_dir``'s final checkpoint into ``model`` (built for this run's data) and score it on
    ``eval_sets``; returns what ``metrics.json["init_from"]`` records (``eval_before`` is turned into
    ``forgetting`` at the end of the run). ``mix`` (this run's :class:`~slimpipe.train.data.Mix` or its folder)
    gives the tokenizer when the vocabulary grew. Raises ``ValueError`` (one line) when it cannot fit."""
    run = Path(run_dir)
    meta, state, name = _final_checkpoint(run)
    old_model = meta["plan"]["model"]
    new_model = model.cfg.to_dict()
    diff = [f"{k} {old_model.get(k)} vs {new_model.get(k)}" for k in ARCH_KEYS if old_model.get(k) != new_model.get(k)]
    if diff:
        raise ValueError(f"--init-from {run}: different architecture ({', '.join(diff)}; run vs this model)")
    config = json.loads((run / "config.json").read_text()) if (run / "config.json").is_file() else {}
    old_ident = ((config.get("mix") or {}).get("train") or {}).get("tokenizer", {}).get("identity")
    new_ident = train_set.tokenizer.get("identity")
    v_old, v_new = int(old_model["vocab_size"]), int(new_model["vocab_size"])
    pieces: dict[int, list[int]] = {}
    if v_old != v_new or (old_ident and new_ident and old_ident != new_ident):
        base = _run_tokenizer(run, config)
        mix = Mix.open(mix)
        ext = mix.tokenizer() if mix.tokenizer_dir.is_dir() else None
        if base is None or not isinstance(ext, HFTokenizer) or v_new <= v_old or not is_extension(base, ext):
            raise ValueError(f"--init-from {run}: vocabulary differs (run {v_old} ids, mix {v_new}) and the mix's "
                             "tokenizer is not an extension of the run's (see `slimpipe extend-tokenizer`)")
        pieces = old_pieces(base, ext)
    state = dict(state)
    wte = state.pop("wte.weight")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if [k for k in missing if k != "wte.weight"] or unexpected:
        raise ValueError(f"--init-from {run}: checkpoint does not fit ({missing or unexpected})")
    with torch.no_grad():
        w = model.wte.weight
        w[:v_old] = wte[:v_old].to(w.device, w.dtype)
        for i, ids in pieces.items():
            w[i] = wte[torch.tensor(ids)].mean(dim=0).to(w.device, w.dtype)
    info = {"run": str(run.resolve()), "checkpoint": name, "step": int(meta["step"]),
            "vocab": {"run": v_old, "this": v_new, "added": len(pieces)}}
    if eval_sets:
        from slimpipe.train.evaluate import evaluate_sets

        info["eval_before"] = evaluate_sets(model, eval_sets, batch_size=batch_size, device=device)
    else:
        info["eval_before"] = {"sources": {}, "total": {}}
    return info


def forgetting(before: dict, after: dict) -> dict[str, dict[str, float]]:
    """Per source (and total): bits per byte before and after this run, and after - before."""
    out = {}
    for name in list(after.get("sources", {})) + ["total"]:
        a = after["total"] if name == "total" else after["sources"].get(name)
        b = before["total"] if name == "total" else before["sources"].get(name)
        if a and b and "bpb" in a and "bpb" in b:
            out[name] = {"before": b["bpb"], "after": a["bpb"], "delta": a["bpb"] - b["bpb"]}
    return out


# ---------------------------------------------------------------------------------------------- command

@click.command(name="extend-tokenizer")
@click.argument("base", type=click.Path(exists=True))
@click.argument("sources", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--new-tokens", type=int, required=True, help="How many tokens to add (at most).")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False),
              help="Folder for the extended tokenizer.json (pass it to `slimpipe mix --tokenizer`).")
@click.option("--max-bytes", default="200M", show_default=True, help="Text read from SOURCES for the BPE.")
@click.option("--force", is_flag=True, help="Write into a non-empty OUT that is not a slimpipe output (refused if a "
              "file there would be overwritten; nothing there is ever deleted).")
def extend_tokenizer_command(base: str, sources: tuple[str, ...], new_tokens: int, output: str,
                             max_bytes: str, force: bool = False) -> None:
    """Append tokens learnt from SOURCES (RedPajama-style files or folders) to BASE (a tokenizer.json, its
    folder, a mix or a run), keeping every old id; for continual pretraining with --init-from."""
    from slimpipe.io.readers import discover_files, read_batches
    from slimpipe.units import parse_count

    b = Path(base)
    candidates = [b, b / TOKENIZER_DIR, b / "model" / TOKENIZER_DIR, b / "model"]
    folder = next((c for c in candidates if (c / "tokenizer.json").is_file() or c.is_file()), None)
    if folder is None:
        raise click.ClickException(f"{base}: no tokenizer.json (give a tokenizer, its folder, a mix or a run)")
    tok = load_tokenizer(folder)
    if not isinstance(tok, HFTokenizer):
        raise click.ClickException(f"{base}: only byte-level BPE tokenizer.json files can be extended")
    try:
        limit = parse_count(max_bytes, what="byte count")
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--max-bytes") from exc
    from slimpipe.outdir import claim, identity, input_identity

    # OUT: new, empty or this same extension's; a user's folder (its own tokenizer.json) is refused in one line
    claim(output, "extend-tokenizer", identity(base=input_identity([base]), inputs=input_identity(sources),
                                               new_tokens=new_tokens, max_bytes=limit),
          sources=list(sources), force=force)
    texts: list[str] = []
    used = 0
    for f in discover_files(list(sources)):  # streamed: only --max-bytes of text is ever held
        for docs, _rejects, _stats in read_batches(f):
            for text in (docs.column("text").to_pylist() if docs is not None else []):
                if used < limit:
                    texts.append(text)
                    used += len(text.encode("utf-8"))
            if used >= limit:
                break
        if used >= limit:
            break
    if not texts:
        raise click.ClickException(f"no documents in {' '.join(sources)}")
    try:
        ext = extend_tokenizer(tok, texts, new_tokens, output)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{tok.vocab_size} -> {ext.vocab_size} ids ({ext.vocab_size - tok.vocab_size} new, from "
               f"{len(texts)} documents); wrote {Path(output) / 'tokenizer.json'}")
