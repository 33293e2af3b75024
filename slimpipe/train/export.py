"""Export a trained model as ``model.safetensors`` + ``config.json`` + ``tokenizer/``, and load it back.

This is slimpipe's own folder (what ``train`` writes to ``RUN/model``); :func:`load_run` finds a model and
its tokenizer in a run directory, an export folder or a run's latest checkpoint. The Hugging Face
transformers folder (``slimpipe export RUN --format hf``) is built from it by :mod:`slimpipe.hf`, and
lm-evaluation-harness runs on it through :mod:`slimpipe.evaluation`.
"""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from pathlib import Path

import torch

from slimpipe.mix.packed import TOKENIZER_DIR
from slimpipe.mix.tokenizer import Tokenizer, load_tokenizer
from slimpipe.train.data import Mix
from slimpipe.train.errors import ExportError  # noqa: F401  (re-exported: defined without torch)
from slimpipe.train.model import GPT, ModelConfig, alibi_slopes

log = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
MODEL_TYPE = "slimpipe-alibi-swiglu"



def _find_tokenizer(mix: Mix | str | Path | None, info: dict | None) -> Tokenizer | None:
    """The mix's own tokenizer files if present, else its spec, accepted only if the identity matches."""
    info = info or {}
    candidates: list[str | Path | Mix] = []
    if isinstance(mix, Mix):
        if mix.tokenizer_dir.is_dir():
            candidates.append(mix)
    elif mix is not None and (Path(mix) / TOKENIZER_DIR).is_dir():
        candidates.append(Path(mix) / TOKENIZER_DIR)
    if info.get("spec"):
        candidates.append(info["spec"])
    for spec in candidates:
        try:
            tok = spec.tokenizer() if isinstance(spec, Mix) else load_tokenizer(spec)
        except (OSError, ValueError) as exc:
            log.warning("tokenizer %s not loadable: %s", spec, exc)
            continue
        if not info.get("identity") or tok.identity == info["identity"]:
            return tok
        log.warning("tokenizer %s has identity %s, the data was packed with %s", spec, tok.identity[:12],
                    str(info["identity"])[:12])
    return None


def export_model(model: GPT, out_dir: str | Path, *, mix: Mix | str | Path | None = None,
                 tokenizer_info: dict | None = None, tokenizer: Tokenizer | None = None) -> Path:
    """Write the folder atomically (temp folder renamed into place); returns its path. The tokenizer is
    ``tokenizer``, else the ``mix``'s (a :class:`~slimpipe.train.data.Mix` or its folder) or ``tokenizer_info``'s
    spec when its identity matches ``tokenizer_info``."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt", "model_type": MODEL_TYPE})
    tok = tokenizer or _find_tokenizer(mix, tokenizer_info)
    if tok is not None:
        tok.save(tmp / TOKENIZER_DIR)
    else:
        log.warning("no tokenizer found for the export; %s has weights and config only", out)
    config = {
        "model_type": MODEL_TYPE,
        "architecture": "decoder-only, pre-LayerNorm, ALiBi, SwiGLU, tied embeddings",
        "tie_word_embeddings": True,
        "torch_dtype": str(next(iter(state.values())).dtype).replace("torch.", ""),
        "n_params": model.num_params(),
        "model": model.cfg.to_dict(),
        "tokenizer": (tok.describe() if tok is not None else (tokenizer_info or None)),
        "tokenizer_files": TOKENIZER_DIR if tok is not None else None,
    }
    (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def load_exported(path: str | Path, device: str | torch.device = "cpu",
                  dtype: torch.dtype | None = None) -> tuple[GPT, Tokenizer | None]:
    """Rebuild the model from an export folder; returns (model in eval mode, tokenizer or None)."""
    from safetensors.torch import load_file

    p = Path(path)
    config = json.loads((p / CONFIG).read_text())
    if config.get("model_type") != MODEL_TYPE:
        raise ExportError(f"{p}: model_type {config.get('model_type')!r}, expected {MODEL_TYPE!r}")
    with torch.device("meta"):
        model = GPT(ModelConfig.from_dict(config["model"]))
    state = load_file(str(p / WEIGHTS), device=str(device))
    model.load_state_dict(state, assign=True)
    model.alibi.slopes = alibi_slopes(model.cfg.n_head).to(device)  # a non-persistent buffer: rebuild it
    if dtype is not None:
        model = model.to(dtype)
    model.eval()
    tok = load_tokenizer(p / TOKENIZER_DIR) if (p / TOKENIZER_DIR).is_dir() else None
    return model, tok


def _latest_checkpoint(run: Path) -> Path | None:
    from slimpipe.train.checkpoint import checkpoints

    found = checkpoints(run)
    return found[-1] if found else None


HF_MODEL_TYPE = "slimpipe"  # what `slimpipe export --format hf` writes (see slimpipe.hf.export)


def _model_type(folder: Path) -> str | None:
    try:
        return json.loads((folder / CONFIG).read_text()).get("model_type")
    except (OSError, ValueError) as exc:
        raise ExportError(f"{folder / CONFIG}: not readable JSON ({exc})") from exc


def _load_hf_folder(folder: Path, device: str | torch.device) -> tuple[GPT, Tokenizer | None]:
    """The slimpipe model inside a transformers export (weights under ``model.``), without transformers."""
    from safetensors.torch import load_file

    config = json.loads((folder / CONFIG).read_text())
    model = GPT(ModelConfig.from_dict(config["slimpipe_model"]))
    state = load_file(str(folder / WEIGHTS), device=str(device))
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
    model.to(device).eval()
    tok = load_tokenizer(folder / "tokenizer.json") if (folder / "tokenizer.json").is_file() else None
    return model, tok


def load_run(run: str | Path, *, tokenizer: str | Path | None = None, device: str | torch.device = "cpu",
             require_tokenizer: bool = True) -> tuple[GPT, Tokenizer | None, dict]:
    """The model and tokenizer of ``run``: a run directory (its ``model/`` export, else its latest
    checkpoint and the mix's tokenizer) or an export folder itself. ``tokenizer`` (a spec for
    :func:`load_tokenizer`) overrides the one found. Returns (model in eval mode, tokenizer, info).

    Raises :class:`ExportError` with a one-line message when there is no model, or (with
    ``require_tokenizer``) no tokenizer, saying what is missing and how to supply it.
    """
    p = Path(run)
    if not p.exists():
        raise ExportError(f"{p}: no such run directory")
    info: dict = {"run": str(p)}
    tok: Tokenizer | None = None
    if (p / CONFIG).is_file() and (p / WEIGHTS).is_file() and _model_type(p) == HF_MODEL_TYPE:
        model, tok = _load_hf_folder(p, device)
        info["source"] = str(p)
    elif (p / CONFIG).is_file() and (p / WEIGHTS).is_file():
        model, tok = load_exported(p, device=device)
        info["source"] = str(p)
    elif (p / "model" / CONFIG).is_file() and (p / "model" / WEIGHTS).is_file():
        model, tok = load_exported(p / "model", device=device)
        info["source"] = str(p / "model")
    elif (ckpt_path := _latest_checkpoint(p)) is not None:
        from slimpipe.train.checkpoint import load_model_state, read_meta

        try:  # trainer.json and model.safetensors: a run folder's pickles are never read here
            model = GPT(ModelConfig.from_dict(read_meta(ckpt_path)["plan"]["model"]))
            model.load_state_dict(load_model_state(ckpt_path))
        except ValueError as exc:
            raise ExportError(str(exc)) from None
        model.to(device).eval()
        info["source"] = str(ckpt_path)
        run_cfg = json.loads((p / CONFIG).read_text()) if (p / CONFIG).is_file() else {}
        mix_dir = (run_cfg.get("train") or {}).get("mix_dir")
        tok_info = ((run_cfg.get("mix") or {}).get("train") or {}).get("tokenizer")
        if tokenizer is None:
            tok = _find_tokenizer(mix_dir, tok_info)
    else:
        raise ExportError(f"{p}: no model found (expected {p / 'model' / WEIGHTS}, {p / WEIGHTS} "
                          f"or checkpoints in {p / 'checkpoints'})")
    if tokenizer is not None:
        try:
            tok = load_tokenizer(tokenizer)
        except (OSError, ValueError, ModuleNotFoundError) as exc:
            raise ExportError(f"tokenizer {tokenizer}: {exc}") from exc
    if tok is None and require_tokenizer:
        raise ExportError(f"{p}: no tokenizer: {info['source']} has no {TOKENIZER_DIR}/ and the mix's tokenizer "
                          "is not found; pass --tokenizer (gpt2, a tokenizer.json, or a mix's tokenizer/ folder)")
    if tok is not None and tok.vocab_size > model.cfg.vocab_size:
        raise ExportError(f"tokenizer {tok.name} has {tok.vocab_size} ids but the model only "
                          f"{model.cfg.vocab_size}: not the tokenizer this model was trained with")
    info["tokenizer"] = tok.describe() if tok is not None else None
    return model, tok, info
