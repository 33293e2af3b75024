"""transformers wrapper around slimpipe's own model file (shipped inside every HF export).

The export copies :mod:`slimpipe.train.model` next to this file as ``slimpipe_model.py`` and rewrites
the import below to ``from .slimpipe_model import ...``, so the folder needs only torch + transformers:
``AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)``. The weights are the slimpipe
model's state dict under the prefix ``model.``; the logits are the slimpipe model's, unchanged.

There is no KV cache (each generation step re-runs the context, fine for evaluation-sized models). A
padded batch (``attention_mask`` with zeros, as lm-eval's left-padded generation uses) is run row by
row on its unpadded tokens, so padding never changes a row's logits; pad positions get zero logits.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

from slimpipe.train.model import GPT, AlibiBias, ModelConfig, alibi_slopes  # export: from .slimpipe_model

from .configuration_slimpipe import SlimpipeConfig


class SlimpipeForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = SlimpipeConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["Block"]
    _supports_cache_class = False

    def __init__(self, config: SlimpipeConfig) -> None:
        super().__init__(config)
        self.model = GPT(ModelConfig.from_dict(config.slimpipe_model))
        self.post_init()

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False

    @torch.no_grad()
    def _init_weights(self, module: torch.nn.Module) -> None:
        # Weights come from the checkpoint (or GPT's own init); only the non-persistent ALiBi slopes,
        # which no checkpoint holds, need rebuilding after transformers materialises the model.
        if isinstance(module, AlibiBias):
            module.slopes = alibi_slopes(module.slopes.shape[0]).to(
                "cpu" if module.slopes.device.type == "meta" else module.slopes.device)
            module._masks.clear()

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.model.wte

    def set_input_embeddings(self, value: torch.nn.Module) -> None:
        self.model.wte = value

    def _logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        if attention_mask is None or bool(attention_mask.all()):
            return self.model(input_ids)[0]
        rows = []
        for ids, keep in zip(input_ids, attention_mask.bool(), strict=True):
            out = torch.zeros(ids.shape[0], self.model.cfg.padded_vocab_size, device=ids.device,
                              dtype=self.model.wte.weight.dtype)
            if bool(keep.any()):
                out[keep] = self.model(ids[keep][None])[0][0].to(out.dtype)
            rows.append(out)
        return torch.stack(rows)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, return_dict: bool | None = None,
                **kwargs: Any) -> CausalLMOutput:
        logits = self._logits(input_ids, attention_mask)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.size(-1)),
                                   labels[:, 1:].reshape(-1), ignore_index=-100)
        return CausalLMOutput(loss=loss, logits=logits)

    def prepare_inputs_for_generation(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                                      **kwargs: Any) -> dict:
        # No cache: every step sees the whole sequence (cropped to the model's context from the left).
        n = self.model.cfg.max_seq_len
        if attention_mask is not None:
            attention_mask = attention_mask[:, -n:]
        return {"input_ids": input_ids[:, -n:], "attention_mask": attention_mask}
