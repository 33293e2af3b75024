"""Counts written by people: ``330B``, ``5M``, ``2.5k``, ``1e6``, ``1_000_000``, ``1,000``.

The one parser (and its inverse) for token, byte, step and sequence counts on every command line and in
every config file (``slimpipe mix --tokens``, ``slimpipe train --tokens``, a phases file's ``tokens:``,
``extend-tokenizer --max-bytes``...). Decimal suffixes, case-insensitive: k = 10^3, M = 10^6, B = G = 10^9,
T = 10^12. A count is a positive whole number: zero, negative, fractional and non-finite values fail with
a ``ValueError`` naming the value. Pure Python: no click, no torch (library code and commands both use it).
"""

from __future__ import annotations

import math
import re

SUFFIXES = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}
_COUNT = re.compile(r"([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMbBgGtT]?)")


def parse_count(value: str | int | float, *, allow_zero: bool = False, what: str = "count") -> int:
    """``330B``, ``5M``, ``2.5k``, ``1e6``, ``1_000_000``, ``1,000`` (or an int) -> an int.

    Zero is refused unless ``allow_zero``; negative, fractional (``1.5``) and non-finite counts always are.
    ``what`` names the quantity in the error (``"token count"``).
    """
    if isinstance(value, bool):
        raise ValueError(f"not a {what}: {value!r}")
    if isinstance(value, (int, float)):
        number = float(value)
    else:
        s = str(value).strip().replace("_", "").replace(",", "")
        m = _COUNT.fullmatch(s)
        if not m:
            raise ValueError(f"not a {what}: {value!r} (examples: 330B, 5M, 2.5k, 1e6)")
        number = float(m.group(1)) * SUFFIXES[m.group(2).upper()]
    if not math.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
        raise ValueError(f"{what} must be positive, got {value!r}")
    count = round(number)
    if abs(count - number) > 1e-6 * max(1.0, number):
        raise ValueError(f"{what} must be a whole number, got {value!r}")
    return int(count)


def format_count(n: int) -> str:
    """An exact spelling :func:`parse_count` reads back: 330000000000 -> ``330B``, 2500 -> ``2.5k``,
    131072 -> ``131072`` (never rounded; digits when a suffix is not shorter)."""
    n = int(n)
    for suffix, unit in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("k", 10**3)):
        if n >= unit:
            text = f"{n / unit:.6g}"
            if "e" not in text and len(text) + 1 <= len(str(n)) and parse_count(text + suffix) == n:
                return text + suffix
    return str(n)
