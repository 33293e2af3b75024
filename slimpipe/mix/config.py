"""Mix definitions: how much of each source a training mix draws, by name (``dc1`` ... ``dc6``,
``redpajama``), from a YAML file, or inline (``"common_crawl=3,github=1"``).

A mix file is plain data, so an experiment's proportions can be read, diffed and cited::

    name: my-mix
    description: "CommonCrawl and code, 3:1"
    weights: {common_crawl: 3, github: 1}

Weights are relative (percentages, counts, anything non-negative); they are normalised to shares that
sum to 1. Source names go through :func:`slimpipe.sources.normalise_source`, so ``cc``, ``CommonCrawl``
and ``RedPajamaCommonCrawl`` all mean ``common_crawl``; any other name (``arabic_web``, ``starcoder``) is
a source of its own, which the input must hold. Mistakes are errors, never silently fixed: a name that
cannot be a source, a negative or non-numeric weight, all-zero weights, a source named twice, unknown keys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from slimpipe.config import conf_dir
from slimpipe.sources import SOURCES, normalise_source

PRESET_NAMES: tuple[str, ...] = ("dc1", "dc2", "dc3", "dc4", "dc5", "dc6", "redpajama")
_KEYS = {"name", "description", "weights", "reference", "prediction"}  # prediction: written by `slimpipe propose`, informative only


class MixConfigError(ValueError):
    """A mix definition that cannot be used (bad name, source, weight or file)."""


@dataclass(frozen=True)
class MixConfig:
    """A named set of source weights; ``shares`` are the weights normalised to sum to 1.

    ``weights`` keeps the numbers as written (the paper's percentages for the presets) so a manifest can
    show both what was asked and what it means. Both dicts list RedPajama's seven sources in canonical
    order (0 when unnamed), then any other named source alphabetically.
    """

    name: str
    weights: dict[str, float]
    description: str = ""
    path: str | None = None
    shares: dict[str, float] = field(init=False)

    def __post_init__(self) -> None:
        weights = _validate_weights(self.weights, self.name)
        total = math.fsum(weights.values())
        object.__setattr__(self, "weights", weights)
        object.__setattr__(self, "shares", {s: w / total for s, w in weights.items()})

    @property
    def active_sources(self) -> list[str]:
        """Sources with a positive share, in canonical order: the ones a build must read and tokenize."""
        return [s for s in self.shares if self.shares[s] > 0]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "path": self.path,
                "weights": dict(self.weights), "shares": dict(self.shares)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], default_name: str = "custom", path: str | None = None) -> MixConfig:
        """Build from parsed YAML; unknown keys are errors so a typo (``weigths``) cannot pass silently."""
        if not isinstance(data, dict):
            raise MixConfigError(f"{path or default_name}: a mix must be a mapping with a `weights:` mapping")
        unknown = set(data) - _KEYS
        if unknown:
            raise MixConfigError(f"{path or default_name}: unknown keys {sorted(unknown)} (allowed: {sorted(_KEYS)})")
        if "weights" not in data:
            raise MixConfigError(f"{path or default_name}: no `weights:` mapping")
        name = str(data.get("name") or default_name)
        return cls(name=name, weights=data["weights"], description=str(data.get("description") or ""), path=path)


def _validate_weights(raw: Any, name: str) -> dict[str, float]:
    """Source -> float weight: the seven (0 when unnamed), then other named sources; raises
    :class:`MixConfigError` on any mistake."""
    if not isinstance(raw, dict) or not raw:
        raise MixConfigError(f"mix {name!r}: `weights` must be a non-empty mapping of source -> weight")
    out = dict.fromkeys(SOURCES, 0.0)
    seen: dict[str, str] = {}
    for key, value in raw.items():
        source = normalise_source(str(key))
        if source is None:
            raise MixConfigError(f"mix {name!r}: {key!r} is not a source name (letters, digits, _ - . ; "
                                 f"RedPajama's are {', '.join(SOURCES)})")
        if source in seen:
            raise MixConfigError(f"mix {name!r}: source {source!r} given twice (as {seen[source]!r} and {key!r})")
        seen[source] = str(key)
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise MixConfigError(f"mix {name!r}: weight of {key!r} must be a number, got {value!r}")
        try:
            weight = float(value)
        except ValueError:
            raise MixConfigError(f"mix {name!r}: weight of {key!r} must be a number, got {value!r}") from None
        if not math.isfinite(weight):
            raise MixConfigError(f"mix {name!r}: weight of {key!r} must be finite, got {value!r}")
        if weight < 0:
            raise MixConfigError(f"mix {name!r}: weight of {key!r} is negative ({weight})")
        out[source] = weight
    out = {**{s: out[s] for s in SOURCES}, **{s: out[s] for s in sorted(set(out) - set(SOURCES))}}
    if math.fsum(out.values()) <= 0:
        raise MixConfigError(f"mix {name!r}: all weights are zero; at least one source needs a positive weight")
    return out


def mixes_dir() -> Path:
    """The mix presets' folder (``slimpipe/conf/mixes``, or ``$SLIMPIPE_CONF/mixes``)."""
    return conf_dir("mixes")


def available_mixes() -> list[str]:
    """Names of the mix presets found in :func:`mixes_dir`."""
    try:
        return sorted(p.stem for p in mixes_dir().glob("*.yaml"))
    except FileNotFoundError:
        return []


def parse_inline(spec: str, name: str = "custom") -> MixConfig:
    """``"common_crawl=3, github=1"`` -> a custom mix (handy on the command line)."""
    weights: dict[str, str] = {}
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise MixConfigError(f"inline mix {spec!r}: expected SOURCE=WEIGHT pairs separated by commas")
        if key.strip() in weights:
            raise MixConfigError(f"inline mix {spec!r}: source {key.strip()!r} given twice")
        weights[key.strip()] = value.strip()
    return MixConfig(name=name, weights=weights, description=f"inline: {spec}")


def load_yaml_file(path: str | Path) -> MixConfig:
    p = Path(path)
    if not p.is_file():
        raise MixConfigError(f"mix file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise MixConfigError(f"{p}: not valid YAML: {exc}") from None
    return MixConfig.from_dict(data, default_name=p.stem, path=str(p))


def load_mix(spec: str | Path) -> MixConfig:
    """A mix by preset name (``dc1`` ... ``dc6``, ``redpajama``, also ``DC-6``), YAML path, or inline weights."""
    s = str(spec).strip()
    p = Path(s).expanduser()
    if p.suffix in (".yaml", ".yml") or p.is_file():
        return load_yaml_file(p)
    if "=" in s:
        return parse_inline(s)
    key = s.lower().replace("-", "").replace("_", "")
    try:
        candidate = mixes_dir() / f"{key}.yaml"
    except FileNotFoundError as exc:
        raise MixConfigError(str(exc)) from None
    if candidate.is_file():
        return load_yaml_file(candidate)
    raise MixConfigError(f"unknown mix {s!r}: use one of {', '.join(available_mixes())}, a FILE.yaml, "
                         f"or inline weights like 'common_crawl=3,github=1'")
