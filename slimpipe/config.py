"""Where presets live: ``slimpipe/conf/{dedup,mixes,models}/*.yaml`` (also reachable as ``conf/`` at the
top of a checkout), shipped inside the package so a wheel install has them too. ``$SLIMPIPE_CONF``
points at another tree of the same shape, for a team's own presets.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGED_CONF = Path(__file__).resolve().parent / "conf"


def conf_dir(kind: str) -> Path:
    """The folder of one kind of preset (``dedup``, ``mixes``, ``models``): ``$SLIMPIPE_CONF/<kind>`` if set
    and present, else the packaged one."""
    override = os.environ.get("SLIMPIPE_CONF")
    if override and (Path(override) / kind).is_dir():
        return Path(override) / kind
    return PACKAGED_CONF / kind
