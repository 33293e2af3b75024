"""GPU training benchmark: 111m and 1.3b at sequence length 2048 in bf16, with each attention backend.

One command, about 8 minutes on one GPU, from a plain checkout on a machine with only torch (>= 2.11),
numpy and safetensors (no ray, no PyYAML, no install step)::

    PYTHONPATH=. python benchmarks/bench_gpu.py              # on a GPU machine
    PYTHONPATH=. python benchmarks/bench_gpu.py --cpu-smoke  # tiny end-to-end run on CPU (a check, not a figure)

It builds a synthetic packed mix (random token ids, GPT-2 vocabulary), then runs the real trainer
(:func:`slimpipe.train.loop.train`: bf16 autocast, ``torch.compile``, fused AdamW, gradient accumulation)
for a few steps per (model, backend) and prints tokens/s (first, compiling step excluded), MFU against the
GPU's dense bf16 peak (a table of known GPUs, else a measured large matmul), and peak memory. It ends with
a 3-step train -> checkpoint -> resume equality check and appends everything to benchmarks/RESULTS.md
(and the rows to benchmarks/bench_gpu.json, which pipelines/slimpajama-dc.sh reads for its cost estimate).
Without a GPU (and without ``--cpu-smoke``) it says so and exits 0.

MFU counts ``6 N + 12 L d T`` FLOPs per token (:func:`slimpipe.train.model.training_flops_per_token`; N
includes the tied, padded embedding, which is also the output projection).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (str(ROOT), str(ROOT / "benchmarks")):
    if p not in sys.path:
        sys.path.insert(0, p)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import machine_line, publish  # noqa: E402

from slimpipe.mix.packed import PackedWriter, train_path  # noqa: E402
from slimpipe.train.checkpoint import checkpoints, read_checkpoint  # noqa: E402
from slimpipe.train.loop import train  # noqa: E402
from slimpipe.train.model import flash_attn_available  # noqa: E402
from slimpipe.train.plan import TrainConfig  # noqa: E402

VOCAB = 50257  # GPT-2's

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' data sheets, FLOP/s. First match wins.
PEAK_BF16 = [
    ("GH200", 989e12), ("H200 NVL", 835e12), ("H200", 989e12), ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12),
    ("H800", 989e12), ("H20", 148e12), ("B200", 2250e12), ("B100", 1750e12), ("A100", 312e12), ("A800", 312e12),
    ("L40S", 362e12), ("L40", 181e12), ("L4", 121e12), ("A10G", 70e12), ("A10", 125e12), ("A6000", 155e12),
    ("RTX 4090", 82.6e12),  # bf16 with fp32 accumulate (what training uses); 165 is with fp16 accumulate ("MI300X", 1307e12), ("MI250X", 383e12),
]


def known_peak(name: str) -> float | None:
    """The data-sheet peak of a whole GPU named ``name``; None for a MIG slice (a fraction of the GPU:
    measured instead) or an unknown GPU."""
    low = name.lower()
    if "mig" in low:
        return None
    for key, peak in PEAK_BF16:
        if key.lower() in low:
            return peak
    return None


def measured_matmul_flops(device: torch.device, n: int = 8192, reps: int = 20) -> float:
    """Achieved bf16 (CUDA) or fp32 (CPU) FLOP/s of a large square matmul."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type != "cuda":
        n, reps = 1024, 5
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t)


def tflops(x: float) -> str:
    return f"{x / 1e12:.0f} TFLOP/s" if x >= 1e13 else f"{x / 1e9:.1f} GFLOP/s"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_mix(root: Path, seq_len: int, n_sequences: int, vocab: int = VOCAB, seed: int = 0) -> Path:
    """A packed mix of random documents over a ``vocab``-id vocabulary (GPT-2's by default; throughput
    does not depend on the text)."""
    rng = np.random.default_rng(seed)
    mix = root / "mix"
    with PackedWriter(train_path(mix), seq_len, vocab_size=vocab, eos_id=vocab - 1,
                      tokenizer={"name": "synthetic", "identity": f"synthetic-{vocab}"}) as w:
        total = 0
        while total < n_sequences * seq_len + 1:
            n = int(rng.integers(200, 4000))
            w.add(rng.integers(0, vocab - 1, n), n_bytes=4 * n)
            total += n + 1
    return mix


@dataclasses.dataclass
class Row:
    model: str
    backend: str
    micro: int
    accum: int
    tokens_per_s: float | None = None  # per GPU (the trainer's figure is global: divided by its world size)
    mfu: float | None = None  # from the per-GPU tokens/s and one GPU's peak
    peak_gb: float | None = None
    seconds: float = 0.0
    note: str = ""
    compiles: int | None = None  # graphs torch.compile built during the run (dynamo's unique_graphs)


def run_one(mix: Path, work: Path, model: str, backend: str, micro: int, accum: int, steps: int,
            device: torch.device, peak: float, compile_: bool) -> Row:
    row = Row(model, backend, micro, accum)
    out = work / f"{model}-{backend}-{micro}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = TrainConfig(mix_dir=str(mix), out_dir=str(out), model=model, max_steps=steps, eval_interval=0,
                      batch_size=micro * accum, micro_batch=micro, attention=backend, device=str(device),
                      export=False, keep_checkpoints=0, compile=compile_, seed=1)  # no 15 GB checkpoint writes
    gc.collect()  # every GPT sits in a reference cycle: free the previous configuration before measuring
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    t = time.perf_counter()
    try:
        m = train(cfg)
    except torch.OutOfMemoryError:
        row.note = "out of memory"
        gc.collect()  # drop the failed run's model and optimizer before the retry
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return row
    finally:
        row.seconds = time.perf_counter() - t
        row.compiles = int(torch._dynamo.utils.counters["stats"]["unique_graphs"])
        shutil.rmtree(out, ignore_errors=True)
    tp = m["throughput"]
    row.tokens_per_s = tp.get("tokens_per_s_per_device")
    row.peak_gb = tp.get("peak_memory_gb")
    if row.tokens_per_s:
        row.mfu = row.tokens_per_s * tp["model_flops_per_token"] / peak
    row.backend = m["attention"]
    return row


def resume_check(mix: Path, work: Path, model: str, micro: int, device: torch.device, backend: str) -> dict:
    """Train 3 steps (checkpoints after 2 and 3); resume a copy from step 2; compare step 3."""
    kw = dict(mix_dir=str(mix), model=model, max_steps=3, eval_interval=0, batch_size=2 * micro, micro_batch=micro,
              attention=backend, device=str(device), export=False, checkpoint_interval=2, checkpoint_minutes=0,
              keep_checkpoints=5, compile=False, seed=7)
    full, cut = work / "resume-full", work / "resume-cut"
    for d in (full, cut):
        shutil.rmtree(d, ignore_errors=True)
    train(TrainConfig(out_dir=str(full), **kw))
    assert [p.name for p in checkpoints(full)] == ["step_0000002", "step_0000003"], checkpoints(full)
    shutil.copytree(full, cut)
    shutil.rmtree(cut / "checkpoints" / "step_0000003")
    (cut / "metrics.json").unlink()
    train(TrainConfig(out_dir=str(cut), resume=True, **kw))
    a = read_checkpoint(full / "checkpoints" / "step_0000003")
    b = read_checkpoint(cut / "checkpoints" / "step_0000003")
    diff = max(float((a["model"][k].float() - b["model"][k].float()).abs().max()) for k in a["model"])
    bitwise = all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    la = (full / "train_log.jsonl").read_text().splitlines()
    lb = (cut / "train_log.jsonl").read_text().splitlines()
    loss_a = [json.loads(x)["loss"] for x in la]
    loss_b = [json.loads(x)["loss"] for x in lb]
    for d in (full, cut):
        shutil.rmtree(d, ignore_errors=True)
    # GPU kernels with atomics (attention backward) may differ in the last bits between two runs
    ok = bitwise or (diff < 1e-4 and np.allclose(loss_a, loss_b, rtol=1e-4))
    return {"bitwise": bitwise, "max_abs_diff": diff, "losses": loss_a, "resumed_losses": loss_b, "ok": ok}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny models on CPU: checks the path, not a figure")
    ap.add_argument("--budget-s", type=float, default=420.0, help="skip configurations once this is spent")
    ap.add_argument("--models", default="1.3b,111m")
    ap.add_argument("--no-append", action="store_true", help="print only; do not append to RESULTS.md")
    args = ap.parse_args(argv)
    start = time.perf_counter()

    cuda = torch.cuda.is_available()
    if not cuda and not args.cpu_smoke:
        print("bench_gpu: no GPU (torch.cuda.is_available() is False): nothing to measure. "
              "`--cpu-smoke` runs the same path at tiny size on CPU.")
        return 0
    device = torch.device("cuda", 0) if cuda and not args.cpu_smoke else torch.device("cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    measured = measured_matmul_flops(device)
    table_peak = known_peak(name) if device.type == "cuda" else None
    peak = table_peak or measured
    peak_src = f"data-sheet dense bf16 peak of {name}" if table_peak else "measured large matmul (unknown GPU)"
    backends = ["sdpa", "flex"] + (["flash"] if flash_attn_available() else [])
    if device.type == "cpu":
        backends = ["sdpa"]  # FlexAttention has no CPU backward
    print(f"bench_gpu: {name}, torch {torch.__version__}, peak {tflops(peak)} ({peak_src}), "
          f"matmul measured {tflops(measured)}, backends {backends}", flush=True)

    work = Path(tempfile.mkdtemp(prefix="bench_gpu-"))
    rows: list[Row] = []
    try:
        if args.cpu_smoke:
            seq_len = 128
            mix = synthetic_mix(work, seq_len, 64, vocab=1024)  # a small vocabulary keeps CPU steps short
            plans = [("tiny", 2, 2, 4)]
        else:
            seq_len = 2048
            mix = synthetic_mix(work, seq_len, 512)
            sizes = {"1.3b": (8, 2, 8), "111m": (16, 2, 12)}  # micro, accum, steps
            plans = [(m, *sizes[m]) for m in args.models.split(",") if m in sizes]
        reserve = 20.0 if args.cpu_smoke else 75.0  # for the resume check
        for model, micro, accum, steps in plans:
            for backend in backends:
                if time.perf_counter() - start > args.budget_s - reserve:
                    rows.append(Row(model, backend, micro, accum, note="skipped: time budget spent"))
                    continue
                print(f"  {model} {backend} micro {micro} x accum {accum}, {steps} steps ...", flush=True)
                row = run_one(mix, work, model, backend, micro, accum, steps, device, peak,
                              compile_=device.type == "cuda")
                if row.note == "out of memory" and micro > 1:
                    gc.collect()
                    row = run_one(mix, work, model, backend, micro // 2, accum * 2, steps, device, peak,
                                  compile_=device.type == "cuda")
                    row.note = (row.note + "; " if row.note else "") + f"micro {micro} ran out of memory"
                rows.append(row)
                print(f"  {model} x {row.backend}: {row.tokens_per_s or 0:,.0f} tokens/s per GPU, MFU "
                      f"{100 * (row.mfu or 0):.1f}%, peak {row.peak_gb or 0:.1f} GB, {row.compiles} compiles, "
                      f"{row.seconds:.0f} s {row.note}", flush=True)
        res_model, res_micro = ("tiny", 2) if args.cpu_smoke else ("111m", 4)
        res_backend = "sdpa" if device.type == "cpu" else "auto"
        print(f"  resume check: {res_model}, 3 steps, checkpoint after 2, resume ...", flush=True)
        res = resume_check(mix, work, res_model, res_micro, device, res_backend)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    header = ["model", "attention", "micro x accum", "tokens/s per GPU", "MFU", "peak GB", "compiles", "wall s", "note"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lines.append(f"| {r.model} | {r.backend} | {r.micro} x {r.accum} | "
                     f"{f'{r.tokens_per_s:,.0f}' if r.tokens_per_s else '-'} | "
                     f"{f'{100 * r.mfu:.1f}%' if r.mfu else '-'} | {f'{r.peak_gb:.1f}' if r.peak_gb else '-'} | "
                     f"{r.compiles if r.compiles is not None else '-'} | {r.seconds:.0f} | {r.note} |")
    resume_line = (f"resume after a checkpoint: {'bitwise equal' if res['bitwise'] else 'not bitwise'}, max |dw| "
                   f"{res['max_abs_diff']:.2e}, losses {[round(x, 5) for x in res['losses']]} vs resumed "
                   f"{[round(x, 5) for x in res['resumed_losses']]}: {'PASS' if res['ok'] else 'FAIL'}")
    best = {}
    for r in rows:
        if r.mfu and (r.model not in best or r.mfu > best[r.model].mfu):
            best[r.model] = r
    if args.cpu_smoke:
        headline = (f"CPU smoke run (not a GPU figure): {rows[0].tokens_per_s or 0:,.0f} tokens/s tiny, "
                    f"resume {'PASS' if res['ok'] else 'FAIL'}")
    else:
        top = best.get("1.3b") or next(iter(best.values()), None)
        headline = (f"{top.model} on one {name}: MFU {100 * top.mfu:.1f}% ({top.backend}, "
                    f"{top.tokens_per_s:,.0f} tokens/s); resume {'PASS' if res['ok'] else 'FAIL'}"
                    if top else f"no configuration completed on {name}")
    notes = ["seq 2048, bf16 autocast, torch.compile, fused AdamW; synthetic tokens; first step excluded"
             if not args.cpu_smoke else "tiny preset at seq 128, fp32 on CPU, no compile",
             f"MFU = tokens/s x (6N + 12 L d T) / {tflops(peak)} ({peak_src}); "
             f"large-matmul measured {tflops(measured)}",
             resume_line, f"torch {torch.__version__}; flash-attn {'installed' if flash_attn_available() else 'absent'}"]
    if not args.cpu_smoke and not args.no_append:  # read by pipelines/slimpajama-dc.sh's cost estimate
        (ROOT / "benchmarks" / "bench_gpu.json").write_text(json.dumps({
            "gpu": name, "peak_flops": peak, "peak_source": peak_src, "torch": torch.__version__,
            "rows": [dataclasses.asdict(r) for r in rows], "resume_ok": res["ok"]}, indent=2) + "\n")
    publish("GPU trainer (bench_gpu.py)" + (" — CPU smoke" if args.cpu_smoke else ""),
            [machine_line(), f"device: {name}", ""], [lines], notes, headline, append=not args.no_append)
    print(f"total {time.perf_counter() - start:.0f} s")
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
