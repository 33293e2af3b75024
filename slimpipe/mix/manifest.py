"""Stage *manifest*: what the mix holds, how it was made and what went wrong, written last and atomically
(its presence marks a complete mix)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from slimpipe import storage
from slimpipe.io.writers import ShardInfo, write_manifest
from slimpipe.mix import budget as B
from slimpipe.mix.common import FORMAT, MANIFEST, SEED_STREAMS, TOKENIZER_DIR, VERSION, MixContext
from slimpipe.mix.select import Selection


def _input_warnings(ctx: MixContext, read_results: list[dict], holdout_dropped: dict[str, int]
                    ) -> tuple[list[dict], int]:
    """Damaged shards, unreadable lines and holdout copies dropped from training: counted and said."""
    bad_shards = [{"path": r["path"], "status": r.get("status"), "error": r.get("error")} for r in read_results
                  if r.get("status", "ok") not in ("ok", "empty")]
    for bad in bad_shards:
        ctx.warn(f"input shard {bad['path']} is {bad['status']} ({bad['error']}): only its readable part was used")
    rejected = sum(r["rejected"] for r in read_results)
    if rejected:
        ctx.warn(f"{rejected} input lines could not be read as documents and were skipped")
    if any(holdout_dropped.values()):
        ctx.warn("dropped from training because identical to a held-out document: "
                 + ", ".join(f"{s} {n}" for s, n in holdout_dropped.items() if n))
    return bad_shards, rejected


def source_entries(ctx: MixContext, sel: Selection, res: list[dict], realised: dict[str, int],
                   docs_packed: dict[str, int], holdout_dropped: dict[str, int]
                   ) -> tuple[dict[str, dict], dict[str, float], dict[str, float], bool]:
    """Per source: weight, target and realised share, availability, epochs, pieces; plus the share check."""
    mix = ctx.mix
    target_shares = dict(mix.shares)
    shares = B.realised_shares({s: realised.get(s, 0) for s in mix.shares})
    errors = B.share_errors_pp(target_shares, shares)
    ok = B.within_tolerance(target_shares, shares)
    if not ok:
        worst = max(errors, key=lambda s: abs(errors[s]))
        ctx.warn(f"realised share of {worst} is {errors[worst]:+.2f} percentage points off its target "
                 f"(tolerance {B.TOLERANCE_PP}); the budget is probably too small for whole sequences")
    sources: dict[str, dict] = {}
    for s in mix.shares:
        entry: dict[str, Any] = {"weight": mix.weights[s], "share_target": target_shares[s],
                                 "tokens_realised": int(realised.get(s, 0)), "share_realised": shares[s],
                                 "share_error_pp": errors[s]}
        if s in sel.plans:
            p = sel.plans[s]
            total = sel.total_avail[s]
            entry.update(tokens_target=p.target, tokens_available=int(total), available_exact=sel.exact,
                         tokens_available_in_used_shards=int(sel.prefix_avail[s]),
                         epochs=(p.target / total) if total else 0.0,
                         full_epochs=p.full_epochs, partial_epoch=(p.remainder / p.available) if p.upsampled else 0.0,
                         upsampled=p.upsampled, docs_in_used_shards=sum(r["stats"][s]["docs"] for r in res),
                         docs_written=int(docs_packed.get(s, 0)), pieces=sel.pieces[s]["pieces"],
                         truncated_docs=sel.pieces[s]["truncated"], holdout_overlap_dropped=holdout_dropped[s])
        else:
            entry.update(tokens_target=0, epochs=0.0, upsampled=False)
        sources[s] = entry
    return sources, errors, shares, ok


def _save_tokenizer(tok: Any, out: str) -> None:
    """``OUT/tokenizer/``, written through a staged folder (uploaded for an ``OUT`` URI); a trained tokenizer
    (``tokenizer.json``, written there by stage tokenize) is kept. Another one is saved again on a resume
    (the same bytes: a half-finished upload is completed, never taken for whole)."""
    dest = storage.Folder(out).folder(TOKENIZER_DIR)
    if dest.exists("tokenizer.json"):
        return
    with dest.staged() as local:
        tok.save(local)


def write_mix_manifest(ctx: MixContext, *, input_info: dict[str, Any], n_train_shards: int, n_eligible: int,
                       used: list, res: list[dict], holdout_res: dict[str, list[dict]], holdout_docs: int,
                       sel: Selection, realised: dict[str, int], docs_packed: dict[str, int],
                       eval_info: dict[str, dict], extra: dict[str, Any], text_shards: list[ShardInfo]
                       ) -> dict[str, Any]:
    """Assemble the manifest and write it (with the text format's file list, when text)."""
    opt, tok, out = ctx.opt, ctx.tok, ctx.out
    _save_tokenizer(tok, out)
    holdout_dropped = {s: sum(r["holdout_dropped"].get(s, 0) for r in res) for s in ctx.mix.active_sources}
    sources, errors, _shares, ok = source_entries(ctx, sel, res, realised, docs_packed, holdout_dropped)
    read_results = [*res, *(r for rs in holdout_res.values() for r in rs)]
    bad_shards, rejected = _input_warnings(ctx, read_results, holdout_dropped)
    manifest: dict[str, Any] = {
        "format": FORMAT if opt.output_format == "packed" else "slimpajama-jsonl-zst",
        "mix_format": FORMAT,
        "version": VERSION,
        "output_format": opt.output_format,
        "mix": ctx.mix.to_dict(),
        "tokens_requested": opt.tokens,
        "tokens_realised": int(sum(realised.values())),
        "token_unit": "document tokens + 1 EOS per document (the targets the trainer sees)",
        "seq_len": opt.seq_len,
        "tokenizer": tok.describe(),
        "tokenizer_files": TOKENIZER_DIR,
        "seeds": {"seed": opt.seed, "streams": SEED_STREAMS,
                  "rule": "np.random.default_rng([seed, stream, shard-path key or bucket, ...])"},
        "input": {**input_info, "train_shards": n_train_shards, "train_shards_eligible": n_eligible,
                  "train_shards_used": len(used), "used_all_shards": sel.exact,
                  "holdout_docs": holdout_docs, "rejected_lines": rejected, "bad_shards": bad_shards},
        "buckets": sel.n_buckets,
        "sources": sources,
        "tolerance_pp": B.TOLERANCE_PP,
        "max_share_error_pp": max(abs(e) for e in errors.values()),
        "within_tolerance": ok,
        "eval": eval_info,
        "eval_set": (input_info.get("eval_set") or {}).get("eval_set"),
        "eval_source": ("the evaluation set SLIMPAJAMA_DIR/eval (test/: the holdout's test split)"
                        if input_info.get("eval_set") else "the holdout's validation (eval/) and test (test/) splits"),
        "epochs": {s: e["epochs"] for s, e in sources.items() if e.get("tokens_target")},
        "eval_tokens_per_source": opt.eval_tokens,
        "options": {k: v for k, v in asdict(opt).items()
                    if k not in ("warn", "quiet", "ray_address", "force", "token_cache")},
        "token_cache": ctx.cache.describe(),
        "warnings": ctx.warnings,
        **extra,
    }
    if opt.output_format == "text":
        write_manifest(out, text_shards, extra={k: v for k, v in manifest.items() if k != "format"})
    else:
        storage.write_json_atomic(storage.join(out, MANIFEST), manifest)
    return manifest
