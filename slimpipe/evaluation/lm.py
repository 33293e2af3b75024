"""lm-evaluation-harness' model interface over a slimpipe run (``--model slimpipe``).

:class:`SlimpipeLM` is a ``lm_eval.api.model.TemplateLM``, so request handling (context/continuation
split, empty contexts, caching hooks) is lm-eval's own and matches its HF model (``--model hf`` on the
``slimpipe export --format hf`` folder) request for request:

* ``loglikelihood``: requests sorted longest first and scored ``batch_size`` at a time (right padding
  with a causal model changes no row's logits); a context + continuation longer than the model's
  ``max_length`` + 1 is truncated from the left, with a warning.
* ``loglikelihood_rolling``: lm-eval's ``get_rolling_token_windows`` + ``make_disjoint_window`` with
  ``max_length``-token windows, as ``HFLM`` does: every window after the first gets full context.
* ``generate_until``: greedy decoding, stop sequences and EOS as in ``HFLM``; contexts truncated from the
  left to ``max_length - max_gen_toks``. Requests whose contexts have the same token length run as one
  batch (the model has no padding mask, so only equal lengths batch exactly).

Importing this module registers the model as ``slimpipe`` in lm-eval's registry.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import (
    Collator,
    handle_stop_sequences,
    normalize_gen_kwargs,
    postprocess_generated_text,
)

from slimpipe.train.export import load_run

log = logging.getLogger(__name__)

DEFAULT_BATCH = 8
DEFAULT_MAX_GEN_TOKS = 256  # HFLM's default


def _batch_size(value: Any) -> int:
    if value is None:
        return DEFAULT_BATCH
    text = str(value)
    if text.startswith("auto"):
        log.warning("batch_size=%s: no automatic search here; using %d", text, DEFAULT_BATCH)
        return DEFAULT_BATCH
    size = int(text)
    if size < 1:
        raise ValueError(f"batch_size must be >= 1, not {value}")
    return size


def _dtype(value: Any) -> torch.dtype | None:
    if value in (None, "", "auto"):
        return None
    if isinstance(value, torch.dtype):
        return value
    name = str(value).replace("torch.", "")
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {value!r}")
    return dtype


@register_model("slimpipe")
class SlimpipeLM(TemplateLM):
    """A slimpipe run (``RUN``, ``RUN/model`` or an export folder) as an lm-eval model.

    Arguments (``--model_args``): ``pretrained`` (the run), ``tokenizer`` (override), ``device``,
    ``batch_size``, ``max_length`` (default: the model's context), ``max_gen_toks``, ``dtype``.
    """

    def __init__(self, pretrained: str, device: str | None = None, batch_size: int | str | None = None,
                 max_length: int | str | None = None, max_gen_toks: int | str = DEFAULT_MAX_GEN_TOKS,
                 dtype: str | torch.dtype | None = None, tokenizer: str | None = None, **kwargs: Any) -> None:
        super().__init__()
        for key in kwargs:
            log.warning("SlimpipeLM: ignoring model argument %s", key)
        self._device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self._rank, self._world_size = 0, 1
        model, tok, self.info = load_run(pretrained, tokenizer=tokenizer, device=self._device)
        dt = _dtype(dtype)
        self.model = model.to(dt) if dt is not None else model
        self.model.eval()
        self.tok = tok
        self.batch_size_per_gpu = _batch_size(batch_size)
        self._max_length = int(max_length) if max_length else int(self.model.cfg.max_seq_len)
        self._max_gen_toks = int(max_gen_toks)
        self.pretrained = str(pretrained)

    # ---------------------------------------------------------------- what lm-eval asks of a model
    @property
    def eot_token_id(self) -> int:
        return self.tok.eos_id

    @property
    def prefix_token_id(self) -> int:
        return self.tok.eos_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def tokenizer_name(self) -> str:
        return str(self.tok.name).replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None,
                   **kwargs: Any) -> list[int]:
        ids = self.tok.encode(string)
        return ids[-left_truncate_len:] if left_truncate_len else ids

    def tok_decode(self, tokens: list[int], skip_special_tokens: bool = True) -> str:
        if skip_special_tokens:
            tokens = [t for t in tokens if t != self.tok.eos_id]
        return self.tok.decode(tokens)

    @torch.no_grad()
    def _model_call(self, inps: torch.Tensor) -> torch.Tensor:
        return self.model(inps)[0]

    # ---------------------------------------------------------------- log-likelihoods
    def _loglikelihood_tokens(self, requests: list, disable_tqdm: bool = False,
                              override_bs: int | None = None) -> list[tuple[float, bool]]:
        res: list[tuple[float, bool]] = []
        re_ord = Collator(requests, sort_fn=lambda r: (-len(r[1] + r[2]), tuple(r[1] + r[2])))
        for chunk in re_ord.get_batched(n=override_bs or self.batch_size):
            inps, inplens, conts = [], [], []
            for _, context_enc, continuation_enc in chunk:
                if not context_enc or not continuation_enc:
                    raise ValueError("lm-eval request with an empty context or continuation encoding")
                total = len(context_enc) + len(continuation_enc)
                if total > self.max_length + 1:
                    log.warning("context (%d tokens) + continuation (%d) exceed the model's %d tokens: "
                                "truncating %d tokens from the left", len(context_enc), len(continuation_enc),
                                self.max_length, total - self.max_length - 1)
                inp = (context_enc + continuation_enc)[-(self.max_length + 1):][:-1]
                inps.append(inp)
                inplens.append(len(inp))
                conts.append(continuation_enc)
            width = max(inplens)
            batch = torch.zeros(len(inps), width, dtype=torch.long, device=self.device)
            for i, inp in enumerate(inps):
                batch[i, : len(inp)] = torch.tensor(inp, dtype=torch.long)
            logprobs = F.log_softmax(self._model_call(batch).float(), dim=-1)
            for (request_str, _, _), lp, inplen, cont in zip(chunk, logprobs, inplens, conts, strict=True):
                lp = lp[inplen - len(cont): inplen]
                target = torch.tensor(cont, dtype=torch.long, device=lp.device)
                greedy = bool((lp.argmax(dim=-1) == target).all())
                answer = (float(lp.gather(1, target[:, None]).sum()), greedy)
                res.append(answer)
                if request_str is not None:
                    self.cache_hook.add_partial("loglikelihood", request_str, answer)
        return re_ord.get_original(res)

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        windows: list[tuple[int, tuple]] = []
        for i, (string,) in enumerate(req.args for req in requests):
            for ctx, cont in map(lm_utils.make_disjoint_window, lm_utils.get_rolling_token_windows(
                    token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append((i, (None, ctx, cont)))
        scores = self._loglikelihood_tokens([w for _, w in windows]) if windows else []
        totals = [0.0] * len(requests)
        for (i, _), (ll, _) in zip(windows, scores, strict=True):
            totals[i] += ll
        for req, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # ---------------------------------------------------------------- generation
    @torch.no_grad()
    def _greedy(self, contexts: list[list[int]], max_new: int, until: list[str]) -> list[list[int]]:
        """Greedy continuation of equal-length contexts, stopping early once every row hit a stop."""
        x = torch.tensor(contexts, dtype=torch.long, device=self.device)
        start = x.shape[1]
        done = [False] * len(contexts)
        for _ in range(max_new):
            logits = self._model_call(x[:, -self.max_length:])[:, -1]
            x = torch.cat([x, logits.argmax(dim=-1, keepdim=True)], dim=1)
            for i, row in enumerate(x[:, start:].tolist()):
                done[i] = done[i] or self.eot_token_id in row or any(
                    s in self.tok_decode(row) for s in until if s)
            if all(done):
                break
        return [row[start:] for row in x.tolist()]

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        res: list[str] = []
        re_ords = Collator([req.args for req in requests],
                           sort_fn=lambda r: (-len(self.tok_encode(r[0])), r[0]),
                           group_by="gen_kwargs", group_fn=lambda r: r[1])
        eos = self.tok.decode([self.eot_token_id])
        for chunk in re_ords.get_batched(n=self.batch_size):
            contexts, all_kwargs = zip(*chunk, strict=True)
            kwargs = normalize_gen_kwargs(dict(all_kwargs[0]), self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
            max_gen = int(kwargs.pop("max_gen_toks"))
            if kwargs.get("do_sample") or float(kwargs.get("temperature") or 0.0) > 0.0:
                log.warning("generate_until: sampling is not supported; decoding greedily")
            max_ctx = self.max_length - max_gen
            if max_ctx <= 0:
                raise ValueError(f"max_gen_toks {max_gen} leaves no context in the model's {self.max_length} tokens")
            encoded = []
            for context in contexts:
                ids = self.tok_encode(context)
                if len(ids) > max_ctx:
                    log.warning("context of %d tokens truncated from the left to %d", len(ids), max_ctx)
                encoded.append(ids[-max_ctx:] if ids else [self.prefix_token_id])
            by_len: dict[int, list[int]] = {}
            for i, ids in enumerate(encoded):
                by_len.setdefault(len(ids), []).append(i)
            outputs: list[str] = [""] * len(encoded)
            for rows in by_len.values():
                for i, toks in zip(rows, self._greedy([encoded[i] for i in rows], max_gen, until), strict=True):
                    if self.eot_token_id in toks:
                        toks = toks[: toks.index(self.eot_token_id)]
                    outputs[i] = postprocess_generated_text(self.tok_decode(toks), until, None)
            for (context, gen_kwargs), text in zip(chunk, outputs, strict=True):
                res.append(text)
                self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
        return re_ords.get_original(res)
