"""The ranges of numeric command-line options, in one place (click parameter types).

A value out of range is a click usage error: one line naming the option and its range, exit code 2,
before any work (no input listed, no OUT claimed, no Ray started). Every numeric option of ``dedup``,
``slimpajama``, ``evalset`` and ``mix`` uses one of these (tests/test_option_validation.py checks that
none is a bare ``int`` or ``float``).
"""

from __future__ import annotations

import math

import click


class FiniteFloatRange(click.FloatRange):
    """A float range that also refuses ``nan`` and ``inf`` (which compare false with any bound)."""

    def convert(self, value, param, ctx) -> float:
        out = super().convert(value, param, ctx)
        if not math.isfinite(out):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return out


#: A count of things that must exist: permutations, bands, rows, partitions, chunks, records...
POSITIVE_INT = click.IntRange(min=1)
#: A floor or cap where 0 means "none": --min-chars, --max-edges-in-memory.
NON_NEGATIVE_INT = click.IntRange(min=0)
#: A seed: xxhash and numpy take 0 .. 2**64 - 1.
SEED = click.IntRange(min=0, max=2**64 - 1)
#: A Jaccard threshold or a share that can be neither 0 nor 1.
OPEN_FRACTION = FiniteFloatRange(min=0.0, max=1.0, min_open=True, max_open=True)
#: A share that may be 0 but not 1 (--holdout-fraction 0: no holdout).
FRACTION_BELOW_ONE = FiniteFloatRange(min=0.0, max=1.0, max_open=True)


def megabytes(min_mb: float = 1 / 1024) -> FiniteFloatRange:
    """A size in MiB, at least ``min_mb`` (1 KiB by default: a size of 0 bytes would divide by zero)."""
    return FiniteFloatRange(min=min_mb)
