"""Per-source held-out loss and bits per byte.

Loss per token depends on the tokenizer; bits per byte does not, which is what makes runs on different
mixes or vocabularies comparable: ``bpb = sum(NLL in nats) / (ln 2 * UTF-8 bytes those targets cover)``.
The byte counts come from the packed sets (exact per sequence, see :mod:`slimpipe.mix.packed`).
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from slimpipe.mix.packed import PackedDataset
from slimpipe.train.data import Mix


def bits_per_byte(nll_nats: float, n_bytes: int) -> float:
    """Total NLL (nats) over some targets -> bits per UTF-8 byte of the text those targets encode."""
    if n_bytes <= 0:
        return float("nan")
    return float(nll_nats) / (math.log(2.0) * float(n_bytes))


def summarize(nll_nats: float, n_tokens: int, n_bytes: int) -> dict:
    """The numbers reported for one set: mean loss per token, perplexity, bits per byte, and the sums."""
    loss = nll_nats / n_tokens if n_tokens else float("nan")
    return {"loss": loss, "ppl": math.exp(loss) if loss < 700 else float("inf"),
            "bpb": bits_per_byte(nll_nats, n_bytes), "nll": nll_nats, "tokens": int(n_tokens), "bytes": int(n_bytes)}


def _eval_count(ds: PackedDataset, max_sequences: int | None) -> int:
    n = len(ds)
    if max_sequences:
        n = min(n, max(ds.group, max_sequences - max_sequences % ds.group))
    return n


@torch.no_grad()
def evaluate_sets(model: torch.nn.Module, sets: dict[str, PackedDataset], *, batch_size: int,
                  device: torch.device | str = "cpu", max_sequences: int | None = None,
                  autocast_dtype: torch.dtype | None = None) -> dict:
    """Loss and bits per byte on each set (the first ``max_sequences`` sequences, or all) and in total.

    Under ``torch.distributed`` each rank scores an interleaved share and the sums are all-reduced, so
    every rank returns the same numbers. ``total`` pools all targets (sources weighted by their size);
    ``mean_bpb`` is the unweighted mean over sources.
    """
    device = torch.device(device)
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    was_training = model.training
    model.eval()
    names = list(sets)
    sums = torch.zeros(len(names), 2, dtype=torch.float64)  # (nll, tokens) per set, this rank's share
    for si, name in enumerate(names):
        ds = sets[name]
        n = _eval_count(ds, max_sequences)
        mine = np.arange(rank, n, world)
        for start in range(0, len(mine), batch_size):
            rows = torch.from_numpy(ds.get_batch(mine[start : start + batch_size])).to(device)
            x, y = rows[:, :-1], rows[:, 1:]
            ctx = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype
                   else contextlib.nullcontext())
            with ctx:
                _, nll = model(x, y, reduction="sum")
            sums[si, 0] += float(nll)
            sums[si, 1] += y.numel()
    if distributed:
        reduced = sums.to(device)
        dist.all_reduce(reduced)
        sums = reduced.cpu()
    if was_training:
        model.train()
    out: dict = {"sources": {}}
    tot_nll, tot_tok, tot_bytes = 0.0, 0, 0
    for si, name in enumerate(names):
        nll, tokens = float(sums[si, 0]), int(sums[si, 1])
        n_bytes = sets[name].prefix_bytes(_eval_count(sets[name], max_sequences))
        out["sources"][name] = summarize(nll, tokens, n_bytes)
        tot_nll, tot_tok, tot_bytes = tot_nll + nll, tot_tok + tokens, tot_bytes + n_bytes
    out["total"] = summarize(tot_nll, tot_tok, tot_bytes)
    bpbs = [s["bpb"] for s in out["sources"].values() if s["bytes"] > 0]
    out["mean_bpb"] = float(np.mean(bpbs)) if bpbs else float("nan")
    return out


# ------------------------------------------------------------------------------------ per-document scoring

DOC_BPB_DEFINITION = (
    "bits per byte = sum over evaluation documents of the NLL (nats) of the document's own tokens / "
    "(ln 2 x the UTF-8 bytes of those tokens). A document is scored as its pieces (character ranges of about "
    "one context, named in the set's pieces.json; a document's figure sums its pieces), each piece on its own, as "
    "lm-eval's rolling log-likelihood does on that text: its first token is predicted from the end-of-text "
    "token alone, later tokens from up to seq_len preceding tokens of the same piece (disjoint prediction "
    "windows, each with full context); no window crosses a piece boundary and the end-of-text token that "
    "follows a piece is never predicted, so no prediction is counted against 0 bytes. total pools every document of every "
    "source; mean is the unweighted mean of the per-source figures.")


def documents(ds: PackedDataset) -> np.ndarray:
    """``(n_docs, 2)`` [start, end) positions of each document's tokens in a packed set's token stream.

    The stream is ``EOS doc EOS doc ...``; a set with ``pieces.json`` (an evaluation set: each document of
    the stream is a piece of an evaluation document) gives its pieces' spans from their token counts. A
    last document cut by an older packer's dropped tail is kept as the piece the set holds."""
    if getattr(ds, "pieces", None) is not None:
        return ds.piece_spans()
    tokens = np.asarray(ds.tokens)
    if tokens.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    eos = np.flatnonzero(tokens == ds.eos_id)
    starts = eos + 1
    ends = np.concatenate([eos[1:], [tokens.size]]) if eos.size else np.zeros(0, np.int64)
    spans = np.stack([starts, ends], axis=1).astype(np.int64)
    return spans[spans[:, 1] > spans[:, 0]]


def _windows(spans: np.ndarray, L: int) -> list[tuple[int, int, int, int]]:
    """Prediction windows ``(doc, input_start, input_end, first_scored)`` (stream positions): targets
    ``[input_start + 1, input_end + 1)`` of which those from ``first_scored`` on are counted."""
    out = []
    for d, (start, end) in enumerate(spans.tolist()):
        a = start
        while a < end:
            b = min(a + L, end)
            lo = max(start, b - L)  # full context: the window ends at b and reaches back L targets
            out.append((d, lo - 1, b - 1, a))
            a = b
    return out


def length_buckets(max_len: int, buckets: int = 4) -> list[int]:
    """The lengths evaluation pads to below ``max_len``: ``max_len``, ``max_len/2``, ... (``buckets`` of them,
    none below 1), ascending."""
    sizes = [max_len]
    while len(sizes) < buckets and sizes[-1] // 2 >= 1:
        sizes.append(sizes[-1] // 2)
    return sorted(sizes)


def length_bucket(T: int, max_len: int, buckets: int = 4, lengths: list[int] | None = None) -> int:
    """The evaluation length ``T`` is padded to (targets there ignored): the smallest of ``lengths``
    (default :func:`length_buckets` of ``max_len``) that holds it, so a compiled model (FlexAttention on
    CUDA) sees at most that many shapes over a whole evaluation instead of one per window length (#20.1).
    Padding after a window's end changes nothing before it (causal attention). ``T`` itself past them."""
    for size in lengths or length_buckets(max_len, buckets):
        if size >= T:
            return size
    return T


def _doc_bytes(ds: PackedDataset, spans: np.ndarray, byte_lengths: np.ndarray | None, decode) -> np.ndarray:
    tokens = np.asarray(ds.tokens)
    if byte_lengths is not None:
        csum = np.concatenate([[0], np.cumsum(byte_lengths[tokens.astype(np.int64)], dtype=np.int64)])
        return csum[spans[:, 1]] - csum[spans[:, 0]]
    if decode is None:
        raise ValueError(f"{ds.path}: per-document bytes need the tokenizer's byte lengths or its decoder")
    return np.array([len(decode(tokens[s:e].tolist()).encode("utf-8")) for s, e in spans.tolist()], dtype=np.int64)


@torch.no_grad()
def evaluate_documents(model: torch.nn.Module, sets: dict[str, PackedDataset], *, seq_len: int, batch_size: int,
                       byte_lengths: np.ndarray | None = None, decode=None, device: torch.device | str = "cpu",
                       autocast_dtype: torch.dtype | None = None, pad_lengths: list[int] | None = None
                       ) -> tuple[dict, dict[str, dict[str, np.ndarray]]]:
    """Score every document of every set on its own (see :data:`DOC_BPB_DEFINITION`).

    A compiled model (CUDA, or ``compile_regions``) gets batches padded to one of ``pad_lengths`` (default
    :func:`length_buckets` of ``seq_len``; a caller scoring several lengths passes one grid for all, see
    :mod:`slimpipe.train.interp`) and to ``batch_size`` rows, so it compiles one graph per length at most.

    Returns the summary (``sources``, ``total``, ``mean_bpb``, ``definition``) and the per-document arrays
    ``{source: {"nll", "tokens", "bytes"}}``. Under ``torch.distributed`` ranks share the windows (every
    rank runs the same number of forward passes) and the sums are all-reduced.
    """
    device = torch.device(device)
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    was_training = model.training
    model.eval()
    per_doc: dict[str, dict[str, np.ndarray]] = {}
    out: dict = {"sources": {}, "definition": DOC_BPB_DEFINITION}
    for name, ds in sets.items():
        spans = documents(ds)
        stream = torch.from_numpy(np.asarray(ds.tokens, dtype=np.int64))
        wins = _windows(spans, seq_len)
        wins.sort(key=lambda w: w[2] - w[1])  # similar lengths share a batch: little padding
        mine = wins[rank::world]
        n_batches = -(-len(wins) // (world * batch_size)) if wins else 0
        # pad lengths to a bucket and the last batch with ignored rows (#20.1) where shapes cost compiles;
        # an eager CPU model would only pay for the padding
        pad_shapes = device.type != "cpu" or bool(getattr(model, "compiled_regions", False))
        nll = torch.zeros(len(spans), dtype=torch.float64)
        for bi in range(n_batches):
            chunk = mine[bi * batch_size : (bi + 1) * batch_size] or wins[:1]  # ranks run equal passes
            scored = bool(mine[bi * batch_size : (bi + 1) * batch_size])
            T = max(e - s for _, s, e, _ in chunk)
            rows_b = len(chunk)
            if pad_shapes:  # a compiled model (CUDA, or compile_regions): few distinct shapes, no recompiles
                T, rows_b = length_bucket(T, seq_len, lengths=pad_lengths), batch_size
            x = torch.full((rows_b, T), ds.eos_id, dtype=torch.long)
            y = torch.full((rows_b, T), -100, dtype=torch.long)
            for r, (_, s, e, first) in enumerate(chunk):
                x[r, : e - s] = stream[s:e]
                tgt = stream[s + 1 : e + 1].clone()
                tgt[: first - (s + 1)] = -100  # context only
                y[r, : e - s] = tgt
            ctx = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
            with ctx:
                _, loss = model(x.to(device), y.to(device), reduction="none")
            if scored:
                per_row = loss.view(rows_b, T).double().cpu().sum(dim=1)
                for r, (d, *_rest) in enumerate(chunk):
                    nll[d] += float(per_row[r])
        if distributed:
            reduced = nll.to(device)
            dist.all_reduce(reduced)
            nll = reduced.cpu()
        tokens = (spans[:, 1] - spans[:, 0]).astype(np.int64)
        pieces = getattr(ds, "pieces", None)
        if pieces is not None:  # one entry per evaluation document: the sums over its pieces (one cluster)
            n_docs = len(pieces["docs"])
            doc_nll = np.bincount(pieces["doc"], weights=nll.numpy(), minlength=n_docs)
            tokens = np.bincount(pieces["doc"], weights=tokens, minlength=n_docs).astype(np.int64)
            nbytes = np.bincount(pieces["doc"], weights=pieces["bytes"], minlength=n_docs).astype(np.int64)
        else:
            doc_nll, nbytes = nll.numpy(), _doc_bytes(ds, spans, byte_lengths, decode)
        excluded = bool((ds.index.get("meta") or {}).get("excluded_from_intervals"))
        per_doc[name] = {"nll": doc_nll, "tokens": tokens, "bytes": nbytes}
        out["sources"][name] = {**summarize(float(doc_nll.sum()), int(tokens.sum()), int(nbytes.sum())),
                                "docs": len(doc_nll), "pieces": len(spans), "excluded_from_intervals": excluded}
    if was_training:
        model.train()
    tot = [sum(v[k] for v in out["sources"].values()) for k in ("nll", "tokens", "bytes")]
    out["total"] = {**summarize(float(tot[0]), int(tot[1]), int(tot[2])),
                    "docs": sum(v["docs"] for v in out["sources"].values())}
    bpbs = [s["bpb"] for s in out["sources"].values() if s["bytes"] > 0]
    out["mean_bpb"] = float(np.mean(bpbs)) if bpbs else float("nan")
    return out, per_doc


def save_document_losses(path, per_doc: dict[str, dict[str, np.ndarray]], meta: dict | None = None) -> None:
    """``eval_losses.npz``: ``<source>.nll`` (float64 nats), ``<source>.tokens``, ``<source>.bytes`` per document."""
    import io
    import json

    from slimpipe import storage

    arrays = {f"{s}.{k}": v for s, d in per_doc.items() for k, v in d.items()}
    arrays["_meta"] = np.frombuffer(json.dumps({"sources": list(per_doc), **(meta or {})}).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    storage.write_bytes_atomic(path, buf.getvalue())


def load_document_losses(path) -> tuple[dict[str, dict[str, np.ndarray]], dict]:
    """What :func:`save_document_losses` wrote: (per-source arrays, meta)."""
    import json

    with np.load(path) as z:
        meta = json.loads(bytes(z["_meta"]).decode())
        per_doc = {s: {k: z[f"{s}.{k}"] for k in ("nll", "tokens", "bytes")} for s in meta["sources"]}
    return per_doc, meta


def scored_subset_of(sets: dict[str, PackedDataset]) -> str | None:
    """The identity of what :func:`evaluate_documents` scores on ``sets``: the hash of every (source,
    document id, character range) piece (:func:`slimpipe.mix.packed.scored_subset`); None when a set
    names no pieces."""
    from slimpipe.mix.packed import scored_subset

    entries = []
    for name, ds in sets.items():
        p = getattr(ds, "pieces", None)
        if p is None:
            return None
        entries += [(name, p["docs"][d], a, b) for d, a, b in zip(p["doc"].tolist(), p["start"].tolist(),
                                                                   p["end"].tolist(), strict=True)]
    return scored_subset(entries)


def excluded_sources(sets: dict[str, PackedDataset], manifest: dict | None) -> dict[str, str]:
    """``{source: reason}`` of the sources left out of the total and mean intervals (fewer than 30
    evaluation documents): from each set's ``index.json`` meta and the mix ``manifest``'s ``eval`` entry
    (a source with no evaluation document at all has no set)."""
    out = {}
    for s, v in (((manifest or {}).get("eval") or {}).get("validation") or {}).items():
        if isinstance(v, dict) and v.get("excluded_from_intervals"):
            out[s] = v.get("reason") or "fewer evaluation documents than an interval needs"
    for name, ds in sets.items():
        meta = ds.index.get("meta") or {}
        if meta.get("excluded_from_intervals"):
            out[name] = meta.get("reason") or out.get(name) or "fewer evaluation documents than an interval needs"
    return out


def final_document_eval(model: torch.nn.Module, sets: dict[str, PackedDataset], mix: Mix | str | Path, out_dir,
                        *, seq_len: int,
                        batch_size: int, device: torch.device | str = "cpu", autocast_dtype: torch.dtype | None = None,
                        write: bool = True) -> dict:
    """The end-of-training evaluation compare uses: per-document bits per byte on every eval set, the
    per-document losses in ``OUT/eval_losses.npz`` and the mix's evaluation-set identity. ``mix`` (a
    :class:`~slimpipe.train.data.Mix` or its folder) gives the manifest and the tokenizer.

    Returns what goes into ``metrics.json``: ``{"eval_docs": summary, "eval_set": hash or None,
    "scored_subset": hash or None, "excluded_from_intervals": {source: reason}}`` (``eval_docs`` holds
    ``error`` instead when the mix has no tokenizer to count bytes with). ``scored_subset`` identifies the
    scored (source, document id, character range) pieces (:func:`scored_subset_of`); None for a mix whose
    sets name no pieces (built before pieces existed)."""
    import logging

    log = logging.getLogger(__name__)
    mix, out_dir = Mix.open(mix), Path(out_dir)
    eval_set = None
    if mix.manifest is not None:
        eval_set = mix.manifest.get("eval_set")
        if isinstance(eval_set, dict):
            eval_set = eval_set.get("eval_set") or eval_set.get("hash")
    result: dict = {"eval_set": eval_set, "scored_subset": scored_subset_of(sets),
                    "excluded_from_intervals": excluded_sources(sets, mix.manifest)}
    byte_lengths, decode = None, None
    try:
        tok = mix.tokenizer()
        byte_lengths, decode = tok.byte_lengths, tok.decode
    except (FileNotFoundError, ValueError, OSError) as exc:
        log.warning("%s: no tokenizer (%s); per-document bits per byte not computed", mix.root, exc)
        result["eval_docs"] = {"error": f"no tokenizer in {mix.root}: {exc}"}
        return result
    summary, per_doc = evaluate_documents(model, sets, seq_len=seq_len, batch_size=batch_size,
                                          byte_lengths=byte_lengths, decode=decode, device=device,
                                          autocast_dtype=autocast_dtype)
    if write:
        save_document_losses(out_dir / "eval_losses.npz", per_doc, {"eval_set": eval_set, "seq_len": seq_len,
                                                                    "scored_subset": result["scored_subset"]})
    result["eval_docs"] = summary
    return result
