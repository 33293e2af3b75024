"""The embedded sample corpus: ``slimpipe sample -o DIR``.

A RedPajama-1T-Sample-shaped corpus (all seven sources, eight files) built in seconds from real text
that every Python installation carries, with planted duplicates and a ground-truth file naming each
one, so dedup can be tested and demonstrated without any download. See ``docs/sample.md``.
"""

from __future__ import annotations

from .build import FILES, GROUND_TRUTH, MANIFEST, write_sample
from .command import sample_command

# files next to the data that are not RedPajama records (folder readers should skip them)
SIDECARS: tuple[str, ...] = (GROUND_TRUTH, MANIFEST)

__all__ = ["FILES", "GROUND_TRUTH", "MANIFEST", "SIDECARS", "sample_command", "write_sample"]
