"""Per-source held-out loss and bits per byte.

Loss per token depends on the tokenizer; bits per byte does not, which is what makes runs on different
mixes or vocabularies comparable: ``bpb = sum(NLL in nats) / (ln 2 * UTF-8 bytes those targets cover)``.
The byte counts come from the packed sets (exact per sequence, see :mod:`slimpipe.mix.packed`).
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
import torch.distributed as dist

from slimpipe.mix.packed import PackedDataset


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
