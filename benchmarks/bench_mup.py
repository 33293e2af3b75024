"""muP transfer: does the best learning rate stay put as the model gets wider?

One command: ``.venv/bin/python benchmarks/bench_mup.py`` (36 proxy runs: 836 s on two shared, busy cores; ``--steps``,
``--widths`` and ``--lrs`` resize it).

1. Data: the embedded sample (``slimpipe sample``), a byte-level BPE of 512 ids trained on it, packed into
   64-token sequences (train) plus a held-out set per source (the mix format ``slimpipe mix`` writes).
2. Proxies: 2 layers, head size 16, widths 64/128/256 (heads grow with width), 8 x 64-token batches,
   linear warmup (10%) and decay to zero; held-out bits per byte after ``--steps`` steps.
3. The same learning-rate grid (factors of 2) twice, through ``slimpipe.train.tune.sweep`` (what
   ``slimpipe tune`` runs): muP (base width 64, so the base LR is the LR of the narrowest proxy) and the
   standard parametrisation (init std 0.02, every tensor at the same LR).
4. The claim: under muP the best LR moves at most one grid step across the 3 widths; under SP it moves
   more (the optimum shrinks with width). The table prints held-out bits per byte per width and LR for
   both, best per width starred; the last line is the headline: the best-LR spread of each.

Appends the tables to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks._common import machine_line, publish, table  # noqa: E402
from slimpipe.io.readers import read_all  # noqa: E402
from slimpipe.mix.packed import write_mix  # noqa: E402
from slimpipe.mix.tokenizer import train_bpe  # noqa: E402
from slimpipe.sample import FILES, write_sample  # noqa: E402
from slimpipe.train.tune import summarise, sweep  # noqa: E402

PRESET = """\
name: mup-bench
model: {n_layer: 2, d_model: 64, n_head: 4, d_ff: 192, max_seq_len: 64, mup_base_width: 64, vocab_multiple: 64}
train: {seq_len: 64, batch_size: 8, micro_batch: 8, warmup_fraction: 0.1, schedule: linear}
"""


def build_mix(work: Path) -> Path:
    write_sample(work / "sample", seed=0, size=0.5)
    docs, _rejects, _stats = read_all([work / "sample" / f for f in FILES])
    by: dict[str, list[str]] = {}
    for src, text in zip(docs.column("source").to_pylist(), docs.column("text").to_pylist(), strict=True):
        by.setdefault(src, []).append(text)
    held = {s: t[:3] for s, t in by.items() if len(t) > 6}
    train_texts = [x for s, t in by.items() for x in (t[3:] if s in held else t)]
    tok = train_bpe(train_texts, vocab_size=512, out=work / "bpe")
    write_mix(work / "mix", train_texts, held, tok, 64)
    return work / "mix"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", default="64,128,256")
    ap.add_argument("--lrs", default="0.001,0.002,0.004,0.008,0.016,0.032")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--keep", action="store_true", help="keep the work folder (runs, tune.json)")
    ap.add_argument("--no-append", action="store_true", help="print only; do not append to RESULTS.md")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    widths = [int(x) for x in args.widths.split(",")]
    lrs = sorted(float(x) for x in args.lrs.split(","))
    work = Path(tempfile.mkdtemp(prefix="bench-mup-"))
    t0 = time.perf_counter()
    try:
        mix = build_mix(work)
        (work / "preset.yaml").write_text(PRESET)
        results = {}
        for name, mup, std in (("muP", True, 0.08), ("SP", False, 0.02)):
            trials = sweep(mix, work / name, widths=widths, lrs=lrs, init_stds=[std], model=str(work / "preset.yaml"),
                           steps=args.steps, mup=mup, threads=1, device="cpu")["trials"]
            results[name] = summarise(trials, widths=widths, lrs=lrs, init_stds=[std], mup=mup)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    wall = time.perf_counter() - t0

    sections = []
    for name, r in results.items():
        rows = []
        for lr in lrs:
            cells = []
            for w in widths:
                t = next(t for t in r["trials"] if (t["width"], t["lr"]) == (w, lr))
                cell = "diverged" if t.get("diverged") else f"{t['bpb']:.4f}"
                cells.append(cell + (" *" if r["best_per_width"][str(w)]["lr"] == lr else ""))
            rows.append([f"{lr:g}"] + cells)
        best = ", ".join(f"w{w}: {r['best_per_width'][str(w)]['lr']:g}" for w in widths)
        sections.append([f"**{name}** — held-out bits per byte after {args.steps} steps (* best per width; "
                         f"best LR {best}; spread {r['best_lr_spread_steps']} grid step(s))", "",
                         *table(["LR"] + [f"width {w}" for w in widths], rows)])
    mu, sp = results["muP"]["best_lr_spread_steps"], results["SP"]["best_lr_spread_steps"]
    verdict = "transfers" if mu <= 1 < sp else ("inconclusive" if mu <= 1 else "does not transfer here")
    notes = [f"grid: {', '.join(f'{x:g}' for x in lrs)} (factor 2 steps); widths {widths}; 2 layers, head size 16, "
             f"8 x 64 tokens per step, embedded sample, BPE 512; muP base width 64, base init std 0.08; SP init std 0.02",
             f"wall time {wall:.0f} s, one thread per run"]
    head = [f"Machine: {machine_line()}", ""]
    headline = (f"muP best-LR spread across widths {'/'.join(map(str, widths))}: {mu} grid step(s); "
                f"SP: {sp} grid step(s) -> muP {verdict}")
    publish("muP transfer (bench_mup.py)", head, sections, notes, headline, append=not args.no_append)


if __name__ == "__main__":
    main()
