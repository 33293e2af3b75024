"""The model, top to bottom in one file: a Cerebras-GPT-family decoder.

Pre-LayerNorm blocks, ALiBi attention bias instead of position embeddings, a SwiGLU MLP, tied input and
output embeddings, no dropout, Cerebras-GPT initialisation (std 0.02, output projections 0.02/sqrt(2L)),
and optional muP (Cerebras-GPT-muP multipliers) so a learning rate tuned on a narrow model transfers.

Attention goes through ``torch.nn.functional.scaled_dot_product_attention`` with an additive float
mask (ALiBi bias, ``-inf`` above the diagonal) by default: it runs everywhere, eager, and on CPU it is
the fastest option we have. ``attention="flex"`` uses FlexAttention with an ALiBi score modifier and a
causal block mask instead; it only pays off when compiled on a GPU (it never materialises the T x T
mask), so it is a switch rather than the default.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class ModelConfig:
    vocab_size: int = 50257
    n_layer: int = 12
    n_head: int = 12
    d_model: int = 768
    d_ff: int = 2048  # SwiGLU hidden width (~8/3 d_model keeps the parameter count of a 4*d GELU MLP)
    max_seq_len: int = 2048  # training context; ALiBi itself has no position table
    bias: bool = True  # Cerebras-GPT keeps biases in linear layers and LayerNorms
    layer_norm_eps: float = 1e-5
    init_std: float = 0.02
    attention: str = "sdpa"  # "sdpa" | "flex"
    mup: bool = False
    mup_base_width: int = 256
    mup_base_init_std: float = 0.08
    mup_embed_mult: float = 10.0

    def __post_init__(self) -> None:
        if self.d_model % self.n_head:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_head {self.n_head}")
        if self.attention not in ("sdpa", "flex"):
            raise ValueError(f"attention must be 'sdpa' or 'flex', not {self.attention!r}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def width_mult(self) -> float:
        """muP width multiplier d_model / base width (1 without muP)."""
        return self.d_model / self.mup_base_width if self.mup else 1.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def alibi_slopes(n_head: int) -> torch.Tensor:
    """ALiBi head slopes (Press et al.): for n a power of two, m_i = 2^(-8 i / n), i = 1..n.

    Otherwise take c, the largest power of two <= n: the c slopes for c heads, then every other slope of
    the 2c-head sequence (odd positions: those not already used), first n - c of them.
    """
    def power_of_two(n: int) -> list[float]:
        return [2.0 ** (-8.0 * i / n) for i in range(1, n + 1)]

    if n_head < 1:
        raise ValueError("n_head must be >= 1")
    c = 1 << (n_head.bit_length() - 1)
    slopes = power_of_two(c)
    if c < n_head:
        slopes += power_of_two(2 * c)[0::2][: n_head - c]
    return torch.tensor(slopes, dtype=torch.float32)


def alibi_causal_bias(slopes: torch.Tensor, seq_len: int, dtype: torch.dtype = torch.float32,
                      device: torch.device | str | None = None) -> torch.Tensor:
    """Additive attention mask ``(H, T, T)``: ``-m_h (i - j)`` for keys j <= query i, ``-inf`` after i."""
    pos = torch.arange(seq_len, device=device)
    dist = (pos[None, :] - pos[:, None]).to(torch.float32)  # j - i, <= 0 on and below the diagonal
    bias = slopes.to(device=device, dtype=torch.float32)[:, None, None] * dist
    bias = bias.masked_fill(dist > 0, float("-inf"))
    return bias.to(dtype)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.bias)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.proj.is_residual_out = True
        # muP scales attention logits by 1/d_head (not 1/sqrt(d_head)) so they stay O(1) as width grows.
        self.scale = 1.0 / cfg.head_dim if cfg.mup else 1.0 / math.sqrt(cfg.head_dim)

    def forward(self, x: torch.Tensor, alibi: AlibiBias) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.cfg.n_head, self.cfg.head_dim).permute(2, 0, 3, 1, 4)
        if self.cfg.attention == "flex":
            y = alibi.flex(q, k, v, self.scale)
        else:
            mask = alibi.mask(T, q.dtype, q.device)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate_up = nn.Linear(cfg.d_model, 2 * cfg.d_ff, bias=cfg.bias)
        self.down = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)
        self.down.is_residual_out = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.mlp = SwiGLU(cfg)

    def forward(self, x: torch.Tensor, alibi: AlibiBias) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), alibi)
        return x + self.mlp(self.ln_2(x))


class AlibiBias(nn.Module):
    """Holds the slopes and builds (and caches) the mask or Flex modifiers per length/dtype/device."""

    def __init__(self, n_head: int) -> None:
        super().__init__()
        self.register_buffer("slopes", alibi_slopes(n_head), persistent=False)
        self._masks: dict[tuple, torch.Tensor] = {}
        self._block_masks: dict[tuple, object] = {}
        self._flex_fn = None

    def mask(self, T: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        key = (T, dtype, device)
        if key not in self._masks:
            self._masks[key] = alibi_causal_bias(self.slopes, T, dtype, device)[None]
        return self._masks[key]

    def flex(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        T = q.shape[-2]
        key = (T, q.device)
        if key not in self._block_masks:
            self._block_masks[key] = create_block_mask(lambda b, h, qi, ki: qi >= ki, None, None, T, T,
                                                       device=q.device)
        if self._flex_fn is None:
            # Eager Flex materialises the score matrix (slow, but exact); compiled it is fused.
            self._flex_fn = torch.compile(flex_attention) if q.is_cuda else flex_attention
        slopes = self.slopes

        def score_mod(score, b, h, qi, ki):
            return score + slopes[h] * (ki - qi).to(score.dtype)

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
            return self._flex_fn(q, k, v, score_mod=score_mod, block_mask=self._block_masks[key], scale=scale)


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.alibi = AlibiBias(cfg.n_head)
        # muP: embeddings multiplied by a constant, logits by base_width / d_model.
        self.embed_mult = cfg.mup_embed_mult if cfg.mup else 1.0
        self.logit_mult = 1.0 / cfg.width_mult
        if self.wte.weight.device.type != "meta":
            self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Cerebras-GPT init: N(0, std) weights, output projections std/sqrt(2L), zero biases, unit LN.

        With muP the base std is 0.08 for the embedding and 0.08*sqrt(base/d) for hidden matrices."""
        cfg = self.cfg
        if cfg.mup:
            emb_std, hidden_std = cfg.mup_base_init_std, cfg.mup_base_init_std / math.sqrt(cfg.width_mult)
        else:
            emb_std = hidden_std = cfg.init_std
        nn.init.normal_(self.wte.weight, 0.0, emb_std)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                std = hidden_std / math.sqrt(2 * cfg.n_layer) if getattr(m, "is_residual_out", False) else hidden_std
                nn.init.normal_(m.weight, 0.0, std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                reduction: str = "mean") -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits ``(B, T, V)`` and, given targets, the cross-entropy in nats (``reduction`` as in
        ``F.cross_entropy``: "mean" for training, "sum"/"none" for exact evaluation)."""
        if idx.shape[1] > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {idx.shape[1]} tokens exceeds max_seq_len {self.cfg.max_seq_len}")
        x = self.wte(idx)
        if self.embed_mult != 1.0:
            x = x * self.embed_mult
        for block in self.blocks:
            x = block(x, self.alibi)
        x = self.ln_f(x)
        logits = F.linear(x, self.wte.weight)
        if self.logit_mult != 1.0:
            logits = logits * self.logit_mult
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), reduction=reduction)
        return logits, loss

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters, the tied embedding counted once (works on the meta device)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.wte.weight.numel() if non_embedding else n

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token, see :func:`training_flops_per_token`."""
        return training_flops_per_token(self.num_params(), self.cfg.n_layer, self.cfg.d_model, seq_len)

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """AdamW groups: decay matrices (embedding included), not biases or LayerNorm gains; with muP
        the hidden matrices' learning rate is divided by the width multiplier."""
        groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            matrix = p.dim() >= 2
            hidden = matrix and not name.startswith("wte")
            groups.setdefault((matrix, hidden), []).append(p)
        out = []
        for (matrix, hidden), params in sorted(groups.items()):
            scale = 1.0 / self.cfg.width_mult if (self.cfg.mup and hidden) else 1.0
            out.append({"params": params, "weight_decay": weight_decay if matrix else 0.0,
                        "lr": lr * scale, "lr_scale": scale})
        return out

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, eos_id: int | None = None) -> torch.Tensor:
        """Greedy decoding (enough for evaluation harnesses); context cropped to ``max_seq_len``."""
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -self.cfg.max_seq_len :])
            nxt = logits[:, -1].argmax(dim=-1, keepdim=True)
            idx = torch.cat([idx, nxt], dim=1)
            if eos_id is not None and bool((nxt == eos_id).all()):
                break
        return idx


def training_flops_per_token(n_params: int, n_layer: int, d_model: int, seq_len: int) -> float:
    """6 N + 12 * n_layer * d_model * T: forward 2N + backward 4N matmul FLOPs (N counts the tied
    embedding once, since it is used as the output projection; the input lookup is free), plus attention
    scores and weighted values (PaLM's convention: the full T x T, although causal attention needs half)."""
    return 6.0 * n_params + 12.0 * n_layer * d_model * seq_len


def count_params_meta(cfg: ModelConfig) -> int:
    """Parameter count without allocating memory: build on ``torch.device('meta')``."""
    with torch.device("meta"):
        model = GPT(cfg)
    return model.num_params()
