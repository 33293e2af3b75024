"""Dedup parameters: one frozen dataclass, named YAML presets, and the LSH band/row choice.

Presets live in ``conf/dedup/<name>.yaml``: ``slimpajama`` is SlimPajama's exact definition (char
13-grams, 128 permutations, J >= 0.8 with 9 bands x 13 rows, global); ``recall`` keeps the definition but
bands for P(candidate | J=0.8) >= 0.99 and verifies candidates with the exact Jaccard.

:func:`optimal_bands_rows` picks (bands, rows) the way datasketch's ``MinHashLSH`` does (minimise the
weighted areas under the S-curve left and right of the threshold), with our own numpy integration so
scipy is not a dependency, plus an optional recall floor at the threshold.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DedupParams",
    "UNITS",
    "MODES",
    "KEEP_POLICIES",
    "HASHES",
    "conf_dir",
    "load_preset",
    "optimal_bands_rows",
    "detection_probability",
]

UNITS = ("char", "word")
MODES = ("global", "local")
KEEP_POLICIES = ("smallest-id", "source-priority", "longest")
#: Signature schemes (see :mod:`slimpipe.dedup.minhash`). Signatures of different schemes or seeds must
#: never be banded together, so the name is part of the parameters and of any resume fingerprint.
HASHES = ("poly64",)

#: The recall floor at the threshold that ``--verify`` bands for when it derives bands x rows.
VERIFY_RECALL = 0.99

# Points of the trapezoid rule on each side of the threshold. The S-curve is smooth, so 1,001 points give
# errors around 1e-7, far below the gaps between neighbouring (b, r) candidates: the choice equals
# datasketch's (scipy quad) on 231 (threshold, num_perm, weights) combinations from 0.3 to 0.98.
_GRID = 1001


def detection_probability(similarity: float | np.ndarray, bands: int, rows: int) -> float | np.ndarray:
    """P(a pair with Jaccard ``similarity`` shares at least one band) = 1 - (1 - s^r)^b."""
    s = np.asarray(similarity, dtype=np.float64)
    p = 1.0 - (1.0 - s**rows) ** bands
    return float(p) if p.ndim == 0 else p


@lru_cache(maxsize=256)
def optimal_bands_rows(
    threshold: float,
    num_perm: int,
    fp_weight: float = 0.5,
    fn_weight: float = 0.5,
    min_recall: float | None = None,
) -> tuple[int, int]:
    """(bands, rows) with bands*rows <= num_perm minimising the weighted S-curve error around ``threshold``.

    Error = fp_weight * integral_0^t P(s) ds + fn_weight * integral_t^1 (1 - P(s)) ds, as in datasketch
    (``MinHashLSH._optimal_param``); for (0.8, 128) this gives SlimPajama's (9, 13). With ``min_recall``
    only (b, r) with P(threshold) >= min_recall are allowed and the false-positive area alone is minimised
    (the false negatives are already bounded by the floor); ties go to fewer permutations used.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    if num_perm < 1:
        raise ValueError(f"num_perm must be >= 1, got {num_perm}")
    s_lo = np.linspace(0.0, threshold, _GRID)
    s_hi = np.linspace(threshold, 1.0, _GRID)
    b_all, r_all, fp_all, fn_all = [], [], [], []
    with np.errstate(divide="ignore"):  # log1p(-1) = -inf at s = 1 is exact: (1 - 1)^b = 0
        for r in range(1, num_perm + 1):
            b = np.arange(1, num_perm // r + 1, dtype=np.float64)[:, None]
            # (1 - s^r)^b = exp(b * log1p(-s^r)): one log per r, one exp per (b, s).
            miss_lo = np.exp(b * np.log1p(-(s_lo**r))[None, :])
            miss_hi = np.exp(b * np.log1p(-(s_hi**r))[None, :])
            fp_all.append(np.trapezoid(1.0 - miss_lo, s_lo, axis=1))
            fn_all.append(np.trapezoid(miss_hi, s_hi, axis=1))
            b_all.append(b[:, 0])
            r_all.append(np.full(b.shape[0], float(r)))
    bands = np.concatenate(b_all)[:, None]
    rows = np.concatenate(r_all)[:, None]
    fp = np.concatenate(fp_all)
    fn = np.concatenate(fn_all)
    if min_recall is None:
        err = fp_weight * fp + fn_weight * fn
    else:
        if not 0.0 < min_recall < 1.0:
            raise ValueError(f"min_recall must be in (0, 1), got {min_recall}")
        recall = 1.0 - (1.0 - threshold ** rows[:, 0]) ** bands[:, 0]
        err = np.where(recall >= min_recall, fp, np.inf)
        if not np.isfinite(err).any():
            raise ValueError(
                f"no bands x rows <= {num_perm} reaches recall {min_recall} at J={threshold}; raise num_perm"
            )
    # Lexicographic: smallest error, then fewest permutations used, then fewest bands.
    used = (bands * rows)[:, 0]
    order = np.lexsort((bands[:, 0], used, np.round(err, 12)))
    best = order[0]
    return int(bands[best, 0]), int(rows[best, 0])


@dataclass(frozen=True)
class DedupParams:
    """Everything that defines a near-duplicate: text preparation, shingling, signature, LSH, scope, policy.

    Frozen so a job's parameters cannot drift between stages; change them with :meth:`with_overrides`.
    """

    name: str = "custom"
    unit: str = "char"  # shingle unit: "char" n-grams of the cleaned text, or "word" n-grams (space split)
    ngram: int = 13
    num_perm: int = 128
    threshold: float = 0.8
    bands: int = 9
    rows: int = 13
    min_chars: int = 200  # cleaned texts shorter than this are dropped as short, never signed
    seed: int = 1
    hash: str = "poly64"
    mode: str = "global"  # "global": within and across sources; "local": cross-source edges dropped
    keep: str = "smallest-id"
    source_priority: tuple[str, ...] = field(default_factory=tuple)  # for keep="source-priority"
    verify: bool = False  # check candidate pairs with the exact Jaccard before linking them
    # with verify: a removed document must be >= threshold similar to the document kept in its stead
    # (connected components chain A ~ B ~ C; see slimpipe.dedup.keep.check_clusters)
    cluster_check: bool = True
    fp_weight: float = 0.5
    fn_weight: float = 0.5
    min_recall: float | None = None  # floor on P(candidate | J=threshold) when bands/rows are re-derived

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise ValueError(f"unit must be one of {UNITS}, got {self.unit!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.keep not in KEEP_POLICIES:
            raise ValueError(f"keep must be one of {KEEP_POLICIES}, got {self.keep!r}")
        if self.hash not in HASHES:
            raise ValueError(f"hash must be one of {HASHES}, got {self.hash!r}")
        if self.ngram < 1 or self.num_perm < 1 or self.bands < 1 or self.rows < 1:
            raise ValueError("ngram, num_perm, bands and rows must all be >= 1")
        if self.bands * self.rows > self.num_perm:
            raise ValueError(
                f"bands x rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}"
            )
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        if self.min_chars < 0:
            raise ValueError("min_chars must be >= 0")
        if not 0 <= self.seed < 2**64:
            raise ValueError("seed must fit in 64 bits")
        if not isinstance(self.source_priority, tuple):
            object.__setattr__(self, "source_priority", tuple(self.source_priority))

    # ------------------------------------------------------------------ derived values
    @property
    def recall_at_threshold(self) -> float:
        """P(a pair at exactly J = threshold becomes a candidate) with this banding."""
        return float(detection_probability(self.threshold, self.bands, self.rows))

    def to_dict(self) -> dict[str, Any]:
        """Plain data (for report.json and resume fingerprints)."""
        d = dataclasses.asdict(self)
        d["source_priority"] = list(self.source_priority)
        return d

    def with_overrides(self, **kw: Any) -> DedupParams:
        """A copy with some fields changed; ``None`` values are ignored (handy for CLI options).

        Changing ``threshold`` or ``num_perm`` without giving ``bands``/``rows`` re-derives both with
        :func:`optimal_bands_rows` (same weights and recall floor as this preset), because the old banding
        was tuned for the old values. With ``verify`` on (in the preset or turned on here) that derivation
        keeps P(candidate | J = threshold) >= ``VERIFY_RECALL`` within ``num_perm`` (the signature budget),
        unless the preset sets its own ``min_recall``. Giving only one of ``bands``/``rows`` fills the
        other as ``num_perm // given``.
        """
        kw = {k: v for k, v in kw.items() if v is not None}
        unknown = set(kw) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise TypeError(f"unknown dedup parameters: {sorted(unknown)}")
        if "source_priority" in kw:
            kw["source_priority"] = tuple(kw["source_priority"])
        new = {**dataclasses.asdict(self), **kw}
        new["source_priority"] = tuple(new["source_priority"])
        has_b, has_r = "bands" in kw, "rows" in kw
        turned_on = bool(kw.get("verify")) and not self.verify
        if new["verify"] and new["min_recall"] is None and (turned_on or "threshold" in kw or "num_perm" in kw):
            # Verified candidates cost only verification time, never a wrong removal: band for recall
            # (P(candidate | J = threshold) >= VERIFY_RECALL) instead of the balanced S-curve error.
            new["min_recall"] = VERIFY_RECALL
        if not has_b and not has_r:
            if "threshold" in kw or "num_perm" in kw or "min_recall" in kw or turned_on:
                new["bands"], new["rows"] = optimal_bands_rows(
                    float(new["threshold"]),
                    int(new["num_perm"]),
                    float(new["fp_weight"]),
                    float(new["fn_weight"]),
                    new["min_recall"],
                )
        elif has_b and not has_r:
            new["rows"] = int(new["num_perm"]) // int(new["bands"])
        elif has_r and not has_b:
            new["bands"] = int(new["num_perm"]) // int(new["rows"])
        return DedupParams(**new)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DedupParams:
        """Build from plain data (a preset file); unknown keys are an error so typos do not pass silently."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown dedup parameters: {sorted(unknown)}")
        data = dict(data)
        if "source_priority" in data:
            data["source_priority"] = tuple(data["source_priority"] or ())
        return cls(**data)


def conf_dir() -> Path:
    """The ``conf/`` tree whose ``dedup/`` holds the presets (see :mod:`slimpipe.config`)."""
    from slimpipe.config import conf_dir as kind_dir

    return kind_dir("dedup").parent


def _read_yaml(text: str) -> dict[str, Any]:
    import yaml

    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError("a dedup preset must be a YAML mapping")
    return data


def load_preset(name_or_path: str | Path = "slimpajama") -> DedupParams:
    """Load a preset by name (``slimpajama``, ``recall``) or from a YAML file path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"dedup preset file not found: {path}")
        data = _read_yaml(path.read_text(encoding="utf-8"))
        data.setdefault("name", path.stem)
        return DedupParams.from_dict(data)

    name = str(name_or_path)
    candidate = conf_dir() / "dedup" / f"{name}.yaml"
    if not candidate.is_file():
        available = sorted(p.stem for p in (conf_dir() / "dedup").glob("*.yaml"))
        raise FileNotFoundError(f"unknown dedup preset {name!r}; available: {available}")
    data = _read_yaml(candidate.read_text(encoding="utf-8"))
    data.setdefault("name", name)
    return DedupParams.from_dict(data)
