"""Trainer throughput on this machine's CPU: tokens/s and model-FLOPs utilisation (MFU).

One command: ``.venv/bin/python benchmarks/bench_train.py`` (``--quick`` skips the 111m row).

1. Peak: the best fp32 GEMM rate torch reaches here (square matmuls, same thread count as training),
   measured in this run, so MFU is relative to what this machine can actually do, not a datasheet.
2. Trainer: ``slimpipe.train.loop.train`` on a mix packed from text every Python carries (pydoc topics +
   stdlib sources, GPT-2 tokenizer, 128-token sequences), the tiny preset and 111m at that short context.
   tokens/s = tokens of the timed steps / their wall time (the first two steps, warm-up, are excluded).
3. Model FLOPs per token = 6 N + 12 * n_layer * d_model * T (N all parameters, the tied embedding once;
   the second term is attention scores and values, PaLM's convention). MFU = tokens/s * that / peak.
4. Attention kernels: SDPA with the ALiBi float mask vs FlexAttention with the ALiBi score modifier at
   the tiny preset's shape (forward only: FlexAttention has no CPU backward); says which is faster.

Prints a table whose last line is the headline MFU, and appends a dated section to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "RESULTS.md"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from slimpipe.mix.packed import write_mix  # noqa: E402
from slimpipe.mix.tokenizer import load_tokenizer  # noqa: E402
from slimpipe.train.loop import TrainConfig, train, tune_cpu_malloc  # noqa: E402
from slimpipe.train.model import alibi_causal_bias, alibi_slopes  # noqa: E402


def peak_matmul_flops(seconds: float = 1.0) -> tuple[float, int]:
    """Best fp32 GEMM FLOP/s over a few square sizes (each timed for ~``seconds``)."""
    best, best_n = 0.0, 0
    for n in (512, 1024, 2048):
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            torch.mm(a, b)
            reps += 1
        rate = 2.0 * n**3 * reps / (time.perf_counter() - t0)
        if rate > best:
            best, best_n = rate, n
    return best, best_n


def build_mix(root: Path, seq_len: int) -> Path:
    from pydoc_data.topics import topics

    docs = [topics[k] for k in sorted(topics)]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    code = [p.read_text(encoding="utf-8", errors="replace") for p in sorted(stdlib.glob("*.py"))[:120]]
    tok = load_tokenizer("gpt2")
    short = sorted(docs, key=len)[:3]  # eval sets are a formality here: keep the final evaluation short
    write_mix(root / "mix", docs + code, {"wikipedia": short}, tok, seq_len)
    return root / "mix"


def bench_trainer(mix: Path, out: Path, model: str, steps: int, batch: int, micro: int) -> dict:
    cfg = TrainConfig(mix_dir=str(mix), out_dir=str(out), model=model, max_steps=steps, batch_size=batch,
                      micro_batch=micro, seq_len=128, eval_interval=0, checkpoint_interval=10**9, export=False,
                      eval_sequences=1)
    t0 = time.perf_counter()
    metrics = train(cfg)
    print(f"{model}: {time.perf_counter() - t0:.0f} s wall including setup and final evaluation", flush=True)
    log = [json.loads(ln) for ln in (out / "train_log.jsonl").read_text().splitlines()]
    timed = log[2:] if len(log) > 3 else log
    tokens = sum(r["tokens_per_s"] * r["step_s"] for r in timed)
    seconds = sum(r["step_s"] for r in timed)
    return {"model": model, "params": metrics["n_params"], "steps_timed": len(timed),
            "tokens_per_step": int(timed[0]["tokens_per_s"] * timed[0]["step_s"] + 0.5),
            "tokens_per_s": tokens / seconds, "flops_per_token": metrics["throughput"]["model_flops_per_token"],
            "median_step_s": statistics.median(r["step_s"] for r in timed), "loss": log[-1]["loss"]}


def bench_attention(device: torch.device, B: int = 16, H: int = 4, T: int = 128, D: int = 32,
                    reps: int = 10) -> dict[str, float]:
    """Seconds per attention call, SDPA+mask vs Flex+score_mod: forward+backward on CUDA, forward only
    on CPU (FlexAttention has no CPU backward, which is why the trainer refuses ``flex`` on CPU)."""
    import warnings

    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    slopes = alibi_slopes(H).to(device)
    mask = alibi_causal_bias(slopes, T, device=device)[None]
    block = create_block_mask(lambda b, h, q, k: q >= k, None, None, T, T, device=device)

    def score_mod(s, b, h, q, k):
        return s + slopes[h] * (k - q).to(s.dtype)

    flex = torch.compile(flex_attention) if device.type == "cuda" else flex_attention
    fns = {"sdpa": lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask),
           "flex": lambda q, k, v: flex(q, k, v, score_mod=score_mod, block_mask=block)}
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        grad = device.type == "cuda"
        for name, fn in fns.items():
            q, k, v = (torch.randn(B, H, T, D, device=device, requires_grad=grad) for _ in range(3))

            def call(fn=fn, q=q, k=k, v=v):
                y = fn(q, k, v)
                if grad:
                    y.sum().backward()

            for _ in range(2):
                call()
            t0 = time.perf_counter()
            for _ in range(reps):
                call()
            if device.type == "cuda":
                torch.cuda.synchronize()
            out[name] = (time.perf_counter() - t0) / reps
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny preset only")
    ap.add_argument("--tiny-steps", type=int, default=10)
    ap.add_argument("--big-steps", type=int, default=5)
    ap.add_argument("--threads", type=int, help="torch threads for GEMM and training (default: torch's)")
    ap.add_argument("--no-append", action="store_true", help="do not append to benchmarks/RESULTS.md")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    tune_cpu_malloc()  # as the trainer does on CPU, so the GEMM peak and the runs share one allocator setup
    threads = torch.get_num_threads()
    load_before = os.getloadavg()
    peak_before, peak_n = peak_matmul_flops()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        mix = build_mix(Path(tmp), 128)
        rows.append(bench_trainer(mix, Path(tmp) / "tiny", "tiny", args.tiny_steps, 16, 16))
        if not args.quick:
            rows.append(bench_trainer(mix, Path(tmp) / "111m", "111m", args.big_steps, 2, 2))
    attn = bench_attention(torch.device("cpu"))
    peak_after, _ = peak_matmul_flops()
    peak = max(peak_before, peak_after)  # the larger one: MFU errs low, never high
    load_after = os.getloadavg()

    machine = (f"{platform.platform()} | {platform.processor() or platform.machine()} | "
               f"os.cpu_count()={os.cpu_count()} | torch {torch.__version__} | {threads} threads")
    lines = [f"machine: {machine}",
             f"load average before/after: {load_before[0]:.1f} / {load_after[0]:.1f} (other jobs skew timings)",
             f"measured peak: fp32 GEMM {peak / 1e9:.1f} GFLOP/s (n={peak_n}; before {peak_before / 1e9:.1f}, "
             f"after {peak_after / 1e9:.1f}; MFU uses the larger)",
             "model FLOPs/token = 6*N + 12*n_layer*d_model*T (PaLM convention; N includes the tied embedding)",
             "",
             "| model | params | seq | tokens/step | steps timed | tokens/s | model GFLOP/s | MFU |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        achieved = r["tokens_per_s"] * r["flops_per_token"]
        r["mfu"] = achieved / peak
        lines.append(f"| {r['model']} | {r['params'] / 1e6:.1f}M | 128 | {r['tokens_per_step']} | {r['steps_timed']} | "
                     f"{r['tokens_per_s']:,.0f} | {achieved / 1e9:.1f} | {100 * r['mfu']:.1f}% |")
    faster = min(attn, key=attn.get)
    lines += ["",
              f"attention forward (16x4x128x32, cpu; Flex has no CPU backward): sdpa+ALiBi mask "
              f"{attn['sdpa'] * 1e3:.2f} ms, flex+score_mod (eager) {attn['flex'] * 1e3:.2f} ms -> faster here: {faster}",
              "",
              f"headline: tiny preset trains at {rows[0]['tokens_per_s']:,.0f} tokens/s = "
              f"MFU {100 * rows[0]['mfu']:.1f}% of this CPU's measured fp32 matmul peak"]
    print("\n".join(lines))
    if not args.no_append:
        header = "" if RESULTS.exists() else "# Benchmark results\n\nEach benchmark appends a dated section.\n"
        stamp = dt.datetime.now().isoformat(timespec="seconds")
        with RESULTS.open("a", encoding="utf-8") as fh:
            fh.write("\n".join([header, f"\n## bench_train (trainer tokens/s and MFU, CPU) — {stamp}\n",
                                *lines, ""]))


if __name__ == "__main__":
    main()
