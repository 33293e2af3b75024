"""The model, top to bottom in one file: a Cerebras-GPT-family decoder.

Pre-LayerNorm blocks, ALiBi attention bias instead of position embeddings, a SwiGLU MLP, tied input and
output embeddings, no dropout, Cerebras-GPT initialisation (std 0.02, output projections 0.02/sqrt(2L)),
and optional muP (Cerebras-GPT-muP multipliers) so a learning rate tuned on a narrow model transfers.

Attention backends (``attention``), all computing the same function:

* ``sdpa``: ``scaled_dot_product_attention`` with an additive float mask (ALiBi bias, ``-inf`` above the
  diagonal). One max-length mask is cached and sliced per call. Runs everywhere; the CPU default.
* ``flex``: FlexAttention with an ALiBi ``score_mod`` and a causal block mask, compiled on CUDA (never
  materialises the T x T mask, skips masked blocks). Forward only on CPU (no CPU backward in torch).
* ``flash``: flash-attn's ``flash_attn_func(..., causal=True, alibi_slopes=...)`` when that package is
  installed (CUDA, bf16/fp16).
* ``auto``: flash if installed, else flex on CUDA; sdpa elsewhere.

The vocabulary is padded to a multiple of ``vocab_multiple`` (128) for GPU-friendly matmuls; the padded
rows' logits are ``-inf`` in the model's output, so loss, evaluation, sampling and export never see them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

ATTENTION_BACKENDS = ("auto", "sdpa", "flex", "flash")


def swiglu_width(d_model: int, multiple: int = 64) -> int:
    """SwiGLU hidden width: 8/3 d_model (the parameter count of a 4d GELU MLP), to the nearest multiple."""
    return max(multiple, round(8 * d_model / 3 / multiple) * multiple)


def flash_attn_available() -> bool:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_attention(name: str, device: torch.device | str) -> str:
    """The backend ``name`` runs as on ``device``: ``auto`` becomes flash (if installed) or flex on CUDA,
    sdpa elsewhere; ``flash`` needs CUDA and the flash-attn package (ValueError otherwise)."""
    kind = torch.device(device).type
    if name == "auto":
        return ("flash" if flash_attn_available() else "flex") if kind == "cuda" else "sdpa"
    if name == "flash" and (kind != "cuda" or not flash_attn_available()):
        raise ValueError("attention 'flash' needs CUDA and the flash-attn package; use 'flex' or 'sdpa'")
    return name


@dataclass
class ModelConfig:
    vocab_size: int = 50257
    n_layer: int = 12
    n_head: int = 12
    d_model: int = 768
    d_ff: int = 2048  # SwiGLU hidden width: ~8/3 d_model, rounded to a multiple of 64 (swiglu_width)
    max_seq_len: int = 2048  # training context; ALiBi itself has no position table
    bias: bool = True  # Cerebras-GPT keeps biases in linear layers and LayerNorms
    layer_norm_eps: float = 1e-5
    init_std: float = 0.02
    attention: str = "auto"  # "auto" | "sdpa" | "flex" | "flash" (see the module docstring)
    vocab_multiple: int = 128  # the embedding has padded_vocab_size rows; the extra logits are -inf
    mup: bool = False
    mup_base_width: int = 256  # muP knobs (Cerebras-GPT-muP); they apply only when mup is true
    mup_base_init_std: float = 0.08
    mup_embed_mult: float = 10.0
    mup_base_lr: float = 6e-3  # the peak LR a muP run uses unless one is given (Cerebras-GPT-muP)

    def __post_init__(self) -> None:
        if self.d_model % self.n_head:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_head {self.n_head}")
        if self.attention not in ATTENTION_BACKENDS:
            raise ValueError(f"attention must be one of {ATTENTION_BACKENDS}, not {self.attention!r}")
        if self.vocab_multiple < 1:
            raise ValueError(f"vocab_multiple must be >= 1, not {self.vocab_multiple}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the (tied) embedding and width of the logits: vocab_size rounded up to vocab_multiple."""
        return -(-self.vocab_size // self.vocab_multiple) * self.vocab_multiple

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

    def forward(self, x: torch.Tensor, alibi: AlibiBias, mask: object) -> torch.Tensor:
        """``mask`` is what :meth:`AlibiBias.prepare` built for this forward pass outside any compiled
        region: the SDPA mask tensor, the Flex BlockMask, or None (flash)."""
        B, T, C = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.cfg.n_head, self.cfg.head_dim)
        backend = alibi.active
        if backend == "flash":  # flash-attn wants (B, T, H, D)
            from flash_attn import flash_attn_func

            q, k, v = qkv.unbind(2)
            y = flash_attn_func(q, k, v, softmax_scale=self.scale, causal=True, alibi_slopes=alibi.slopes)
            return self.proj(y.reshape(B, T, C))
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        if backend == "flex":
            y = alibi.flex(q, k, v, self.scale, mask)
        else:
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

    def forward(self, x: torch.Tensor, alibi: AlibiBias, mask: object) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), alibi, mask)
        return x + self.mlp(self.ln_2(x))


class AlibiBias(nn.Module):
    """Holds the slopes, and at most one SDPA mask (max length, sliced per call) and one Flex block mask.

    :meth:`prepare` builds the mask of a forward pass once, outside any compiled region, and the model
    hands it to every block as an argument (as torchtitan does): a compiled block reads no cache, so it
    specialises on nothing but the shapes it is given. ``slopes`` and ``max_seq_len`` are public: the
    SDPA mask is rebuilt when either changes (ALiBi interpolation, :mod:`slimpipe.train.interp`)."""

    def __init__(self, n_head: int, max_seq_len: int) -> None:
        super().__init__()
        self.max_seq_len = max_seq_len
        self.register_buffer("slopes", alibi_slopes(n_head), persistent=False)
        self._masks: dict[tuple, torch.Tensor] = {}  # one entry: (dtype, device, max_seq_len) -> (1, H, Tmax, Tmax)
        self._mask_slopes: torch.Tensor | None = None  # the slopes that mask was built from
        self._mask_slice: torch.Tensor | None = None  # its last shorter length, contiguous
        self._block_masks: dict[tuple, object] = {}  # (T, device) -> BlockMask (the slopes are in score_mod)
        self._backends: dict[tuple, str] = {}
        self._flex_fn = None
        self.active = "sdpa"  # the backend of the current forward pass, set by prepare()

    def backend(self, name: str, device: torch.device) -> str:
        key = (name, device.type)
        if key not in self._backends:
            self._backends[key] = resolve_attention(name, device)
        return self._backends[key]

    @torch.compiler.disable
    def prepare(self, name: str, T: int, dtype: torch.dtype, device: torch.device) -> object:
        """Resolve the backend and return the attention mask of a length-``T`` forward pass: the SDPA
        mask tensor ``(1, H, T, T)``, the Flex ``BlockMask``, or None (flash). Never traced: called once
        per forward pass before the (compiled) blocks, which take the mask as an argument."""
        self.active = self.backend(name, device)
        if self.active == "sdpa":
            return self.mask(T, dtype, device)
        if self.active == "flex":
            return self.block_mask(T, device)
        return None

    def mask(self, T: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The ``(1, H, T, T)`` additive mask: from one cached max-length mask (rebuilt only when the dtype,
        device, slopes or max length change, so generation and rolling evaluation cannot grow a cache); a
        shorter length gets a contiguous copy of its slice (one kept), so what a compiled block is given
        depends on ``T`` alone, never on the max length its strides would otherwise carry."""
        key = (dtype, device, self.max_seq_len)
        if key not in self._masks or self._mask_slopes is not self.slopes:
            self._masks.clear()
            self._masks[key] = alibi_causal_bias(self.slopes, self.max_seq_len, dtype, device)[None]
            self._mask_slopes = self.slopes
            self._mask_slice = None
        full = self._masks[key]
        if T == full.shape[-1]:
            return full
        if self._mask_slice is None or self._mask_slice.shape[-1] != T:
            self._mask_slice = full[:, :, :T, :T].contiguous()
        return self._mask_slice

    def block_mask(self, T: int, device: torch.device) -> object:
        """The causal BlockMask for length ``T`` (one cached), and the (compiled on CUDA) Flex function."""
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        key = (T, device)
        if key not in self._block_masks:
            self._block_masks.clear()
            self._block_masks[key] = create_block_mask(_causal, None, None, T, T, device=device)
        if self._flex_fn is None:
            # Eager Flex materialises the score matrix (slow, but exact); compiled it is fused.
            self._flex_fn = torch.compile(flex_attention) if device.type == "cuda" else flex_attention
        return self._block_masks[key]

    def flex(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, block_mask: object) -> torch.Tensor:
        """FlexAttention with the ALiBi ``score_mod`` under ``block_mask`` (from :meth:`prepare`)."""
        slopes = self.slopes

        def score_mod(score, b, h, qi, ki):
            return score + slopes[h] * (ki - qi).to(score.dtype)

        if torch.compiler.is_compiling():  # inside a compiled model: the graph compiles flex_attention itself
            from torch.nn.attention.flex_attention import flex_attention

            return flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale)
        flex_fn = self._flex_fn
        if flex_fn is None:  # a mask built elsewhere: the same choice block_mask() makes
            from torch.nn.attention.flex_attention import flex_attention

            flex_fn = self._flex_fn = torch.compile(flex_attention) if q.device.type == "cuda" else flex_attention
        # Eager flex (the CPU path, forward only) warns that it materialises the B*H*T*T scores. Never
        # silenced: torch shows that warning once per process, so hiding it on a CPU call would also hide it
        # from a later CUDA call that fell back to eager (#20.1).
        return flex_fn(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale)


def _causal(b, h, qi, ki):  # FlexAttention mask_mod
    return qi >= ki


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.padded_vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.alibi = AlibiBias(cfg.n_head, cfg.max_seq_len)
        # muP: embeddings multiplied by a constant, logits by base_width / d_model.
        self.embed_mult = cfg.mup_embed_mult if cfg.mup else 1.0
        self.logit_mult = 1.0 / cfg.width_mult
        self.activation_checkpointing = False  # recompute each block's activations in backward (training)
        self._output = self._logits_and_loss  # replaced by compiled versions in compile_regions()
        self._loss = self._head_loss
        if self.wte.weight.device.type != "meta":
            self.reset_parameters()

    def init_weights(self, seed: int | None = None) -> None:
        """Initialise a model built on the meta device and moved with ``to_empty``: the weights
        (:meth:`reset_parameters`) and the ALiBi slopes (a non-persistent buffer). On a model already
        sharded by FSDP2 (DTensor parameters) each rank draws only its own rows (:func:`sharded_normal_`,
        from ``seed``, default ``torch.initial_seed()``): no rank ever holds a full parameter."""
        self.alibi.slopes = alibi_slopes(self.cfg.n_head).to(_local(self.wte.weight).device)
        self.reset_parameters(seed)

    @torch.no_grad()
    def reset_parameters(self, seed: int | None = None) -> None:
        """Cerebras-GPT init: N(0, std) weights, output projections std/sqrt(2L), zero biases, unit LN.

        With muP the base std is 0.08 for the embedding and 0.08*sqrt(base/d) for hidden matrices.
        Plain tensors draw from torch's global generator in module order (as always); DTensor shards
        (FSDP2) from :func:`sharded_normal_` with ``seed`` (same distribution, reproducible from the seed
        at any world size, other values)."""
        cfg = self.cfg
        seed = torch.initial_seed() if seed is None else int(seed)
        if cfg.mup:
            emb_std, hidden_std = cfg.mup_base_init_std, cfg.mup_base_init_std / math.sqrt(cfg.width_mult)
        else:
            emb_std = hidden_std = cfg.init_std

        def normal_(name: str, w: torch.Tensor, std: float) -> None:
            if _is_sharded(w):
                sharded_normal_(w, std, seed=seed, key=name)
            else:
                nn.init.normal_(w, 0.0, std)

        normal_("wte.weight", self.wte.weight, emb_std)
        _zero_rows_from(self.wte.weight, cfg.vocab_size)  # padding rows: never an input, their logits are masked
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                std = hidden_std / math.sqrt(2 * cfg.n_layer) if getattr(m, "is_residual_out", False) else hidden_std
                normal_(f"{name}.weight", m.weight, std)
                if m.bias is not None:
                    _local(m.bias).zero_()
            elif isinstance(m, nn.LayerNorm):
                _local(m.weight).fill_(1.0)
                if m.bias is not None:
                    _local(m.bias).zero_()

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, reduction: str = "mean",
                return_logits: bool = False) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(logits, loss)``: logits ``(B, T, V)`` without targets; given targets, the cross-entropy in nats
        (``reduction`` as in ``F.cross_entropy``: "mean" for training, "sum"/"none" for exact evaluation;
        targets ``-100`` are ignored) and logits ``None``: the loss is computed chunk by chunk
        (:func:`fused_linear_cross_entropy`) so the ``(B, T, V)`` logits never exist, in training or
        evaluation. ``return_logits=True`` takes the plain path instead (full logits, then the loss)."""
        if idx.shape[1] > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {idx.shape[1]} tokens exceeds max_seq_len {self.cfg.max_seq_len}")
        x = self.wte(idx)
        if self.embed_mult != 1.0:
            x = x * self.embed_mult
        kind = x.device.type
        dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype
        # the mask is built here, once per forward pass and outside any compiled region, and passed to
        # every block: a compiled block never looks a mask up (#20.1)
        mask = self.alibi.prepare(self.cfg.attention, idx.shape[1], dtype, x.device)
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            if recompute:
                x = torch.utils.checkpoint.checkpoint(block, x, self.alibi, mask, use_reentrant=False)
            else:
                x = block(x, self.alibi, mask)
        if targets is not None and not return_logits:
            return None, self._loss(x, targets, reduction)
        return self._output(x, targets, reduction)

    def _head_loss(self, x: torch.Tensor, targets: torch.Tensor, reduction: str) -> torch.Tensor:
        x = self.ln_f(x)  # "none": flat (B*T,) losses, as F.cross_entropy on flattened logits gives
        return fused_linear_cross_entropy(x.reshape(-1, x.size(-1)), self.wte.weight, targets.reshape(-1),
                                          scale=self.logit_mult, vocab_size=self.cfg.vocab_size,
                                          reduction=reduction)

    def _logits_and_loss(self, x: torch.Tensor, targets: torch.Tensor | None,
                         reduction: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = self.ln_f(x)
        logits = F.linear(x, self.wte.weight)
        if self.logit_mult != 1.0:
            logits = logits * self.logit_mult
        if self.cfg.padded_vocab_size != self.cfg.vocab_size:
            logits = logits.masked_fill(self.vocab_pad_mask(logits.device), float("-inf"))
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), reduction=reduction)
        return logits, loss

    def compile_regions(self, **compile_kwargs) -> GPT:
        """``torch.compile`` each block and the output head (final norm, tied projection, loss) instead of
        the whole model: the blocks are identical, so the compiled graph of one serves all of them and
        compiling a 24-layer model costs about one layer's compilation. Works under DDP and FSDP2."""
        for block in self.blocks:
            block.compile(**compile_kwargs)
        self._output = torch.compile(self._logits_and_loss, **compile_kwargs)
        self._loss = torch.compile(self._head_loss, **compile_kwargs)
        self.compiled_regions = True  # evaluation then pads to a few shapes (evaluate.length_bucket)
        return self

    def vocab_pad_mask(self, device: torch.device) -> torch.Tensor:
        """``(padded_vocab_size,)`` bool, true on the padding ids."""
        return torch.arange(self.cfg.padded_vocab_size, device=device) >= self.cfg.vocab_size

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters, the tied (padded) embedding counted once (works on the meta device)."""
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


def _is_sharded(t: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of ``t`` (a DTensor's local shard, which in-place writes reach), else ``t``."""
    return t.to_local() if _is_sharded(t) else t


def _row_range(t: torch.Tensor) -> tuple[int, int]:
    """The global rows ``[start, stop)`` this rank holds of ``t``: all of a plain tensor, the local shard
    of a DTensor sharded on dim 0 (FSDP2's layout; anything else is refused)."""
    if not _is_sharded(t):
        return 0, t.shape[0]
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    if any(not (isinstance(p, Replicate) or (isinstance(p, Shard) and p.dim == 0)) for p in t.placements):
        raise ValueError(f"initialising a DTensor needs dim-0 sharding (FSDP2), not {t.placements}")
    shape, offset = compute_local_shape_and_global_offset(t.shape, t.device_mesh, t.placements)
    return int(offset[0]), int(offset[0]) + int(shape[0])


def _zero_rows_from(t: torch.Tensor, row: int) -> None:
    start, stop = _row_range(t)
    if row < stop:
        _local(t)[max(0, row - start) :].zero_()


# Random blocks of sharded_normal_: at most about 2^14 values and 1/64 of the parameter's rows, so a
# temporary block stays far below any shard
INIT_BLOCK_VALUES = 1 << 14
INIT_MIN_BLOCKS = 64


@torch.no_grad()
def sharded_normal_(t: torch.Tensor, std: float, *, seed: int, key: str) -> torch.Tensor:
    """Fill ``t`` (a plain tensor or an FSDP2 DTensor, dim-0 sharded) with N(0, std) draws that depend only on
    ``(seed, key, row)``: the rows are cut into fixed blocks (at most :data:`INIT_BLOCK_VALUES` values and
    1/:data:`INIT_MIN_BLOCKS` of the rows; the parameter's shape alone sets them), each drawn from its own generator seeded from ``(seed, key, block)``, and a rank draws only the blocks
    that overlap its shard. So a sharded model is materialised shard by shard (no rank ever holds a full
    parameter, torchtitan's meta-device order), reproducibly from the seed, with the same values at
    every world size; it is not the sequence torch's global generator gives an unsharded model."""
    import hashlib

    local = _local(t)
    start, stop = _row_range(t)
    if stop <= start:
        return t
    cols = max(1, math.prod(t.shape[1:]))
    rows = max(1, min(INIT_BLOCK_VALUES // cols, t.shape[0] // INIT_MIN_BLOCKS))
    gen = torch.Generator(device=local.device)
    for b in range(start // rows, -(-stop // rows)):
        lo, hi = b * rows, min((b + 1) * rows, t.shape[0])
        digest = hashlib.blake2b(f"{seed}:{key}:{b}".encode(), digest_size=8).digest()
        gen.manual_seed(int.from_bytes(digest, "little") >> 1)
        block = torch.empty((hi - lo, *t.shape[1:]), dtype=torch.float32, device=local.device)
        block.normal_(0.0, std, generator=gen)
        a, z = max(lo, start), min(hi, stop)
        local[a - start : z - start].copy_(block[a - lo : z - lo])
    return t


# Tokens per chunk of the fused head: about 2^24 logits (64 MB in fp32) at a time, whatever the vocabulary.
HEAD_CHUNK_LOGITS = 1 << 24


class _LinearCrossEntropy(torch.autograd.Function):
    """Sum (or mean) cross-entropy of ``scale * h @ weight.T`` against ``targets``, chunk by chunk over tokens.

    The gradients are computed in the forward pass, chunk by chunk (softmax minus one-hot, then two small
    matmuls), so neither the logits nor their softmax are kept for the backward pass: what is saved is
    ``grad_h`` (N x d) and ``grad_weight`` (V x d, accumulated in fp32). Backward only scales them by the
    incoming gradient. The same recipe as Liger's fused linear cross-entropy, in plain torch."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, scale: float, vocab_size: int,
                chunk: int, mean: bool) -> torch.Tensor:
        valid_all = targets != -100
        grad_h = torch.empty_like(h)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        for s in range(0, h.shape[0], chunk):
            hc, tc, valid = h[s : s + chunk], targets[s : s + chunk], valid_all[s : s + chunk]
            logits = F.linear(hc, weight)  # bf16 under autocast, as in the plain path
            lf = logits.float()
            if scale != 1.0:
                lf.mul_(scale)
            if vocab_size < lf.shape[1]:
                lf[:, vocab_size:] = float("-inf")
            lsm = torch.log_softmax(lf, dim=1)  # one fused kernel; its exp is the softmax the gradient needs
            del lf
            tgt = tc.clamp(min=0)
            nll = lsm.gather(1, tgt[:, None]).squeeze(1).neg_().masked_fill_(~valid, 0.0)
            total += nll.sum()
            # d(nll)/d(logits) = softmax - onehot (zero on ignored rows); times scale for the linear output
            g = lsm.exp_()
            g[torch.arange(g.shape[0], device=g.device), tgt] -= 1.0
            g.mul_(valid[:, None].to(g.dtype) * scale)
            gd = g.to(logits.dtype)
            grad_h[s : s + chunk] = (gd @ weight.to(gd.dtype)).to(h.dtype)
            grad_w += (gd.t() @ hc.to(gd.dtype)).float()
        # mean over the counted targets (0/0 = nan when none, as F.cross_entropy); a tensor: no host sync
        div = valid_all.sum().to(torch.float32) if mean else torch.ones((), device=h.device)
        ctx.save_for_backward(grad_h, grad_w, div)
        ctx.w_dtype = weight.dtype
        return total / div

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_h, grad_w, div = ctx.saved_tensors
        g = grad_out / div
        return (grad_h * g.to(grad_h.dtype)), (grad_w * g).to(ctx.w_dtype), None, None, None, None, None


def fused_linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *, scale: float = 1.0,
                               vocab_size: int | None = None, reduction: str = "mean",
                               chunk: int | None = None) -> torch.Tensor:
    """``F.cross_entropy(scale * h @ weight.T, targets, reduction)`` (rows ``vocab_size:`` of ``weight`` are
    padding: their logits count as ``-inf``; targets ``-100`` are ignored) without ever holding the
    ``(N, V)`` logits: ``chunk`` tokens at a time (default ~2^24 logits). With gradients ("mean"/"sum")
    they are computed during the forward pass (:class:`_LinearCrossEntropy`); without, or for "none", the
    chunks are scored and dropped. Numerically the plain path up to summation order."""
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', not {reduction!r}")
    vocab_size = weight.shape[0] if vocab_size is None else vocab_size
    chunk = chunk or max(1, HEAD_CHUNK_LOGITS // weight.shape[0])
    needs_grad = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)
    if needs_grad and reduction != "none":
        return _LinearCrossEntropy.apply(h, weight, targets, float(scale), int(vocab_size), int(chunk),
                                         reduction == "mean")
    if needs_grad:  # per-token losses with gradients: rare (not training); chunked, autograd keeps the logits
        parts = [_plain_ce(h[s : s + chunk], weight, targets[s : s + chunk], scale, vocab_size, "none")
                 for s in range(0, h.shape[0], chunk)]
        return torch.cat(parts) if parts else h.new_zeros(0, dtype=torch.float32)
    with torch.no_grad():
        parts = [_plain_ce(h[s : s + chunk], weight, targets[s : s + chunk], scale, vocab_size, "none")
                 for s in range(0, h.shape[0], chunk)]
    nll = torch.cat(parts) if parts else h.new_zeros(0, dtype=torch.float32)
    if reduction == "none":
        return nll
    if reduction == "sum":
        return nll.sum()
    return nll.sum() / (targets != -100).sum()


def _plain_ce(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, scale: float, vocab_size: int,
              reduction: str) -> torch.Tensor:
    logits = F.linear(h, weight).float()
    if scale != 1.0:
        logits = logits * scale
    if vocab_size < logits.shape[1]:
        logits = logits[:, :vocab_size]
    return F.cross_entropy(logits, targets, reduction=reduction)


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
