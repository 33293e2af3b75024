"""ALiBi position interpolation: bits per byte at evaluation context lengths other than the training one.

ALiBi adds ``-m_h * distance`` to attention scores, so a model runs at any length; beyond the training
length ``L_train`` it meets distances it never saw. Linear interpolation (as in "ALiBi position
interpolation" for BTLM's 8k extension) divides every slope by ``L_eval / L_train`` when
``L_eval > L_train``, so the largest distance costs what the largest trained one did.

:func:`context_length_eval` scores every held-out document on its own (the per-document definition of
:mod:`slimpipe.train.evaluate`: windows of ``L`` tokens with full context, no cross-document windows) at
each length, plain and interpolated, and returns what ``metrics.json["context_length"]`` holds; it
also draws ``context_length.png`` (bits per byte against context length) in the run folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path

import torch

from slimpipe.mix.packed import PackedDataset
from slimpipe.train.data import Mix

log = logging.getLogger(__name__)


def interpolation_scale(eval_len: int, train_len: int) -> float:
    """The factor the slopes are divided by: ``L_eval / L_train`` beyond the training length, else 1."""
    return eval_len / train_len if eval_len > train_len else 1.0


@contextlib.contextmanager
def alibi_context(model: torch.nn.Module, seq_len: int, slope_scale: float = 1.0) -> Iterator[torch.nn.Module]:
    """Let ``model`` (a :class:`~slimpipe.train.model.GPT`) run ``seq_len`` tokens with its ALiBi slopes
    divided by ``slope_scale``; everything is restored on exit. Only the public ``slopes`` and
    ``max_seq_len`` change: the model rebuilds its mask when they do, and passes it to the blocks."""
    alibi = model.alibi
    saved = (model.cfg, alibi.slopes, alibi.max_seq_len)
    try:
        model.cfg = dataclasses.replace(model.cfg, max_seq_len=max(seq_len, model.cfg.max_seq_len))
        alibi.max_seq_len = max(seq_len, alibi.max_seq_len)
        alibi.slopes = saved[1] / slope_scale
        yield model
    finally:
        model.cfg, alibi.slopes, alibi.max_seq_len = saved


def pad_lengths(lengths: list[int]) -> list[int]:
    """One padding grid for a whole context-length run: the union of each length's evaluation buckets
    (:func:`slimpipe.train.evaluate.length_buckets`), so a compiled model meets each shape once over all
    lengths and both slope variants (#20.1)."""
    from slimpipe.train.evaluate import length_buckets

    return sorted({b for n in lengths for b in length_buckets(int(n))})


def context_length_eval(model: torch.nn.Module, sets: dict[str, PackedDataset], lengths: list[int], *,
                        train_seq_len: int, mix: Mix | str | Path, batch_size: int,
                        device: torch.device | str = "cpu", autocast_dtype: torch.dtype | None = None,
                        plot_dir: str | Path | None = None) -> dict:
    """Per-source and total bits per byte at each length, with plain and interpolated slopes.

    Returns ``{"train_seq_len", "lengths", "slope_scale": [..], "bpb": {"plain"|"interpolated":
    {source|"total": [bpb per length]}}, "definition"}``; for lengths up to the training one the two
    variants are the same model, so the plain numbers are reused."""
    from slimpipe.train.evaluate import evaluate_documents

    tok = Mix.open(mix).tokenizer()
    lengths = sorted({int(n) for n in lengths})
    grid = pad_lengths(lengths)  # used when the model is compiled (evaluate_documents pads only then)
    scales = [interpolation_scale(n, train_seq_len) for n in lengths]
    names = list(sets) + ["total"]
    bpb: dict[str, dict[str, list[float]]] = {v: {n: [] for n in names} for v in ("plain", "interpolated")}
    definition = None
    for n, scale in zip(lengths, scales, strict=True):
        for variant, s in (("plain", 1.0), ("interpolated", scale)):
            if variant == "interpolated" and scale == 1.0:
                for k in names:
                    bpb[variant][k].append(bpb["plain"][k][-1])
                continue
            with alibi_context(model, n, s):
                summary, _ = evaluate_documents(model, sets, seq_len=n, batch_size=batch_size,
                                                byte_lengths=tok.byte_lengths, decode=tok.decode, device=device,
                                                autocast_dtype=autocast_dtype, pad_lengths=grid)
            definition = summary.get("definition")
            for k in sets:
                bpb[variant][k].append(summary["sources"][k]["bpb"])
            bpb[variant]["total"].append(summary["total"]["bpb"])
        log.info("context %d: total bpb %.4f plain, %.4f interpolated (slopes / %.3g)", n,
                 bpb["plain"]["total"][-1], bpb["interpolated"]["total"][-1], scale)
    result = {"train_seq_len": int(train_seq_len), "lengths": lengths, "slope_scale": scales, "bpb": bpb,
              "definition": definition}
    if plot_dir is not None:
        result["plot"] = plot_context_length(result, Path(plot_dir) / "context_length.png")
    return result


def plot_context_length(result: dict, path: Path) -> str:
    """Bits per byte against evaluation context length (log2 axis): total and per source, solid without
    interpolation, dashed with it, the training length marked."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from slimpipe import storage

    lengths = result["lengths"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, name in enumerate(result["bpb"]["plain"]):
        color = "black" if name == "total" else f"C{i}"
        lw = 2.0 if name == "total" else 1.0
        ax.plot(lengths, result["bpb"]["plain"][name], color=color, lw=lw, marker="o", ms=3, label=name)
        ax.plot(lengths, result["bpb"]["interpolated"][name], color=color, lw=lw, ls="--", marker="x", ms=4)
    ax.axvline(result["train_seq_len"], color="0.5", ls=":", lw=1)
    ax.annotate("training length", (result["train_seq_len"], 1.0), xycoords=("data", "axes fraction"),
                rotation=90, va="top", ha="right", fontsize=7, color="0.4")
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [str(n) for n in lengths])
    ax.set_xlabel("evaluation context length (tokens)")
    ax.set_ylabel("held-out bits per byte")
    ax.set_title("Bits per byte vs context (solid: ALiBi as trained, dashed: slopes interpolated)", fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    storage.write_bytes_atomic(path, buf.getvalue())
    return path.name


def plot_context_length_runs(entries: list[tuple[str, object, dict]], path: Path) -> None:
    """Compare's version: total bits per byte against context length for several runs ``(label, color,
    metrics["context_length"])``; solid as trained, dashed interpolated, each run's training length dotted."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from slimpipe import storage

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    ticks: set[int] = set()
    for label, color, cl in entries:
        (line,) = ax.plot(cl["lengths"], cl["bpb"]["plain"]["total"], color=color, marker="o", ms=3, lw=1.2,
                          label=label)
        ax.plot(cl["lengths"], cl["bpb"]["interpolated"]["total"], color=line.get_color(), ls="--", marker="x",
                ms=4, lw=1.2)
        ax.axvline(cl["train_seq_len"], color=line.get_color(), ls=":", lw=0.8)
        ticks.update(cl["lengths"])
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(ticks), [str(n) for n in sorted(ticks)])
    ax.set_xlabel("evaluation context length (tokens); dotted: each run's training length")
    ax.set_ylabel("total held-out bits per byte")
    ax.set_title("Bits per byte vs context (solid: ALiBi as trained, dashed: slopes interpolated)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    storage.write_bytes_atomic(path, buf.getvalue())
