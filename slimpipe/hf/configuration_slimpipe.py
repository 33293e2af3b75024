"""transformers configuration for slimpipe's decoder (shipped inside every HF export, loaded with
``trust_remote_code=True``).

The architecture's own settings live under ``slimpipe_model`` (exactly :class:`ModelConfig`'s fields);
the usual transformers names (``vocab_size``, ``hidden_size``, ``max_position_embeddings`` ...) mirror
them so generic tools (lm-evaluation-harness' ``max_length``, model cards) read the right numbers.
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig


class SlimpipeConfig(PretrainedConfig):
    model_type = "slimpipe"

    def __init__(self, slimpipe_model: dict | None = None, tokenizer_vocab_size: int | None = None,
                 bos_token_id: int | None = None, eos_token_id: int | None = None,
                 pad_token_id: int | None = None, **kwargs: Any) -> None:
        self.slimpipe_model = dict(slimpipe_model or {})
        m = self.slimpipe_model
        self.vocab_size = int(m.get("vocab_size", 0))
        self.tokenizer_vocab_size = tokenizer_vocab_size
        self.hidden_size = int(m.get("d_model", 0))
        self.num_hidden_layers = int(m.get("n_layer", 0))
        self.num_attention_heads = int(m.get("n_head", 0))
        self.intermediate_size = int(m.get("d_ff", 0))
        self.max_position_embeddings = int(m.get("max_seq_len", 0))
        kwargs.setdefault("tie_word_embeddings", False)  # the model multiplies by wte itself: nothing to tie
        kwargs.setdefault("use_cache", False)  # no KV cache: generation re-runs the (short) context
        super().__init__(bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                         **kwargs)
