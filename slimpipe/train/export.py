"""Export a trained model as ``model.safetensors`` + ``config.json`` + ``tokenizer/``, and load it back.

The layout mirrors what evaluation tools expect of a HuggingFace-style folder, but the architecture is
our own (ALiBi + SwiGLU), so loading goes through :func:`load_exported` rather than ``transformers``.
:class:`SlimpipeLM` adapts a loaded model to lm-evaluation-harness' three request types
(``loglikelihood``, ``loglikelihood_rolling``, ``generate_until``); :func:`register_lm_eval` registers
it as ``--model slimpipe`` when ``lm_eval`` is installed (it is not a dependency)::

    from slimpipe.train.export import register_lm_eval
    import lm_eval
    register_lm_eval()
    lm_eval.simple_evaluate(model="slimpipe", model_args="pretrained=RUN/model", tasks=["hellaswag"])
"""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from slimpipe.mix.tokenizer import Tokenizer, load_tokenizer
from slimpipe.train.model import GPT, ModelConfig, alibi_slopes

log = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TOKENIZER_DIR = "tokenizer"
MODEL_TYPE = "slimpipe-alibi-swiglu"


def _find_tokenizer(mix_dir: str | Path | None, info: dict | None) -> Tokenizer | None:
    """The mix's own tokenizer files if present, else its spec, accepted only if the identity matches."""
    info = info or {}
    candidates: list[str | Path] = []
    if mix_dir is not None and (Path(mix_dir) / TOKENIZER_DIR).is_dir():
        candidates.append(Path(mix_dir) / TOKENIZER_DIR)
    if info.get("spec"):
        candidates.append(info["spec"])
    for spec in candidates:
        try:
            tok = load_tokenizer(spec)
        except (OSError, ValueError) as exc:
            log.warning("tokenizer %s not loadable: %s", spec, exc)
            continue
        if not info.get("identity") or tok.identity == info["identity"]:
            return tok
        log.warning("tokenizer %s has identity %s, the data was packed with %s", spec, tok.identity[:12],
                    str(info["identity"])[:12])
    return None


def export_model(model: GPT, out_dir: str | Path, *, mix_dir: str | Path | None = None,
                 tokenizer_info: dict | None = None, tokenizer: Tokenizer | None = None) -> Path:
    """Write the folder atomically (temp folder renamed into place); returns its path."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt", "model_type": MODEL_TYPE})
    tok = tokenizer or _find_tokenizer(mix_dir, tokenizer_info)
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
        raise ValueError(f"{p}: model_type {config.get('model_type')!r}, expected {MODEL_TYPE!r}")
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


class SlimpipeLM:
    """lm-evaluation-harness' model interface over an exported model (batch of one; greedy decoding).

    Requests are objects with ``.args`` (as lm-eval passes them) or plain tuples.
    """

    def __init__(self, pretrained: str, device: str = "cpu", max_length: int | None = None, **_: Any) -> None:
        super().__init__()
        self.model, tok = load_exported(pretrained, device=device)
        if tok is None:
            raise ValueError(f"{pretrained}: export has no tokenizer")
        self.tok = tok
        self.device = torch.device(device)
        self.max_length = int(max_length or self.model.cfg.max_seq_len)

    @staticmethod
    def _args(req: Any) -> tuple:
        return tuple(req.args) if hasattr(req, "args") else tuple(req)

    @torch.no_grad()
    def _score(self, context: list[int], continuation: list[int]) -> tuple[float, bool]:
        ids = (context + continuation)[-(self.max_length + 1) :]
        n = len(continuation)
        x = torch.tensor([ids[:-1]], device=self.device)
        logits, _ = self.model(x)
        logp = F.log_softmax(logits[0, -n:].float(), dim=-1)
        target = torch.tensor(ids[-n:], device=self.device)
        ll = float(logp.gather(1, target[:, None]).sum())
        greedy = bool((logp.argmax(-1) == target).all())
        return ll, greedy

    def loglikelihood(self, requests: list) -> list[tuple[float, bool]]:
        out = []
        for req in requests:
            context, continuation = self._args(req)[:2]
            ctx = self.tok.encode(context) if context else []
            cont = self.tok.encode(continuation)
            out.append(self._score([self.tok.eos_id] + ctx, cont))
        return out

    def loglikelihood_rolling(self, requests: list) -> list[float]:
        """Whole-string log-likelihood in non-overlapping windows of ``max_length`` tokens."""
        out = []
        for req in requests:
            ids = self.tok.encode(self._args(req)[0])
            total, prefix = 0.0, [self.tok.eos_id]
            for start in range(0, len(ids), self.max_length):
                window = ids[start : start + self.max_length]
                total += self._score(prefix, window)[0]
                prefix = window[-1:]
            out.append(total)
        return out

    def generate_until(self, requests: list) -> list[str]:
        out = []
        for req in requests:
            context, kwargs = self._args(req)[:2]
            kwargs = dict(kwargs or {})
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.get("max_gen_toks", 64))
            ids = [self.tok.eos_id] + self.tok.encode(context)
            idx = torch.tensor([ids[-self.max_length :]], device=self.device)
            gen = self.model.generate(idx, max_new, eos_id=self.tok.eos_id)[0, idx.shape[1] :].tolist()
            if self.tok.eos_id in gen:
                gen = gen[: gen.index(self.tok.eos_id)]
            text = self.tok.decode(gen)
            for stop in until:
                if stop and stop in text:
                    text = text[: text.index(stop)]
            out.append(text)
        return out


def register_lm_eval(name: str = "slimpipe") -> type:
    """Register :class:`SlimpipeLM` with lm-evaluation-harness (``--model slimpipe``); needs ``lm_eval``."""
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model

    cls = type("SlimpipeLMEval", (SlimpipeLM, LM), {
        "create_from_arg_string": classmethod(
            lambda c, arg_string, additional_config=None: c(**dict(
                kv.split("=", 1) for kv in arg_string.split(",") if kv),
                **{k: v for k, v in (additional_config or {}).items() if k == "device" and v}))})
    return register_model(name)(cls)
