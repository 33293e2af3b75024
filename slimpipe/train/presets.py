"""Named model presets, kept as plain data in ``conf/models/*.yaml`` (litgpt-style: sizes in one place).

A preset has a ``model`` section (fields of :class:`~slimpipe.train.model.ModelConfig`) and a ``train``
section (sequence length, global batch in sequences, micro-batch, peak LR, warmup fraction, token budget,
schedule). ``--model`` accepts a preset name or a path to such a YAML file.

PyYAML is used when installed; without it (a bare GPU image running ``benchmarks/bench_gpu.py`` with
only torch) :func:`_mini_yaml` reads the subset the presets use: nested block mappings, ``{a: 1}`` flow
mappings and plain scalars.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from slimpipe.config import conf_dir
from slimpipe.train.model import ModelConfig

PRESET_NAMES = ("tiny", "111m", "256m", "590m", "1.3b")
TRAIN_KEYS = {"seq_len": int, "batch_size": int, "micro_batch": int, "lr": float, "warmup_fraction": float,
              "tokens": int, "schedule": str, "min_lr_ratio": float}


@dataclass
class Preset:
    name: str
    model: ModelConfig
    train: dict = field(default_factory=dict)
    published_params: int | None = None
    path: Path | None = None


def models_dir() -> Path:
    """The model presets' folder (``slimpipe/conf/models``, or ``$SLIMPIPE_CONF/models``)."""
    return conf_dir("models")


def available_presets() -> list[str]:
    return sorted(p.stem for p in models_dir().glob("*.yaml"))


def _scalar(text: str) -> object:
    t = text.strip()
    if len(t) >= 2 and t[0] == t[-1] and t[0] in "'\"":
        return t[1:-1]
    low = t.lower()
    if low in ("null", "~", ""):
        return None
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(t)
        except ValueError:
            pass
    return t


def _mini_yaml(text: str) -> dict:
    """Block mappings by indentation, one-line ``{k: v, ...}`` flow mappings, scalars; ``#`` comments."""
    root: dict = {}
    stack: list[tuple[int, dict]] = [(-1, root)]
    for raw in text.splitlines():
        line = raw.split(" #")[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        key, _, value = line.strip().partition(":")
        while stack[-1][0] >= indent:
            stack.pop()
        parent = stack[-1][1]
        value = value.strip()
        if not value:
            parent[key] = {}
            stack.append((indent, parent[key]))
        elif value.startswith("{") and value.endswith("}"):
            items = [kv.partition(":") for kv in value[1:-1].split(",") if kv.strip()]
            parent[key] = {k.strip(): _scalar(v) for k, _, v in items}
        else:
            parent[key] = _scalar(value)
    return root


def _load_yaml(text: str) -> dict:
    try:
        import yaml
    except ImportError:
        return _mini_yaml(text)
    return yaml.safe_load(text) or {}


def _number(v: object, kind: type) -> object:
    # YAML 1.1 reads "2.2e9" (no exponent sign) as a string; accept it anyway.
    if kind in (int, float) and isinstance(v, str):
        v = float(v)
    return kind(v) if v is not None else None


def load_preset(name_or_path: str | Path) -> Preset:
    """A preset by name (``tiny``, ``111m``, ...) or from a YAML file path."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        path = p
    else:
        path = models_dir() / f"{name_or_path}.yaml"
        if not path.is_file():
            raise ValueError(f"unknown model preset {str(name_or_path)!r}; available: {available_presets()}")
    data = _load_yaml(path.read_text())
    model_data = dict(data.get("model") or {})
    for key in ("vocab_size", "n_layer", "d_model", "n_head", "d_ff", "max_seq_len", "mup_base_width"):
        if key in model_data:
            model_data[key] = _number(model_data[key], int)
    unknown = set(model_data) - set(ModelConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(f"{path}: unknown model fields {sorted(unknown)}")
    train = {}
    for key, value in (data.get("train") or {}).items():
        if key not in TRAIN_KEYS:
            raise ValueError(f"{path}: unknown train field {key!r}")
        train[key] = _number(value, TRAIN_KEYS[key])
    published = data.get("published_params")
    return Preset(name=str(data.get("name", path.stem)), model=ModelConfig(**model_data), train=train,
                  published_params=int(_number(published, float)) if published is not None else None, path=path)
