"""``slimpipe propose --reuse PREV_OUT``: Olmix's *mixture reuse* when sources are added or changed.

The sources that did not change keep the ratios PREV_OUT proposed among them and become ONE composite
domain (:data:`COMPOSITE`); new proxies are drawn only over ``[composite, added and changed sources]`` and
the fitted optimum is expanded back to per-source weights (:meth:`ReusePlan.expand`). A smaller simplex
needs fewer proxies: the swarm is scaled by the number of dimensions, as Olmix scales it by domains
(:func:`reuse_swarm_size`).

What counts as *changed* (documented in docs/propose.md): a source whose train documents or train bytes,
as the SlimPajama ``index.json`` counts them, moved by more than ``tolerance`` (relative, default 1 %; 0
makes any difference a change). Those counts are exact and do not depend on how sources share shards.
Two alternatives were rejected: the files' hashes in ``manifest.json`` (a shard holds several sources,
so adding one source rewrites every shard and would mark every source changed) and the probe's
available tokens (an estimate extrapolated from the shards the probe reads: it moved by up to 6 % for
identical documents when a source was added). Only for a PREV_OUT without recorded counts are the tokens
compared. A source PREV_OUT did not have is *added*; one it had and the data no longer holds is
*removed* (it gets no weight).

A PREV_OUT proxy is reused instead of retrained only when its mixture lies in the new space (0 on every
added, changed or removed source, and the unchanged sources in the composite's ratios: in practice the
previous proposal's own proxy, which a reuse run always trains) and it was scored on the same evaluation
set: the same ``eval_set`` hash in its ``metrics.json`` and byte-identical packed evaluation sequences for
every source the new run scores.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slimpipe.mix.packed_writer import TOKENIZER_DIR
from slimpipe.propose.sample import ProposalError

COMPOSITE = "@previous"  # the composite domain's name among the draw dimensions
NOTHING_TO_DO = "nothing to do; PREV_OUT's proposal stands"
# options that must match for PREV_OUT's ratios and proxies to mean the same thing in this run
SAME_OPTIONS = ("model", "tokens", "tokenizer", "vocab_size", "seq_len")


@dataclass
class ReusePlan:
    prev_dir: Path
    prev: dict[str, Any]  # PREV_OUT/proposal.json
    sources: list[str]  # every source of this run, in order
    unchanged: list[str]
    added: list[str]
    changed: dict[str, str]  # source -> why
    removed: list[str]
    ratio: dict[str, float]  # PREV_OUT's proposed shares among the unchanged sources, summing to 1
    tolerance: float
    reused: list[dict[str, Any]] = field(default_factory=list)  # PREV_OUT proxies taken over

    @property
    def dims(self) -> list[str]:
        """The draw space: the composite, then every added or changed source."""
        return [COMPOSITE] + [s for s in self.sources if s in self.changed or s in self.added]

    def expand(self, d: Mapping[str, float]) -> dict[str, float]:
        """Per-source shares of a point of the draw space."""
        c = d.get(COMPOSITE, 0.0)
        return {s: c * self.ratio[s] if s in self.ratio else float(d.get(s, 0.0)) for s in self.sources}

    def project(self, shares: Mapping[str, float], tol: float = 1e-6) -> dict[str, float] | None:
        """The draw-space point of per-source ``shares`` (over any sources), or None when it is not one."""
        total = math.fsum(shares.values())
        if total <= 0:
            return None
        sh = {s: v / total for s, v in shares.items()}
        if any(v > tol for s, v in sh.items() if s not in self.ratio and s not in self.dims):
            return None  # weight on a removed source
        c = math.fsum(sh.get(s, 0.0) for s in self.unchanged)
        if any(abs(sh.get(s, 0.0) - c * self.ratio[s]) > tol for s in self.unchanged):
            return None
        point = {COMPOSITE: c} | {s: sh.get(s, 0.0) for s in self.dims[1:]}
        return point if math.isclose(math.fsum(point.values()), 1.0, abs_tol=10 * tol) else None

    def dims_available(self, available: Mapping[str, int]) -> dict[str, int]:
        """Tokens per dimension: the composite holds as many tokens of its mixture as it can draw before
        its scarcest source (relative to its ratio) runs out, so the epoch bound carries over exactly."""
        comp = min(available[s] / self.ratio[s] for s in self.unchanged if self.ratio[s] > 0)
        return {COMPOSITE: int(comp)} | {s: int(available[s]) for s in self.dims[1:]}


def load_previous(prev_out: str | Path, out: str | Path, options: Mapping[str, Any]) -> tuple[Path, dict]:
    """PREV_OUT's proposal, after checking it is one and was made with the same proxies; one-line refusals."""
    prev_dir = Path(prev_out)
    pj = prev_dir / "proposal.json"
    try:
        prev = json.loads(pj.read_text())
        for key in ("sources", "shares", "available_tokens", "options", "proxies"):
            prev[key]  # noqa: B018 - presence check
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ProposalError(f"--reuse {prev_dir}: not a slimpipe propose output (no readable proposal.json: "
                            f"{type(exc).__name__})") from None
    if Path(out).resolve() == prev_dir.resolve():
        raise ProposalError(f"--reuse {prev_dir}: the output folder must differ from PREV_OUT")
    differ = [f"{k} {prev['options'].get(k)!r} there, {options[k]!r} here" for k in SAME_OPTIONS
              if prev["options"].get(k) != options[k] and not (k == "vocab_size" and options["tokenizer"] != "train")]
    if differ:
        raise ProposalError(f"--reuse {prev_dir}: its proxies differ from this run's (" + "; ".join(differ)
                            + "); reuse needs the same tokenizer, model, tokens and seq-len")
    if not (tokenizer_dir(prev_dir) / TOKENIZER_DIR).is_dir():
        raise ProposalError(f"--reuse {prev_dir}: its tokenizer ({tokenizer_dir(prev_dir) / TOKENIZER_DIR}) is missing")
    return prev_dir, prev


def tokenizer_dir(prev_dir: Path) -> Path:
    """The mix folder whose tokenizer every PREV_OUT proxy used (the probe); a reuse run tokenizes with it."""
    return prev_dir / "mixes" / "probe"


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1.0)


def plan_reuse(prev_dir: Path, prev: dict, sources: Sequence[str], available: Mapping[str, int] | None,
               stats: Mapping[str, Mapping[str, int]], tolerance: float) -> ReusePlan | None:
    """Which sources are unchanged, added, changed or removed; refuses when there is nothing to recompute.

    ``available=None`` (before the probe): decides from the index counts alone, and returns None without
    refusing when a source has no counts in PREV_OUT (then only the probe's tokens can tell)."""
    prev_avail: dict[str, int] = prev["available_tokens"]
    prev_stats: dict[str, dict] = prev.get("source_stats") or {}
    added = [s for s in sources if s not in prev_avail]
    removed = [s for s in prev["sources"] if s not in sources]
    changed: dict[str, str] = {}
    for s in sources:
        if s in added:
            continue
        now, then = stats.get(s) or {}, prev_stats.get(s) or {}
        if all(then.get(u) is not None and now.get(u) is not None for u in ("docs", "bytes")):
            for unit in ("docs", "bytes"):
                if _rel(now[unit], then[unit]) > tolerance:
                    changed[s] = f"train {unit} {then[unit]:,} → {now[unit]:,}"
                    break
        elif available is None:
            return None
        elif _rel(available[s], prev_avail[s]) > tolerance:  # no counts recorded: the probe's estimate
            changed[s] = f"available tokens {prev_avail[s]:,} → {available[s]:,}"
    unchanged = [s for s in sources if s not in added and s not in changed]
    if not added and not changed and not removed:
        raise ProposalError(f"{NOTHING_TO_DO} ({prev_dir / 'proposed.yaml'}): no source was added, removed or "
                            f"changed by more than {tolerance:.1%}")
    if not unchanged:
        raise ProposalError(f"--reuse {prev_dir}: every source was added or changed, so nothing can be reused; "
                            "run without --reuse")
    total = math.fsum(prev["shares"].get(s, 0.0) for s in unchanged)
    if total <= 0:
        raise ProposalError(f"--reuse {prev_dir}: its proposal gives the unchanged sources ({', '.join(unchanged)}) "
                            "no weight, so there is no mixture to reuse; run without --reuse")
    if not added and not changed:
        raise ProposalError(f"--reuse {prev_dir}: only removed sources ({', '.join(removed)}); PREV_OUT's proposal "
                            "renormalised over the rest needs no proxies (run without --reuse to refit)")
    ratio = {s: prev["shares"].get(s, 0.0) / total for s in unchanged}
    return ReusePlan(prev_dir, prev, list(sources), unchanged, added, changed, removed, ratio, tolerance)


def check_same_tokenizer(prev_dir: Path, probe: Mapping[str, Any], out: Path) -> None:
    """The probe must have tokenized with PREV_OUT's tokenizer (it would not if OUT held an older probe)."""
    try:
        theirs = json.loads((tokenizer_dir(prev_dir) / "manifest.json").read_text())["tokenizer"]["identity"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # PREV_OUT's probe has no manifest: its tokenizer folder, checked in load_previous, is all there is
    if probe.get("tokenizer", {}).get("identity") != theirs:
        raise ProposalError(f"{out / 'mixes' / 'probe'} was made with another tokenizer than {prev_dir}'s; "
                            "use a new output folder for --reuse")


def reuse_swarm_size(full: int, plan: ReusePlan) -> int:
    """Proxies for the reduced simplex: a full recompute's ``full`` scaled by dimensions (Olmix's swarm
    grows with the number of domains), never fewer than the 4 a fit needs."""
    return min(full, max(4, math.ceil(full * len(plan.dims) / len(plan.sources))))


def eval_fingerprints(mix_dir: Path) -> dict[str, str]:
    """Per source, a SHA-256 of the packed evaluation sequences a proxy of ``mix_dir`` is scored on (the
    token and byte files of ``eval/<source>``; the index is left out, it names the tokenizer's path)."""
    out: dict[str, str] = {}
    root = Path(mix_dir) / "eval"
    if not root.is_dir():
        return out
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        h = hashlib.sha256()
        for f in sorted(d.glob("*.bin")):
            h.update(f.name.encode() + b"\0")
            with open(f, "rb") as fh:
                for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                    h.update(block)
        out[d.name] = h.hexdigest()
    return out


def reusable_proxies(plan: ReusePlan, fingerprints: Mapping[str, str], eval_set: str | None
                     ) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """PREV_OUT proxies this run can take over, and (proxy, why not) for every other one."""
    taken: list[dict[str, Any]] = []
    why_not: list[tuple[str, str]] = []
    for px in plan.prev["proxies"]:
        name = px.get("name", "?")
        if not px.get("ok"):
            why_not.append((name, "failed in PREV_OUT"))
            continue
        point = plan.project(px.get("shares") or {})
        if point is None or any(point[d] > 1e-6 for d in plan.dims[1:]):
            why_not.append((name, "its mixture is not in the new space (only a mixture giving the unchanged sources "
                                  "the previous proposal's ratios, and nothing to the others, is)"))
            continue
        # where PREV_OUT recorded them (a proxy it reused lives in an older output), else in PREV_OUT
        run, mix = (Path(px[k]) if px.get(k) and Path(px[k]).is_dir() else plan.prev_dir / d / name
                    for k, d in (("run", "proxies"), ("mix", "mixes")))
        try:
            metrics = json.loads((run / "metrics.json").read_text())
        except (OSError, ValueError):
            why_not.append((name, f"no metrics.json in {run}"))
            continue
        if metrics.get("eval_set") != eval_set:
            why_not.append((name, f"scored on evaluation set {metrics.get('eval_set')}, this run on {eval_set}"))
            continue
        theirs = eval_fingerprints(mix)
        differ = [s for s in fingerprints if theirs.get(s) != fingerprints[s]]
        if differ:
            why_not.append((name, "different evaluation sequences for " + ", ".join(differ)))
            continue
        if taken:  # every reusable proxy is the same point (the composite alone): one is enough
            why_not.append((name, f"the same mixture as {taken[0]['name']}, already reused"))
            continue
        taken.append({"name": name, "point": point, "metrics": metrics, "run": str(run), "mix": str(mix)})
    return taken, why_not


def reuse_record(plan: ReusePlan, full: int, swarm: int, trained: int, why_not: list[tuple[str, str]]
                 ) -> dict[str, Any]:
    """What ``proposal.json["reuse"]`` says: what was reused and the compute saved."""
    return {
        "previous": str(plan.prev_dir), "criterion": (
            f"a source is changed when its train documents or bytes (index.json) moved by more than "
            f"{plan.tolerance:.1%}"),
        "unchanged": plan.unchanged, "added": plan.added, "changed": plan.changed, "removed": plan.removed,
        "composite_ratio": plan.ratio, "dims": plan.dims,
        "proxies_full_recompute": full, "proxies_in_swarm": swarm, "proxies_trained": trained,
        "proxies_reused": [{"name": r["name"], "run": r["run"]} for r in plan.reused],
        "proxies_not_reused": [{"proxy": n, "reason": r} for n, r in why_not],
        "compute_ratio": trained / full, "compute_saved": 1 - trained / full,
    }
