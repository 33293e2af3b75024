"""Choose on one half, confirm on the other: the evaluation documents split by a hash of their id.

Every proxy, the fit and the search see only the *selection* half of each source's evaluation documents;
every figure ``propose`` reports about what it chose (the realised objective of the proposal, its
differences to the natural mix, DC-6 and the best proxy) is measured on the *confirmation* half, which
played no part in the choice. Both halves come from the same decontaminated evaluation set.

A document's half is a pure function of its id (:func:`half_of`: bit 0 of ``SHA-256(salt, id)``), so it
is stable across runs, mixes, seeds and machines, and every piece of one document lands in one half.
The id is the evaluation document's id as the packed evaluation set names it (``pieces.json``: one entry
per document, however many pieces it was cut into; the per-document losses are in that order). For an
older set without ``pieces.json``, :func:`eval_document_ids` decodes each scored document and looks its
(NFC) text up among the evaluation set's documents (``SLIMPAJAMA_DIR/eval``'s ``slimpipe_id``), a
truncated last document by prefix. A document with no id (a mix evaluated on the plain holdout) is
identified by ``sha256:<hash of its text>`` instead, which is as stable.

Each half is identified by a content hash of its sorted ``source, id`` lines (:attr:`Split.selection_set`,
:attr:`Split.confirmation_set`).
"""

from __future__ import annotations

import hashlib
import math
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slimpipe.propose.sample import ProposalError

SALT = b"slimpipe-propose-halves-v1"
SELECTION, CONFIRMATION = "selection", "confirmation"
LN2 = math.log(2.0)
METHOD = ("by document id: bit 0 of SHA-256('slimpipe-propose-halves-v1' + id); id = the evaluation set's "
          "slimpipe_id, else sha256:<text hash>")


def half_of(doc_id: str) -> str:
    """``"selection"`` or ``"confirmation"``: bit 0 of SHA-256(salt, id); stable, about half each."""
    return SELECTION if hashlib.sha256(SALT + doc_id.encode("utf-8")).digest()[0] & 1 == 0 else CONFIRMATION


def _text_key(text: str) -> str:
    return hashlib.sha256(unicodedata.normalize("NFC", text).encode("utf-8")).hexdigest()


def _set_hash(lines: Sequence[str]) -> str:
    h = hashlib.sha256()
    for line in sorted(lines):
        h.update(line.encode("utf-8") + b"\n")
    return h.hexdigest()


@dataclass
class Split:
    """Per source, the id of every scored document (in scoring order) and its half."""

    ids: dict[str, list[str]]

    def mask(self, source: str, half: str = SELECTION) -> np.ndarray:
        return np.array([half_of(i) == half for i in self.ids[source]], dtype=bool)

    def counts(self) -> dict[str, dict[str, int]]:
        return {s: {SELECTION: int(self.mask(s).sum()), CONFIRMATION: int((~self.mask(s)).sum())} for s in self.ids}

    def _hash(self, half: str) -> str:
        return _set_hash([f"{s}\t{i}" for s, ids in self.ids.items() for i in set(ids) if half_of(i) == half])

    @property
    def selection_set(self) -> str:
        return self._hash(SELECTION)

    @property
    def confirmation_set(self) -> str:
        return self._hash(CONFIRMATION)

    def usable(self) -> tuple[list[str], dict[str, str]]:
        """Sources with documents in both halves, and why each other one is left out."""
        ok, why = [], {}
        for s, c in self.counts().items():
            if c[SELECTION] and c[CONFIRMATION]:
                ok.append(s)
            else:
                why[s] = (f"{c[SELECTION]} selection and {c[CONFIRMATION]} confirmation document(s): a source "
                          "needs both halves to be chosen on one and confirmed on the other")
        return ok, why


def eval_document_ids(mix_dir: str | Path, eval_dir: str | Path | None = None) -> dict[str, list[str]]:
    """Per source of ``mix_dir``'s packed evaluation sets, the id of each document in the order the
    trainer scores them (:func:`slimpipe.train.evaluate.documents`); see the module docstring."""
    from slimpipe.train.data import Mix
    from slimpipe.train.evaluate import documents

    mix = Mix.open(mix_dir)
    sets, tok = mix.evals, mix.tokenizer()
    known: dict[str, dict[str, str]] = {}
    texts: dict[str, list[tuple[str, str]]] = {}
    if eval_dir is not None and (Path(eval_dir) / "manifest.json").is_file():
        from slimpipe.evalset.build import read_eval_documents

        for src, doc_id, text in read_eval_documents(eval_dir):
            nfc = unicodedata.normalize("NFC", text)
            known.setdefault(src, {})[_text_key(nfc)] = doc_id
            texts.setdefault(src, []).append((nfc, doc_id))
    out: dict[str, list[str]] = {}
    for s, ds in sets.items():
        stream = np.asarray(ds.tokens)
        pieces = getattr(ds, "pieces", None)
        if pieces is not None:  # a set that names its documents: one entry per evaluation document, as scored
            spans = documents(ds)
            ids = []
            for k, d in enumerate(pieces["docs"]):
                if d and d != "None":
                    ids.append(d)
                    continue
                text = "".join(tok.decode(stream[a:b].tolist()) for a, b in spans[pieces["doc"] == k].tolist())
                ids.append(f"sha256:{_text_key(text)}")
            out[s] = ids
            continue
        ids = []
        for a, b in documents(ds).tolist():
            text = unicodedata.normalize("NFC", tok.decode(stream[a:b].tolist()))
            key = _text_key(text)
            doc_id = known.get(s, {}).get(key)
            if doc_id is None and text:  # a truncated last document: the one evaluation document it begins
                starts = [i for t, i in texts.get(s, []) if t.startswith(text)]
                doc_id = starts[0] if len(starts) == 1 else None
            ids.append(doc_id if doc_id is not None else f"sha256:{key}")
        out[s] = ids
    return out


def half_losses(per_doc: Mapping[str, Mapping[str, np.ndarray]], split: Split, half: str,
                sources: Sequence[str]) -> dict[str, dict[str, np.ndarray]]:
    """One run's per-document arrays (``eval_losses.npz``) restricted to one half; refuses a run whose
    documents do not line up with the split's."""
    out = {}
    for s in sources:
        d = per_doc[s]
        if len(d["nll"]) != len(split.ids[s]):
            raise ProposalError(f"evaluation set of {s}: a run scored {len(d['nll'])} documents, the split has "
                                f"{len(split.ids[s])} (runs on different evaluation sets cannot be compared)")
        m = split.mask(s, half)
        out[s] = {k: np.asarray(v)[m] for k, v in d.items()}
    return out


def bpb(per_doc: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, float]:
    """Bits per byte per source of (restricted) per-document arrays."""
    return {s: float(np.sum(d["nll"]) / (LN2 * max(float(np.sum(d["bytes"])), 1.0))) for s, d in per_doc.items()}


def weighted_row(seeds: Sequence, runs: Sequence[Mapping[str, Mapping[str, np.ndarray]]],
                 weights: Mapping[str, float]):
    """A :class:`~slimpipe.report.stats.RowLosses` whose ``mean`` column is the objective
    ``sum_s w_s * bpb_s``: each source's NLL is scaled by ``S * w_s`` (S sources with weight > 0), which
    scales its bits per byte exactly, in every bootstrap replicate too. Sources of weight 0 are left out."""
    from slimpipe.report.stats import RowLosses

    active = [s for s, w in weights.items() if w > 0]
    k = len(active)
    return RowLosses(seeds=list(seeds),
                     nll={s: np.stack([np.asarray(r[s]["nll"], dtype=np.float64) for r in runs]) * (k * weights[s])
                          for s in active},
                     bytes={s: np.asarray(runs[0][s]["bytes"]) for s in active})
