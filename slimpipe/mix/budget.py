"""Token budgets of a mix: per-source targets, epochs (upsampling), per-shard quotas, realised shares.

Pure functions over plain numbers, so the arithmetic that decides what a model is trained on tests in
microseconds and reads top to bottom; :mod:`slimpipe.mix.build` only feeds them counts.

Unit: a document *costs* its tokens plus one EOS (the separator the packer writes after it), because
that is what the trainer consumes as targets. "Tokens" below always means that cost, so targets,
availability and realised counts add up to the packed stream exactly.

Rules: the requested total is split by the mix's shares with largest-remainder rounding (integers that
sum exactly to the total). A source whose target exceeds what it has is *repeated*: ``full_epochs``
whole passes over every document plus a ``remainder`` drawn from one more, partial pass. Nothing is
ever silently shrunk.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from slimpipe.units import parse_count

TOLERANCE_PP = 0.5  # realised shares must be within this many percentage points of the mix's shares


class BudgetError(ValueError):
    """A budget that cannot be met at all (e.g. a source with a positive share has no documents)."""


def parse_token_count(value: str | int | float) -> int:
    """``330B``, ``5M``, ``2.5k``, ``1e6``, ``1_000_000`` -> an int; zero, negative and fractional counts fail
    (:func:`slimpipe.units.parse_count`, the one count parser of every command)."""
    return parse_count(value, what="token count")


def apportion(total: int, weights: Sequence[float]) -> list[int]:
    """Split ``total`` into integers proportional to ``weights`` that sum exactly to ``total``.

    Largest-remainder (Hamilton) rounding; ties go to the earlier index, so the result is deterministic.
    With integer weights and ``total <= sum(weights)`` no part exceeds its weight.
    """
    if total < 0:
        raise ValueError("total must be non-negative")
    w = [float(x) for x in weights]
    if any(x < 0 for x in w):
        raise ValueError("weights must be non-negative")
    wsum = math.fsum(w)
    if total == 0 or not w:
        return [0] * len(w)
    if wsum <= 0:
        raise ValueError("cannot apportion a positive total over all-zero weights")
    if all(float(x).is_integer() for x in w) and wsum < 2**53:
        # exact integer arithmetic: total * w_i // W and the remainders, no float rounding at 10^11 tokens
        iw = [int(x) for x in w]
        iws = sum(iw)
        base = [total * x // iws for x in iw]
        rema = [total * x % iws for x in iw]
    else:
        exact = [total * x / wsum for x in w]
        base = [math.floor(e) for e in exact]
        rema = [e - b for e, b in zip(exact, base, strict=True)]
    left = total - sum(base)
    order = sorted(range(len(w)), key=lambda i: (-rema[i], i))
    for i in order[:left]:
        base[i] += 1
    return base


def source_targets(total: int, shares: Mapping[str, float]) -> dict[str, int]:
    """Tokens per source for a total budget (sums exactly to ``total``; zero-share sources get 0)."""
    names = list(shares)
    return dict(zip(names, apportion(total, [shares[n] for n in names]), strict=True))


@dataclass(frozen=True)
class SourcePlan:
    """How one source meets its target: ``full_epochs`` passes over all of it plus ``remainder`` tokens."""

    source: str
    share: float
    target: int
    available: int
    full_epochs: int
    remainder: int

    @property
    def epochs(self) -> float:
        """Passes over the source's data (1.5 = every document once, half of them twice)."""
        return self.target / self.available if self.available else 0.0

    @property
    def upsampled(self) -> bool:
        return self.target > self.available

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(epochs=self.epochs, upsampled=self.upsampled,
                 partial_epoch=self.remainder / self.available if self.available else 0.0)
        return d


def plan_sources(shares: Mapping[str, float], available: Mapping[str, int], total: int) -> dict[str, SourcePlan]:
    """Per-source targets and epochs for ``total`` tokens, given tokens available per source.

    Raises :class:`BudgetError` naming the source when a positive share meets no data at all (nothing to
    repeat). ``remainder`` is always ``< available`` unless the target fits in one pass exactly.
    """
    if total <= 0:
        raise BudgetError("the token budget must be positive")
    targets = source_targets(total, shares)
    plans: dict[str, SourcePlan] = {}
    missing = [s for s, t in targets.items() if shares[s] > 0 and available.get(s, 0) <= 0]
    if missing:
        raise BudgetError("the mix needs " + ", ".join(f"{s} ({shares[s]:.1%})" for s in missing)
                          + " but the input has no documents of " + ("it" if len(missing) == 1 else "them"))
    for s, target in targets.items():
        avail = int(available.get(s, 0))
        if target <= avail:
            full, rem = 0, target
        else:
            full, rem = divmod(target, avail)
        plans[s] = SourcePlan(source=s, share=float(shares[s]), target=int(target), available=avail,
                              full_epochs=int(full), remainder=int(rem))
    return plans


def minimal_prefix(per_shard: Sequence[Mapping[str, int]], targets: Mapping[str, int]) -> int | None:
    """Smallest ``k`` such that shards ``[0, k)`` hold at least every source's target, else ``None``.

    Shards are taken in a seeded order, so a prefix is a random sample of the data; the answer depends
    only on the counts, never on which tokenization task finished first.
    """
    need = {s: t for s, t in targets.items() if t > 0}
    if not need:
        return 0
    have = dict.fromkeys(need, 0)
    for k, counts in enumerate(per_shard, start=1):
        for s in need:
            have[s] += int(counts.get(s, 0))
        if all(have[s] >= need[s] for s in need):
            return k
    return None


def shard_quotas(plans: Mapping[str, SourcePlan], per_shard: Sequence[Mapping[str, int]]) -> list[dict[str, int]]:
    """Each shard's share of each source's ``remainder``, proportional to what the shard holds.

    Sums exactly to the remainder and never exceeds a shard's own tokens, so every shard contributes the
    same fraction of its documents (a uniform sample, whatever the shard sizes).
    """
    quotas: list[dict[str, int]] = [{} for _ in per_shard]
    for s, plan in plans.items():
        if plan.remainder <= 0:
            continue
        parts = apportion(plan.remainder, [int(c.get(s, 0)) for c in per_shard])
        for q, part in zip(quotas, parts, strict=True):
            if part:
                q[s] = part
    return quotas


def select_documents(costs: np.ndarray, order: np.ndarray, quota: int) -> tuple[np.ndarray, int]:
    """Walk documents in ``order`` and take whole ones while their costs fit in ``quota``.

    Returns the taken indices and the cost of one *truncated* piece of the next document that fills the
    quota exactly (0 if none is needed, or if only 1 token would be left: a piece needs a token and its
    EOS). ``costs`` are tokens + 1 per document.
    """
    if quota <= 0 or order.size == 0:
        return order[:0], 0
    ordered = np.asarray(costs, dtype=np.int64)[order]
    cum = np.cumsum(ordered)
    n = int(np.searchsorted(cum, quota, side="right"))
    taken = order[:n]
    left = quota - (int(cum[n - 1]) if n else 0)
    piece = left if (n < order.size and left >= 2) else 0
    return taken, piece


def realised_shares(tokens: Mapping[str, int]) -> dict[str, float]:
    """Fraction of all packed tokens that came from each source."""
    total = sum(int(v) for v in tokens.values())
    return {s: (int(v) / total if total else 0.0) for s, v in tokens.items()}


def share_errors_pp(target: Mapping[str, float], realised: Mapping[str, float]) -> dict[str, float]:
    """Realised minus target share, in percentage points, per source."""
    return {s: 100.0 * (realised.get(s, 0.0) - target.get(s, 0.0)) for s in target}


def within_tolerance(target: Mapping[str, float], realised: Mapping[str, float],
                     tolerance_pp: float = TOLERANCE_PP) -> bool:
    return all(abs(e) <= tolerance_pp for e in share_errors_pp(target, realised).values())


def attribute_dropped(sources: Sequence[str], costs: Sequence[int], dropped: int) -> dict[str, int]:
    """Tokens to take back per source when the packer drops ``dropped`` tail tokens.

    ``sources``/``costs`` describe the last documents written, oldest first; the tail is removed from the
    newest backwards, so realised counts describe exactly the tokens that were packed.
    """
    out: dict[str, int] = {}
    left = int(dropped)
    for s, c in zip(reversed(sources), reversed(costs), strict=True):
        if left <= 0:
            break
        take = min(left, int(c))
        out[s] = out.get(s, 0) + take
        left -= take
    if left > 0:
        raise ValueError(f"{dropped} dropped tokens exceed the documents given")
    return out


def estimate_available(prefix_tokens: int, prefix_units: int, total_units: int) -> int:
    """Scale tokens seen on a prefix of shards to the whole input by a cheaper unit (words, bytes)."""
    if prefix_units <= 0:
        return prefix_tokens
    return int(round(prefix_tokens * (total_units / prefix_units)))
