"""Trainer throughput on this machine's CPU: tokens/s and model-FLOPs utilisation (MFU).

One command: ``.venv/bin/python benchmarks/bench_train.py`` (``--big`` adds a 111m row).

Before / after (#20.9), in one run: each configuration is trained twice, each time in a fresh child process
(so peak RSS is that run's own): ``previous`` = the code path before #20.3/#20.9 (full logits then
cross-entropy, evaluation batch = the micro-batch), ``current`` = the chunked linear + cross-entropy head and
the CPU evaluation batch of ~16k tokens. Two configurations: ``demo`` = the tiny preset as ``make demo``
trains it (a 4096-token BPE trained on the embedded sample, 128-token sequences, evaluations on every
source's whole held-out set every 16 steps and at the end, then the per-document final evaluation), and
``gpt2`` = the tiny preset with the GPT-2 vocabulary (whose 50k-wide head is most of the compute and, before,
of the memory). Reported: wall seconds of the whole run, training tokens/s, evaluation seconds, peak RSS.

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
from slimpipe.train.loop import train, tune_cpu_malloc  # noqa: E402
from slimpipe.train.model import GPT, alibi_causal_bias, alibi_slopes  # noqa: E402
from slimpipe.train.plan import TrainConfig  # noqa: E402


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


def build_demo_mix(root: Path, seq_len: int = 128, heldout: int = 8) -> Path:
    """What ``make demo`` trains on, in small: the embedded sample split per source into train and held-out
    documents, a 4096-token byte-level BPE trained on the train part, 128-token sequences."""
    from collections import defaultdict

    from slimpipe.mix.tokenizer import train_bpe
    from tests.mix_fixtures import sample_documents

    by: dict[str, list[str]] = defaultdict(list)
    for _id, source, text in sorted(sample_documents(root / "sample", size=1.0)):
        by[source].append(text)
    train_texts = [t for texts in by.values() for t in texts[len(texts) // heldout:]]
    held = {s: texts[: len(texts) // heldout] for s, texts in by.items() if len(texts) >= 2 * heldout}
    tok = train_bpe(train_texts[:2000], vocab_size=4096, out=root / "bpe")
    write_mix(root / "demo-mix", train_texts, held, tok, seq_len)
    return root / "demo-mix"


def run_child(mode: str, spec: dict) -> dict:
    """One training run in this process (``mode``: previous | current); returns its figures."""
    import resource

    from slimpipe.train import loop

    if mode == "previous":  # the code path before #20.3/#20.9: full logits, evaluation batch = micro-batch
        forward = GPT.forward
        GPT.forward = lambda self, idx, targets=None, reduction="mean", return_logits=False: forward(
            self, idx, targets, reduction, return_logits=True)
        loop.eval_batch_size = lambda cfg, plan, dev: cfg.eval_batch or plan.micro_batch
    seconds = {"eval": 0.0}

    def timed(mod, name):
        fn = getattr(mod, name)

        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                seconds["eval"] += time.perf_counter() - t0
        setattr(mod, name, wrapper)

    timed(loop, "evaluate_sets")
    timed(loop, "final_document_eval")
    out = Path(spec["out"])
    cfg = TrainConfig(mix_dir=spec["mix"], out_dir=str(out), model="tiny", max_steps=spec["steps"], seq_len=128,
                      eval_interval=spec["eval_interval"], eval_sequences=spec["eval_sequences"], keep_checkpoints=0,
                      export=False, seed=1, device="cpu")
    t0 = time.perf_counter()
    metrics = train(cfg)
    wall = time.perf_counter() - t0
    log = [json.loads(ln) for ln in (out / "train_log.jsonl").read_text().splitlines()]
    timed_steps = log[2:] if len(log) > 3 else log
    return {"wall_s": wall, "eval_s": seconds["eval"], "params": metrics["n_params"],
            "tokens_per_s": sum(r["tokens_per_s"] * r["step_s"] for r in timed_steps) / sum(r["step_s"] for r in timed_steps),
            "median_step_s": statistics.median(r["step_s"] for r in timed_steps),
            "flops_per_token": metrics["throughput"]["model_flops_per_token"], "loss": log[-1]["loss"],
            "bpb": metrics["eval"]["total"].get("bpb"), "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def bench_pair(name: str, spec: dict, tmp: Path, rounds: int) -> dict:
    """``previous`` and ``current`` alternately, each in a fresh process; the best wall of each."""
    import subprocess

    best: dict[str, dict] = {}
    for r in range(rounds):
        for mode in ("previous", "current"):
            child = {**spec, "out": str(tmp / f"{name}-{mode}-{r}")}
            res = subprocess.run([sys.executable, __file__, "--child", mode, json.dumps(child)], capture_output=True,
                                 text=True, check=True, cwd=ROOT)
            got = json.loads(res.stdout.strip().splitlines()[-1])
            print(f"{name} {mode} round {r}: {got['wall_s']:.1f} s wall, {got['tokens_per_s']:,.0f} train tokens/s, "
                  f"eval {got['eval_s']:.1f} s, peak RSS {got['rss_mb']:.0f} MB (load {os.getloadavg()[0]:.1f})",
                  flush=True)
            if mode not in best or got["wall_s"] < best[mode]["wall_s"]:
                best[mode] = got
            best[mode]["rss_mb"] = max(best[mode]["rss_mb"], got["rss_mb"])
    return best


def bench_trainer(mix: Path, out: Path, model: str, steps: int, batch: int, micro: int) -> dict:
    cfg = TrainConfig(mix_dir=str(mix), out_dir=str(out), model=model, max_steps=steps, batch_size=batch,
                      micro_batch=micro, seq_len=128, eval_interval=0, checkpoint_interval=10**9, export=False,
                      eval_sequences=1, device="cpu")
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
    if len(sys.argv) == 4 and sys.argv[1] == "--child":  # one run, in a fresh process (see bench_pair)
        tune_cpu_malloc()
        print(json.dumps(run_child(sys.argv[2], json.loads(sys.argv[3]))))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--big", action="store_true", help="also time the 111m preset (current code only)")
    ap.add_argument("--demo-steps", type=int, default=32, help="steps of the demo-like run (make demo: 64)")
    ap.add_argument("--gpt2-steps", type=int, default=6)
    ap.add_argument("--heldout", type=int, default=8, help="1/N of each source's documents held out (8: ~136k "
                                                             "evaluation tokens, like the demo's 7 x 32k)")
    ap.add_argument("--rounds", type=int, default=1, help="previous/current pairs per configuration (best wall)")
    ap.add_argument("--big-steps", type=int, default=5)
    ap.add_argument("--threads", type=int, help="torch threads for GEMM and training (default: torch's)")
    ap.add_argument("--no-append", action="store_true", help="do not append to benchmarks/RESULTS.md")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)

    tune_cpu_malloc()  # as the trainer does on CPU, so the GEMM peak and the runs share one allocator setup
    threads = torch.get_num_threads()
    load_before = os.getloadavg()
    peak_before, peak_n = peak_matmul_flops()
    rows, big = {}, None
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        demo_mix = build_demo_mix(t, heldout=args.heldout)
        gpt2_mix = build_mix(t, 128)
        rows["demo"] = bench_pair("demo", {"mix": str(demo_mix), "steps": args.demo_steps, "eval_interval": 16,
                                           "eval_sequences": 1_000_000}, t, args.rounds)
        rows["gpt2"] = bench_pair("gpt2", {"mix": str(gpt2_mix), "steps": args.gpt2_steps, "eval_interval": 0,
                                           "eval_sequences": 1}, t, args.rounds)
        if args.big:
            big = bench_trainer(gpt2_mix, t / "111m", "111m", args.big_steps, 2, 2)
    attn = bench_attention(torch.device("cpu"))
    peak_after, _ = peak_matmul_flops()
    peak = max(peak_before, peak_after)  # the larger one: MFU errs low, never high
    load_after = os.getloadavg()

    machine = (f"{platform.platform()} | {platform.processor() or platform.machine()} | "
               f"os.cpu_count()={os.cpu_count()} | torch {torch.__version__} | {threads} threads")
    lines = [f"machine: {machine}",
             f"load average before/after: {load_before[0]:.1f} / {load_after[0]:.1f} (other jobs skew timings; "
             "ratios are of runs interleaved in this one command)",
             f"measured peak: fp32 GEMM {peak / 1e9:.1f} GFLOP/s (n={peak_n}; before {peak_before / 1e9:.1f}, "
             f"after {peak_after / 1e9:.1f}; MFU uses the larger)",
             "model FLOPs/token = 6*N + 12*n_layer*d_model*T (PaLM convention; N includes the tied embedding)",
             f"demo = tiny, 4096-token BPE, 1/{args.heldout} of the documents held out, {args.demo_steps} steps of 16x128 tokens, whole held-out sets every 16 "
             f"steps + final + per-document eval; gpt2 = tiny with the GPT-2 vocabulary, {args.gpt2_steps} steps",
             "",
             "| config | code | params | wall s (whole run) | train tokens/s | MFU | eval s | peak RSS MB | final loss |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, pair in rows.items():
        for mode in ("previous", "current"):
            r = pair[mode]
            mfu = r["tokens_per_s"] * r["flops_per_token"] / peak
            lines.append(f"| {name} | {mode} | {r['params'] / 1e6:.1f}M | {r['wall_s']:.1f} | {r['tokens_per_s']:,.0f} | "
                         f"{100 * mfu:.1f}% | {r['eval_s']:.1f} | {r['rss_mb']:.0f} | {r['loss']:.4f} |")
    if big:
        achieved = big["tokens_per_s"] * big["flops_per_token"]
        lines.append(f"| 111m (gpt2) | current | {big['params'] / 1e6:.1f}M | - | {big['tokens_per_s']:,.0f} | "
                     f"{100 * achieved / peak:.1f}% | - | - | {big['loss']:.4f} |")
    faster = min(attn, key=attn.get)
    d, g = rows["demo"], rows["gpt2"]
    lines += ["",
              f"attention forward (16x4x128x32, cpu; Flex has no CPU backward): sdpa+ALiBi mask "
              f"{attn['sdpa'] * 1e3:.2f} ms, flex+score_mod (eager) {attn['flex'] * 1e3:.2f} ms -> faster here: {faster}",
              "",
              f"headline: tiny demo run {d['previous']['wall_s'] / d['current']['wall_s']:.2f}x faster whole-run "
              f"({d['previous']['wall_s']:.0f} -> {d['current']['wall_s']:.0f} s; training "
              f"{d['current']['tokens_per_s'] / d['previous']['tokens_per_s']:.2f}x, evaluation "
              f"{d['previous']['eval_s'] / max(d['current']['eval_s'], 1e-9):.2f}x), peak RSS "
              f"{d['previous']['rss_mb']:.0f} -> {d['current']['rss_mb']:.0f} MB; GPT-2 vocabulary: "
              f"{g['previous']['wall_s'] / g['current']['wall_s']:.2f}x, peak RSS {g['previous']['rss_mb']:.0f} -> "
              f"{g['current']['rss_mb']:.0f} MB (target: >= 2x, < 1500 MB)"]
    print("\n".join(lines))
    if not args.no_append:
        header = "" if RESULTS.exists() else "# Benchmark results\n\nEach benchmark appends a dated section.\n"
        stamp = dt.datetime.now().isoformat(timespec="seconds")
        with RESULTS.open("a", encoding="utf-8") as fh:
            fh.write("\n".join([header, f"\n## bench_train (trainer before/after #20.9, CPU) — {stamp}\n",
                                *lines, ""]))


if __name__ == "__main__":
    main()
