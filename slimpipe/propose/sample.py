"""Draw candidate mixtures for proxy runs: Dirichlet around the natural shares, bounded by repetition.

RegMix and Olmix both sample their proxy mixtures from a Dirichlet whose mean is the corpus's natural
token distribution. The bound here is the one a user cares about at training time: no source may be
repeated more than ``max_epochs`` times what it has, i.e. ``share_s * tokens <= max_epochs * available_s``.
A draw that breaks a bound is rejected (never clipped, which would pile mass on the bounds); the
mixtures a user passes as "must include" (DC-6, the natural mix) come first.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np


class ProposalError(ValueError):
    """A proposal request the data cannot support (one line, said before any training)."""


def natural_shares(available: Mapping[str, int]) -> dict[str, float]:
    """Each source's share of all available tokens (the corpus as it is)."""
    total = sum(available.values())
    if total <= 0:
        raise ProposalError("no tokens available in any source")
    return {s: n / total for s, n in available.items()}


def upper_bounds(available: Mapping[str, int], tokens: int, max_epochs: float) -> dict[str, float]:
    """The largest share each source may take of a ``tokens`` budget without exceeding ``max_epochs``."""
    return {s: min(1.0, max_epochs * n / tokens) if tokens > 0 else 1.0 for s, n in available.items()}


def check_feasible(available: Mapping[str, int], tokens: int, max_epochs: float) -> None:
    """Raise (naming the sources) when the budget cannot be met within the repetition bound at all."""
    bounds = upper_bounds(available, tokens, max_epochs)
    if math.fsum(bounds.values()) < 1.0 - 1e-9:
        short = sorted(available, key=lambda s: available[s])
        raise ProposalError(
            f"{tokens:,} tokens cannot be drawn with at most {max_epochs:g} epochs of any source: the sources "
            f"hold {sum(available.values()):,} tokens in all (" + ", ".join(f"{s} {available[s]:,}" for s in short)
            + "); lower --tokens or raise --max-epochs")


def within_bounds(shares: Mapping[str, float], bounds: Mapping[str, float], tol: float = 1e-9) -> bool:
    return all(shares[s] <= bounds[s] + tol for s in shares)


def draw_mixtures(available: Mapping[str, int], tokens: int, k: int, *, max_epochs: float = 4.0,
                  concentration: float = 1.0, seed: int = 0, include: Sequence[Mapping[str, float]] = (),
                  max_tries: int = 200_000) -> list[dict[str, float]]:
    """``k`` mixtures (dicts source -> share summing to 1), the ``include`` ones first, the rest Dirichlet.

    The Dirichlet's mean is the natural shares and its total concentration ``concentration * S`` (S =
    number of sources): 1 spreads draws over the whole simplex as RegMix does, larger values stay near
    the natural mix. Draws breaking the epoch bound are rejected; if too few survive, the request is
    refused with the sources that make it impossible.
    """
    check_feasible(available, tokens, max_epochs)
    sources = list(available)
    bounds = upper_bounds(available, tokens, max_epochs)
    nat = natural_shares(available)
    out: list[dict[str, float]] = []
    for mix in include:
        total = math.fsum(mix.get(s, 0.0) for s in sources)
        shares = {s: mix.get(s, 0.0) / total for s in sources}
        if not within_bounds(shares, bounds):
            over = [s for s in sources if shares[s] > bounds[s] + 1e-9]
            raise ProposalError("a required mixture repeats " + ", ".join(
                f"{s} {shares[s] * tokens / max(available[s], 1):.1f} epochs" for s in over)
                + f" (bound {max_epochs:g}); lower --tokens or raise --max-epochs")
        out.append(shares)
    rng = np.random.default_rng(seed)
    alpha = np.array([max(nat[s], 1e-3) for s in sources]) * concentration * len(sources)
    bound_arr = np.array([bounds[s] for s in sources])
    tries = 0
    while len(out) < k:
        batch = rng.dirichlet(alpha, size=max(64, 4 * (k - len(out))))
        tries += batch.shape[0]
        ok = batch[(batch <= bound_arr + 1e-12).all(axis=1)]
        for row in ok[: k - len(out)]:
            out.append({s: float(v) for s, v in zip(sources, row, strict=True)})
        if tries > max_tries and len(out) < k:
            tight = [s for s in sources if bounds[s] < 0.5 * max(nat[s], 1e-3) * 2]
            raise ProposalError(
                f"only {len(out)} of {k} mixtures satisfy the {max_epochs:g}-epoch bound after {tries:,} draws; "
                "tightest sources: " + ", ".join(f"{s} (≤ {bounds[s]:.1%})" for s in tight or sources)
                + "; lower --tokens, raise --max-epochs or ask for fewer --proxies")
    return out[:k] if len(include) <= k else out
