"""Drop training documents that are copies or near-copies of an evaluation document.

A training document is contaminated when it is

1. an evaluation document itself (same stable id: the evaluation set is drawn from the same raw
   sources, so every evaluation document also reaches dedup's output),
2. an **exact copy**: the SHA-256 of its full text, or the hash of its cleaned text (NFC, lowercase, no
   punctuation, collapsed whitespace: the dedup engine's exact pre-pass), equals an evaluation
   document's, or
3. a **near-duplicate**: the dedup engine's MinHash over the same shingles (``DedupParams``: unit,
   n-gram, permutations, seed) puts it in an LSH bucket with an evaluation document, and the exact
   Jaccard of their shingle sets is at least the threshold (0.8 by default).

The evaluation set is small, so the LSH here uses narrow bands (``DECON_ROWS`` rows each, as many bands
as the signature allows): nearly every pair at the threshold becomes a candidate (recall in
:meth:`Decontaminator.describe`), and the exact Jaccard removes the false candidates. The index is built
once in the driver from ``EVAL`` and shipped to every task (``ray.put``); checking a batch is vectorised
(one signature call, one set lookup per band key).
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from slimpipe.dedup.minhash import band_keys, exact_hashes, shingle_set, signatures
from slimpipe.dedup.params import DedupParams, detection_probability
from slimpipe.text.normalize import clean_for_hash, normalize

DECON_ROWS = 5
KEEP, EVAL_DOC, EXACT, NEAR = 0, 1, 2, 3
REASONS = {EVAL_DOC: "evaluation document", EXACT: "exact copy", NEAR: "near-duplicate"}


def _clean(text: str) -> str:
    return clean_for_hash(normalize(text))


class Decontaminator:
    """An index of the evaluation set; :meth:`check` says which training documents must go, and why."""

    def __init__(self, docs: Sequence[tuple[str, str, str]], params: DedupParams, eval_set: str | None = None):
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
        self._shingles: dict[int, np.ndarray] = {}

    @classmethod
    def from_eval_dir(cls, eval_dir, params: DedupParams) -> Decontaminator:
        from slimpipe.evalset.build import load_manifest, read_eval_documents

        return cls(read_eval_documents(eval_dir), params, load_manifest(eval_dir)["eval_set"])

    def describe(self) -> dict:
        return {"eval_set": self.eval_set, "eval_docs": len(self.ids), "threshold": self.threshold,
                "bands": self.bands, "rows": self.rows, "shingles": f"{self.params.unit} {self.params.ngram}-grams",
                "recall_at_threshold": float(detection_probability(self.threshold, self.bands, self.rows)),
                "verify": "exact Jaccard of the shingle sets"}

    def _eval_shingles(self, i: int) -> np.ndarray:
        if i not in self._shingles:
            p = self.params
            self._shingles[i] = shingle_set(self.clean[i], p.ngram, p.unit, p.seed)
        return self._shingles[i]

    def check(self, ids: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        """One code per document: ``KEEP`` or the reason it is contaminated (``EVAL_DOC``, ``EXACT``, ``NEAR``)."""
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

    base = storage.join(src) if storage.is_remote(src) else storage.resolve(src)[1]  # the listing's spelling
    rels = []
    for f in storage.list_files(src):
        rel = f[len(base):].replace(os.sep, "/").lstrip("/")
        if rel == MANIFEST or any(p.startswith((".", "_")) for p in rel.split("/")):
            continue
        rels.append(rel)
    for rel in [*rels, MANIFEST]:
        with storage.open_input(storage.join(src, rel)) as fh, storage.open_output(storage.join(dest, rel)) as o:
            shutil.copyfileobj(fh, o, 8 << 20)
