"""``slimpipe mix``: a SlimPajama output in, a training-ready mix out (packed tokens or jsonl.zst text).

The stages, one module each (Ray only where work is per shard or per bucket; the arithmetic lives in
:mod:`slimpipe.mix.budget`):

1. **tokenize** (:mod:`~slimpipe.mix.tokenize`): every held-out document is tokenized and its text
   hashed, so no held-out text can reach training; then train shards, in a seeded order, until the
   shortest prefix of that order holds every source's target. Which prefix that is depends only on
   token counts, never on task timing, so the result is the same on 2 cores or 200. Scratch files are
   published atomically and reused by a rerun.
2. **select** (:mod:`~slimpipe.mix.select`): per-source targets and epochs, each shard's quota, then per
   shard whole epochs of repeated sources and a seeded sample filling the quota exactly (the last
   document truncated), each piece thrown into one of ``B`` shuffle buckets.
3. **pack** (:mod:`~slimpipe.mix.pack`): each bucket shuffled in memory (seeded) and written, as packed
   tokens (``train/``) or as ``jsonl.zst`` shards in SlimPajama's layout. Two-pass shuffle, as the Pile
   and SlimPajama do it.
4. **evalsets** (:mod:`~slimpipe.mix.evalsets`): a seeded, capped sample per source of each held-out
   split, identical for every mix of an experiment that shares seed, tokenizer and holdout.
5. **manifest** (:mod:`~slimpipe.mix.manifest`): written last and atomically; its presence marks a
   complete mix.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from slimpipe import storage
from slimpipe.io.writers import ShardInfo
from slimpipe.mix import budget as B
from slimpipe.mix.cache import TokenCache, default_cache_root
from slimpipe.mix.common import (
    INPUT_INDEX,
    MANIFEST,
    WORK,
    MixBuildError,
    MixContext,
    MixOptions,
    loc,
    order_sources,
    read_input,
    work_key,
)
from slimpipe.mix.config import MixConfig
from slimpipe.mix.evalsets import eval_stage
from slimpipe.mix.manifest import write_mix_manifest
from slimpipe.mix.pack import pack_train, write_text_train
from slimpipe.mix.select import plan_and_select
from slimpipe.mix.tokenize import (
    holdout_stage,
    resolve_tokenizer,
    setup_tokenizer,
    shard_input,
    tokenize_shard,
    train_stage,
    worker_tokenizer,
)

__all__ = ["MixBuildError", "MixOptions", "build_mix", "fill_token_cache", "realise_mix", "resolve_tokenizer", "shard_input", "tokenize_shard",
           "worker_tokenizer"]

log = logging.getLogger(__name__)


def claim_out(root: str, out: str, mix: MixConfig, opt: MixOptions) -> bool:
    """Claim OUT by the output-folder rules every command follows (:mod:`slimpipe.outdir`): never inside the
    input, never a folder of the user's files (``force`` writes next to them, never over them), never
    another job's or another mix's output. True when OUT already holds this mix (finished or not)."""
    from slimpipe.outdir import claim, identity, input_identity

    options = {k: v for k, v in asdict(opt).items() if k not in _NOT_IDENTITY}
    ident = identity(inputs=input_identity([root]), mix={"name": mix.name, "shares": dict(mix.shares)},
                     options=options)
    return claim(out, "mix", ident, sources=[root], force=opt.force)


# options that change nothing in the mix (where it runs, what it prints, the cache it reuses)
_NOT_IDENTITY = ("warn", "quiet", "ray_address", "force", "token_cache", "keep_work")


def _check_sources(root: str, mix: MixConfig, train_shards: list) -> None:
    """Fail before any work when the index says a source of the mix has no train documents."""
    if not all(s.counts is not None for s in train_shards):
        return
    missing = [s for s in mix.active_sources if not any(x.source_units(s, "docs") for x in train_shards)]
    if missing:
        raise MixBuildError(f"mix {mix.name!r} needs " + ", ".join(f"{s} ({mix.shares[s]:.1%})" for s in missing)
                            + f" but {root} has no train documents of " + ("it" if len(missing) == 1 else "them"))


def _cache_root(root: str, opt: MixOptions) -> str:
    """The token cache's folder (a path or URI), created and checked writable before any work."""
    cache_root = loc(opt.token_cache) if opt.token_cache else default_cache_root(root)
    try:
        storage.makedirs(cache_root)
        storage.check_store(cache_root, write=True)
    except (OSError, storage.StorageError) as exc:
        raise MixBuildError(f"token cache {cache_root}: {getattr(exc, 'strerror', None) or exc}; "
                            "pass --token-cache DIR") from None
    return cache_root


def build_mix(slimpajama_dir: str | Path, mix: MixConfig, out: str | Path, opt: MixOptions) -> dict:
    """Build ``mix`` from a SlimPajama folder into ``out``; returns the manifest (also ``out/manifest.json``)."""
    from slimpipe.engine import ensure_ray

    opt.check()
    t_start = time.monotonic()
    root, out = loc(slimpajama_dir), loc(out)
    splits, input_info = read_input(root)
    if root == out:
        raise MixBuildError("the output folder must differ from the input folder")
    train_shards = splits["train"]
    _check_sources(root, mix, train_shards)
    cache_root = _cache_root(root, opt)
    if claim_out(root, out, mix, opt) and storage.exists(storage.join(out, MANIFEST)):
        done = storage.read_json(storage.join(out, MANIFEST))
        if (done.get("input") or {}).get("manifest_sha256") == input_info.get("manifest_sha256"):
            return done  # this mix of this input is already built: nothing to do
        raise MixBuildError(f"{out} holds this mix built from an earlier state of {root}; choose a new folder, or "
                            "delete this one to build it again")
    ensure_ray(opt.ray_address)  # before OUT gets anything but its claim: a failed start leaves it re-admittable
    work = storage.join(out, WORK)
    storage.makedirs(work)
    tok, tok_spec = setup_tokenizer(root, out, splits, opt)
    ctx = MixContext(root=root, out=out, mix=mix, opt=opt, tok=tok, work=work, input_id=work_key(input_info),
                     tok_spec=tok_spec)
    ctx.cache = TokenCache(cache_root, tok.identity, ctx.input_id)
    if input_info["manifest_sha256"] is None:
        ctx.warn(f"{root} has no manifest.json: the mix manifest cannot pin the input by hash")

    timings: dict[str, float] = {}
    clock = [time.monotonic()]

    def lap(stage: str) -> None:
        now = time.monotonic()
        timings[stage] = round(now - clock[0], 3)
        clock[0] = now

    # 1. tokenize: the holdout (all sources), then train shards until a prefix covers every target
    holdout_shards, holdout_res, holdout_hashes = holdout_stage(ctx, splits)
    targets = B.source_targets(opt.tokens, {s: mix.shares[s] for s in mix.active_sources})
    used, res, n_eligible = train_stage(ctx, train_shards, holdout_hashes, targets)
    lap("tokenize")
    # 2. select
    sel = plan_and_select(ctx, train_shards, used, res, n_eligible)
    lap("select")
    # 3. pack, 4. eval sets
    extra: dict[str, Any] = {"timings_s": timings}
    text_shards: list[ShardInfo] = []
    if opt.output_format == "packed":
        train_index, realised, docs_packed = pack_train(ctx, sel.files, sel.n_buckets)
        extra["train"] = {k: train_index[k] for k in ("n_sequences", "n_tokens", "seq_len", "dropped_tokens",
                                                      "n_documents", "total_bytes", "bytes_exact")}
        extra["train"]["parts"] = len(train_index["parts"])
        lap("pack")
        eval_info, _, _ = eval_stage(ctx, holdout_shards, holdout_res, input_info.get("eval_set"))
    else:
        realised, docs_packed, text_shards, train_items = write_text_train(ctx, sel.files, sel.n_buckets)
        lap("pack")
        eval_info, eval_shards, eval_items = eval_stage(ctx, holdout_shards, holdout_res, input_info.get("eval_set"))
        text_shards += eval_shards
        storage.write_json_atomic(storage.join(out, INPUT_INDEX), {"splits": {"train": train_items, **eval_items}})
    lap("evalsets")
    timings["total"] = round(time.monotonic() - t_start, 3)
    # 5. manifest
    write_mix_manifest(ctx, input_info=input_info, n_train_shards=len(train_shards), n_eligible=n_eligible,
                       used=used, res=res, holdout_res=holdout_res, holdout_docs=int(holdout_hashes.size),
                       sel=sel, realised=realised, docs_packed=docs_packed, eval_info=eval_info, extra=extra,
                       text_shards=text_shards)
    if not opt.keep_work:  # --keep-work keeps OUT/.work (the pieces selected per shard) for inspection
        storage.delete_tree(work)
    log.info("mix %s built in %.1fs", mix.name, time.monotonic() - t_start)
    return storage.read_json(storage.join(out, MANIFEST))


def realise_mix(slimpajama_dir: str | Path, weights: Mapping[str, float], tokens: int, out: str | Path, *,
                name: str = "custom", **options: Any) -> dict:
    """A mix from source weights and a token budget, drawn from the token cache: what a proposal tool
    calls once per candidate. Nothing already in the cache is tokenized again; ``options`` are
    :class:`MixOptions` fields (``seq_len``, ``seed``, ``tokenizer``, ``token_cache``, ...)."""
    return build_mix(slimpajama_dir, MixConfig(name=name, weights=dict(weights)), out,
                     MixOptions(tokens=tokens, **options))


def fill_token_cache(slimpajama_dir: str | Path, sources: Sequence[str] | None = None, **options: Any) -> dict:
    """Tokenize every train shard of ``sources`` (default: all in the input's index) and the holdout
    into the token cache, so that later mixes of any weights and budget tokenize nothing.
    ``options`` are :class:`MixOptions` fields; returns the cache's description with its hit counts."""
    from slimpipe.engine import ensure_ray

    root = loc(slimpajama_dir)
    opt = MixOptions(tokens=1, **options)
    opt.check()
    splits, input_info = read_input(root)
    if sources is None:
        found = {s for sh in splits["train"] for s in (sh.counts or {})}
        if not found:
            raise MixBuildError(f"{root}: no {INPUT_INDEX} listing the sources; name them")
        sources = order_sources(found)
    mix = MixConfig(name="cache", weights=dict.fromkeys(sources, 1.0))
    ensure_ray(opt.ray_address)
    if opt.tokenizer == "train":
        raise MixBuildError("fill the cache with a saved tokenizer (a tokenizer.json or a previous mix folder)")
    tok = resolve_tokenizer(opt.tokenizer)
    ctx = MixContext(root=root, out=root, mix=mix, opt=opt, tok=tok, work=root, input_id=work_key(input_info),
                     tok_spec=opt.tokenizer if storage.is_shared(opt.tokenizer) else tok.spec)
    ctx.cache = TokenCache(_cache_root(root, opt), tok.identity, ctx.input_id)
    _, _, holdout = holdout_stage(ctx, splits)
    train_stage(ctx, splits["train"], holdout, dict.fromkeys(mix.active_sources, 1 << 62))
    return ctx.cache.describe()
