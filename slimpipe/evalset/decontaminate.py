"""Drop training documents that are copies or near-copies of an evaluation document.

A training document is contaminated when it is

1. an evaluation document itself (same stable id: the evaluation set is drawn from the same raw
   sources, so every evaluation document also reaches dedup's output),
2. an **exact copy**: the SHA-256 of its full text, or the hash of its cleaned text (NFC, lowercase, no
   punctuation, collapsed whitespace: the dedup engine's exact pre-pass), equals an evaluation
   document's, or
3. a **near-duplicate**: the dedup engine's MinHash over the same shingles (``DedupParams``: unit,
   n-gram, permutations, seed) puts it in an LSH bucket with an evaluation document, and the exact
   Jaccard of their shingle sets is at least the threshold (0.8 by default), or
4. a **containment**: it holds at least ``CONTAINMENT`` (50%) of an evaluation document's distinct
   shingles (the evaluation text was copied into a longer training document: a revision with more
   answers, a later edition, a file grown between versions), or at least 50% of its own shingle windows
   occur in one evaluation document (a training excerpt of an evaluation document). Jaccard misses both:
   a 1 kB question inside a 4 kB thread has J <= 0.25. The first direction only counts for evaluation
   documents with at least ``min_chars`` cleaned characters (the dedup preset's short-document floor),
   so a one-line evaluation document cannot remove every training document that quotes it.

The evaluation set is small, so the LSH here uses narrow bands (``DECON_ROWS`` rows each, as many bands
as the signature allows): nearly every pair at the threshold becomes a candidate (recall in
:meth:`Decontaminator.describe`), and the exact Jaccard removes the false candidates. The index is built
once in the driver from ``EVAL`` and shipped to every task (``Executor.share``); checking a batch is vectorised
(one signature call, one set lookup per band key).

Containment is exact, not sampled, and never compares pairs: the index holds the evaluation set's
distinct shingle hashes in an open-addressing table whose slot also names the evaluation document
holding the shingle (or points to the list of them), behind a 16-bit-per-shingle Bloom filter. One compiled pass per ~1M characters of
training text rolls the same shingle hashes as MinHash (:mod:`slimpipe.dedup.minhash`'s kernels), tests
each in the blocked Bloom filter (one word, ~2% false passes), sorts those that pass and looks them up
in the table (one cache line each, in slot order), and counts the distinct and positional matches per
evaluation document among those that share a shingle. Cost is linear in the training text; the
evaluation set's size only sets the index's memory (~40 bytes per distinct evaluation shingle).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
from numba import njit

from slimpipe.dedup.minhash import (
    _hashes_into,
    band_keys,
    codepoint_chunks,
    exact_hashes,
    permutation_params,
    shingle_set,
    signatures,
)
from slimpipe.dedup.params import DedupParams, detection_probability
from slimpipe.text.normalize import clean_for_hash, normalize

DECON_ROWS = 5
CONTAINMENT = 0.5  # share of an evaluation document's shingles (or of a training document's) that removes it
KEEP, EVAL_DOC, EXACT, NEAR, CONTAINED = 0, 1, 2, 3, 4
REASONS = {EVAL_DOC: "evaluation document", EXACT: "exact copy", NEAR: "near-duplicate", CONTAINED: "containment"}
_CHUNK_CHARS = 1_000_000  # training text per compiled call (the UTF-32 copy stays small)


def _clean(text: str) -> str:
    return clean_for_hash(normalize(text))


@njit(inline="always")
def _bloom_bits(h):
    return (np.uint64(1) << (h & np.uint64(63))) | (np.uint64(1) << ((h >> np.uint64(6)) & np.uint64(63)))


_MULTI = np.uint64(1 << 63)


@njit(inline="always")
def _slot(h, size):
    return np.int64(((h >> np.uint64(32)) * np.uint64(size)) >> np.uint64(32))


@njit(cache=True, nogil=True)
def _build_table(keys, post_ptr, post_doc, table, multi):
    """Open addressing, linear probing: ``table[s] = (key, value)``; value 0 = empty, ``doc + 1`` for a
    shingle of one evaluation document, ``_MULTI | offset`` into ``multi`` = (count, docs...) otherwise."""
    size = table.shape[0]
    off = 0
    for j in range(keys.shape[0]):
        h = keys[j]
        s = _slot(h, size)
        while table[s, 1] != 0:
            s = s + 1 if s + 1 < size else 0
        table[s, 0] = h
        lo, hi = post_ptr[j], post_ptr[j + 1]
        if hi - lo == 1:
            table[s, 1] = np.uint64(post_doc[lo] + 1)
        else:
            table[s, 1] = _MULTI | np.uint64(off)
            multi[off] = hi - lo
            for p in range(lo, hi):
                multi[off + 1 + p - lo] = post_doc[p]
            off += 1 + hi - lo


@njit(cache=True, nogil=True)
def _containment_kernel(cp, offsets, n, word, base, wbase, hseed, bloom, bloom_shift, table, multi, eval_sizes,
                        eval_min, threshold, out_doc, out_frac):
    """For each document cp[offsets[d]:offsets[d+1]] (cleaned text): the evaluation document it is most
    contained in or contains, when that share reaches ``threshold`` (else -1), and the share.

    ``table`` maps the evaluation set's distinct shingle hashes to the evaluation documents holding them
    (:func:`_build_table`); ``bloom`` is a one-word-per-query filter in front of it. Per evaluation
    document e that shares a shingle: ``|E ∩ T| / |E|`` (distinct shingles, when |E| >= eval_min) and the
    share of T's shingle windows whose shingle is in E.
    """
    ndoc = offsets.shape[0] - 1
    longest = 0
    for d in range(ndoc):
        longest = max(longest, offsets[d + 1] - offsets[d])
    hbuf = np.empty(max(longest, 1), np.uint64)
    tok = np.empty(max(longest, 1) if word else 1, np.uint64)
    cand = np.empty(max(longest, 1), np.uint64)
    neval = eval_sizes.shape[0]
    distinct = np.zeros(neval, np.int64)
    windows = np.zeros(neval, np.int64)
    touched = np.empty(neval, np.int64)
    size = table.shape[0]
    for d in range(ndoc):
        out_doc[d] = -1
        out_frac[d] = 0.0
        s = offsets[d]
        e = offsets[d + 1]
        m = _hashes_into(cp, s, e, n, word, base, wbase, hseed, tok, hbuf)
        nc = 0
        for i in range(m):  # the filter: one word per window, ~2% false passes
            h = hbuf[i]
            mk = _bloom_bits(h)
            if bloom[h >> bloom_shift] & mk == mk:
                cand[nc] = h
                nc += 1
        if nc == 0:
            continue
        cs = np.sort(cand[:nc])  # runs are repeated windows; the table is then walked in slot order
        nt = 0
        i = 0
        while i < nc:
            h = cs[i]
            r = i + 1
            while r < nc and cs[r] == h:
                r += 1
            q = _slot(h, size)
            while table[q, 1] != 0:
                if table[q, 0] == h:
                    v = table[q, 1]
                    if v & _MULTI:
                        o = np.int64(v ^ _MULTI)
                        lo, hi = o + 1, o + 1 + multi[o]
                    else:
                        lo, hi = -1, 0
                    for p in range(lo, hi):
                        ev = np.int64(v) - 1 if p < 0 else np.int64(multi[p])
                        if distinct[ev] == 0:
                            touched[nt] = ev
                            nt += 1
                        distinct[ev] += 1
                        windows[ev] += r - i
                    break
                q = q + 1 if q + 1 < size else 0
            i = r
        best = -1
        best_frac = 0.0
        for t in range(nt):
            ev = touched[t]
            f = windows[ev] / m
            if eval_sizes[ev] >= eval_min:
                f = max(f, distinct[ev] / eval_sizes[ev])
            if f >= threshold and f > best_frac:
                best = ev
                best_frac = f
            windows[ev] = 0
            distinct[ev] = 0
        out_doc[d] = best
        out_frac[d] = best_frac


class ContainmentIndex:
    """The evaluation set's distinct shingles, for :func:`_containment_kernel` (see the module doc)."""

    def __init__(self, shingles: Sequence[np.ndarray], params: DedupParams, eval_min: int,
                 threshold: float = CONTAINMENT):
        self.params, self.threshold, self.eval_min = params, float(threshold), int(eval_min)
        self.sizes = np.array([a.size for a in shingles], dtype=np.int64)
        allh = np.concatenate(shingles) if shingles else np.zeros(0, np.uint64)
        docs = np.repeat(np.arange(len(shingles), dtype=np.int64), self.sizes)
        order = np.argsort(allh, kind="stable")
        allh, post_doc = allh[order], docs[order]
        keys, first = np.unique(allh, return_index=True)
        post_ptr = np.append(first, allh.size).astype(np.int64)
        self.keys = int(keys.size)
        # 70% load: ~1.4 probes per lookup, one cache line each; 16 B per slot
        self.table = np.zeros((max(1, int(keys.size / 0.7) + 1), 2), dtype=np.uint64)
        n_multi = int(np.diff(post_ptr)[np.diff(post_ptr) > 1].sum() + (np.diff(post_ptr) > 1).sum())
        self.multi = np.zeros(max(1, n_multi), dtype=np.int32)
        if keys.size:
            _build_table(keys, post_ptr, post_doc, self.table, self.multi)
        k = max(1, keys.size)
        words = 1 << max(0, int(np.ceil(np.log2(k * 16 / 64))))  # 16 bits per key: ~2% false passes
        self.bloom_shift = np.uint64(64 - int(np.log2(words))) if words > 1 else np.uint64(63)
        self.bloom = np.zeros(words, dtype=np.uint64)
        if keys.size:
            w = (keys >> self.bloom_shift).astype(np.int64) if words > 1 else np.zeros(keys.size, np.int64)
            bits = (np.uint64(1) << (keys & np.uint64(63))) | (np.uint64(1) << ((keys >> np.uint64(6)) & np.uint64(63)))
            np.bitwise_or.at(self.bloom, w, bits)

    def match(self, clean: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(evaluation document index or -1, share) for each cleaned training text."""
        n_docs = len(clean)
        doc = np.full(n_docs, -1, dtype=np.int64)
        frac = np.zeros(n_docs, dtype=np.float64)
        if not n_docs or not self.keys:
            return doc, frac
        p = self.params
        base, wbase, hseed, _, _ = permutation_params(int(p.seed), 1)
        for start, stop, cp, offsets in codepoint_chunks(clean, _CHUNK_CHARS):
            _containment_kernel(cp, offsets, int(p.ngram), p.unit == "word", base, wbase, hseed, self.bloom,
                                self.bloom_shift, self.table, self.multi, self.sizes, self.eval_min,
                                self.threshold, doc[start:stop], frac[start:stop])
        return doc, frac


class Decontaminator:
    """An index of the evaluation set; :meth:`check` says which training documents must go, and why."""

    def __init__(self, docs: Sequence[tuple[str, str, str]], params: DedupParams, eval_set: str | None = None,
                 containment: float = CONTAINMENT):
        self.params = params
        self.threshold = float(params.threshold)
        self.rows = min(DECON_ROWS, params.num_perm)
        self.bands = params.num_perm // self.rows
        self.eval_set = eval_set
        self.ids = {doc_id for _, doc_id, _ in docs}
        self.sha = {hashlib.sha256(t.encode("utf-8")).digest() for *_, t in docs}
        self.clean = [_clean(t) for *_, t in docs]
        self.exact = set(exact_hashes(self.clean).tolist())
        self.sources = [s for s, *_ in docs]
        index: dict[int, list[int]] = defaultdict(list)
        keys = band_keys(signatures(self.clean, params), self.bands, self.rows) if docs else np.zeros((0, 0))
        for i, row in enumerate(keys.tolist()):
            for k in row:
                index[k].append(i)
        self.index = dict(index)
        self._shingles: dict[int, np.ndarray] = {}  # near-duplicate verification, filled on demand
        # the evaluation-in-training direction needs this many distinct shingles: the dedup preset's
        # short-document floor, in shingles (a cleaned text of min_chars characters has min_chars - n + 1)
        floor = max(1, int(params.min_chars) - int(params.ngram) + 1) if params.unit == "char" else 1
        self.containment = ContainmentIndex([shingle_set(c, params.ngram, params.unit, params.seed)
                                             for c in self.clean], params, floor, containment)

    @classmethod
    def from_eval_dir(cls, eval_dir, params: DedupParams) -> Decontaminator:
        from slimpipe.evalset.build import load_manifest, read_eval_documents

        return cls(read_eval_documents(eval_dir), params, load_manifest(eval_dir)["eval_set"])

    def describe(self) -> dict:
        return {"eval_set": self.eval_set, "eval_docs": len(self.ids), "threshold": self.threshold,
                "bands": self.bands, "rows": self.rows, "shingles": f"{self.params.unit} {self.params.ngram}-grams",
                "recall_at_threshold": float(detection_probability(self.threshold, self.bands, self.rows)),
                "verify": "exact Jaccard of the shingle sets",
                "containment": self.containment.threshold,
                "containment_rule": (f">= {self.containment.threshold:.0%} of an evaluation document's distinct "
                                     f"shingles (documents of >= {self.containment.eval_min} shingles), or >= "
                                     f"{self.containment.threshold:.0%} of the training document's shingle windows "
                                     "in one evaluation document; exact, every training document")}

    def _eval_shingles(self, i: int) -> np.ndarray:
        if i not in self._shingles:
            p = self.params
            self._shingles[i] = shingle_set(self.clean[i], p.ngram, p.unit, p.seed)
        return self._shingles[i]

    def check(self, ids: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        """One code per document: ``KEEP`` or the reason it is contaminated (``EVAL_DOC``, ``EXACT``, ``NEAR``,
        ``CONTAINED``)."""
        out = np.zeros(len(texts), dtype=np.int8)
        if not len(texts) or not self.ids:
            return out
        clean = [_clean(t) for t in texts]
        exact = exact_hashes(clean)
        keys = band_keys(signatures(clean, self.params), self.bands, self.rows)
        p = self.params
        for j, (doc_id, text) in enumerate(zip(ids, texts, strict=True)):
            if doc_id in self.ids:
                out[j] = EVAL_DOC
            elif int(exact[j]) in self.exact or hashlib.sha256(text.encode("utf-8")).digest() in self.sha:
                out[j] = EXACT
            else:
                cands = {i for k in keys[j].tolist() for i in self.index.get(k, ())}
                if cands:
                    mine = shingle_set(clean[j], p.ngram, p.unit, p.seed)
                    for i in cands:
                        a = self._eval_shingles(i)
                        inter = np.intersect1d(mine, a, assume_unique=True).size
                        union = mine.size + a.size - inter
                        if union and inter / union >= self.threshold:
                            out[j] = NEAR
                            break
        rest = np.flatnonzero(out == KEEP)
        if rest.size:
            doc, _ = self.containment.match([clean[j] for j in rest.tolist()])
            out[rest[doc >= 0]] = CONTAINED
        return out


def count(codes: np.ndarray, sources: Sequence[str], nbytes: Sequence[int]) -> dict[str, dict[str, list[int]]]:
    """``{source: {reason: [docs, bytes]}}`` of the contaminated documents in one batch."""
    out: dict[str, dict[str, list[int]]] = {}
    for c, s, b in zip(codes.tolist(), sources, nbytes, strict=True):
        if c:
            e = out.setdefault(s, {}).setdefault(REASONS[c], [0, 0])
            e[0] += 1
            e[1] += int(b)
    return out


def merge_counts(parts: Sequence[dict]) -> dict[str, dict[str, list[int]]]:
    out: dict[str, dict[str, list[int]]] = {}
    for part in parts:
        for s, reasons in (part or {}).items():
            for r, (n, b) in reasons.items():
                e = out.setdefault(s, {}).setdefault(r, [0, 0])
                e[0] += n
                e[1] += b
    return out


def train_codes(decon: Decontaminator | None, rows: Sequence[int], splits: Sequence[int], ids: Sequence[str],
                texts: Sequence[str], train: int = 0) -> dict[int, int]:
    """``{row: reason}`` for the contaminated training rows among ``rows`` (the pipeline's gather hook)."""
    if decon is None:
        return {}
    tr = [i for i in rows if splits[i] == train]
    codes = decon.check([ids[i] for i in tr], [texts[i] for i in tr])
    return {i: int(c) for i, c in zip(tr, codes.tolist(), strict=True) if c}


def prepare_eval_set(paths: list, out, params: DedupParams, *, reuse=None, options=None, source: str | None = None,
                     progress: bool = True, scratch: str | None = None,
                     keep_intermediates: bool = False) -> Decontaminator:
    """``OUT/eval``: a copy of ``reuse`` (an existing ``slimpipe evalset`` folder), or drawn here from the raw
    ``paths`` with ``options`` (:class:`~slimpipe.evalset.build.EvalSetOptions`); returns its index.

    ``out``, ``reuse`` and ``scratch`` may be paths or URIs. A copy writes every file of the set, then its
    manifest last (the manifest marks a complete set, so an interrupted copy is redone).
    """
    from slimpipe import storage
    from slimpipe.evalset.build import MANIFEST, EvalSetOptions, build_eval_set, load_manifest

    target = storage.join(out, "eval")
    if reuse is not None:
        src_manifest = load_manifest(reuse)
        if storage.exists(storage.join(target, MANIFEST)):
            if load_manifest(target)["eval_set"] != src_manifest["eval_set"]:
                raise ValueError(f"{target} holds another evaluation set than {reuse}; use a new output folder")
        else:
            _copy_eval_set(reuse, target)
    else:
        build_eval_set(paths, target, options or EvalSetOptions(), source=source, progress=progress,
                       scratch=scratch, keep_intermediates=keep_intermediates)
    return Decontaminator.from_eval_dir(target, params)


def _copy_eval_set(src, dest) -> None:
    """Copy a finished evaluation set (no intermediates, no hidden files), its manifest last."""
    import shutil

    from slimpipe import storage
    from slimpipe.evalset.build import MANIFEST

    rels = []
    for rel in storage.list_relative(src):
        if rel == MANIFEST or any(p.startswith((".", "_")) for p in rel.split("/")):
            continue
        rels.append(rel)
    for rel in [*rels, MANIFEST]:
        with storage.open_input(storage.join(src, rel)) as fh, storage.open_output(storage.join(dest, rel)) as o:
            shutil.copyfileobj(fh, o, 8 << 20)
