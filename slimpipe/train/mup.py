"""The muP coordinate check: does every layer's activation scale stay put as the model gets wider?

muP (Yang et al., "Tensor Programs V"; Cerebras-GPT-muP and BTLM use it) scales initialisation, learning
rates and multipliers with width so that a training step changes every activation coordinate by the same
order of magnitude at any width; then hyperparameters tuned on a narrow proxy transfer to the wide
model. The check that this holds (the paper's "coordinate check") trains models of several widths for a
few steps from the same data and records the mean absolute value of each layer's output coordinates:
under muP the curves are flat in width; under the standard parametrisation (SP) with the same learning
rate the later layers and the logits grow with width, roughly in proportion, after the first update.

:func:`coord_check` is that measurement on :class:`slimpipe.train.model.GPT` (whose ``mup`` switch holds
the multipliers) and :func:`width_exponents` the summary (the power of width each layer's scale follows).
"""

from __future__ import annotations

import torch

from slimpipe.train.model import GPT, ModelConfig, swiglu_width


def proxy_config(width: int, *, vocab_size: int, n_layer: int = 2, head_dim: int = 16, seq_len: int = 64,
                 mup: bool = True, base_width: int = 256, init_std: float | None = None, **kw: object) -> ModelConfig:
    """A model of ``width`` with fixed depth and head size (heads grow with width, as in muP proxies).
    ``init_std`` is the muP base std (``mup_base_init_std``) with muP, the plain std without."""
    if width % head_dim:
        raise ValueError(f"width {width} is not a multiple of the head size {head_dim}")
    extra: dict = dict(kw)
    if init_std is not None:
        extra["mup_base_init_std" if mup else "init_std"] = float(init_std)
    return ModelConfig(vocab_size=vocab_size, n_layer=n_layer, n_head=width // head_dim, d_model=width,
                       d_ff=swiglu_width(width, 16), max_seq_len=seq_len, mup=mup, mup_base_width=base_width,
                       **extra)  # type: ignore[arg-type]


def layer_names(n_layer: int) -> list[str]:
    return ["embedding"] + [f"block{i}" for i in range(n_layer)] + ["logits"]


def coord_check(widths: list[int], batches: list[torch.Tensor], *, mup: bool, lr: float, vocab_size: int,
                n_layer: int = 2, head_dim: int = 16, base_width: int = 256, seed: int = 0,
                ) -> dict[str, dict[int, list[float]]]:
    """``{layer: {width: [mean |coordinate| at step 0, 1, ..., len(batches)]}}``.

    Each width starts from ``seed`` and takes one AdamW step (no weight decay, the model's own muP
    learning-rate groups) per batch of ``batches`` (``(B, T + 1)`` token ids); the activations are
    measured on the first batch before the first step and after every step.
    """
    out: dict[str, dict[int, list[float]]] = {n: {} for n in layer_names(n_layer)}
    for w in widths:
        torch.manual_seed(seed)
        cfg = proxy_config(w, vocab_size=vocab_size, n_layer=n_layer, head_dim=head_dim,
                           seq_len=batches[0].shape[1] - 1, mup=mup, base_width=base_width, attention="sdpa")
        for name, values in _trajectory(GPT(cfg), batches, lr, vocab_size).items():
            out[name][w] = values
    return out


def _trajectory(model: GPT, batches: list[torch.Tensor], lr: float, vocab_size: int) -> dict[str, list[float]]:
    opt = torch.optim.AdamW(model.param_groups(lr, 0.0), lr=lr, betas=(0.9, 0.95), eps=1e-8)
    seen: dict[str, float] = {}
    values: dict[str, list[float]] = {}
    mult = model.embed_mult
    hooks = [model.wte.register_forward_hook(
        lambda m, i, o: seen.__setitem__("embedding", float((o.detach() * mult).abs().mean())))]
    for b, block in enumerate(model.blocks):
        hooks.append(block.register_forward_hook(
            lambda m, i, o, b=b: seen.__setitem__(f"block{b}", float(o.detach().abs().mean()))))

    def measure() -> None:
        model.eval()
        with torch.no_grad():
            logits, _ = model(batches[0][:, :-1])
        seen["logits"] = float(logits[..., :vocab_size].abs().mean())
        for name, v in seen.items():
            values.setdefault(name, []).append(v)
        model.train()

    measure()
    for batch in batches:
        _, loss = model(batch[:, :-1], batch[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        measure()
    for h in hooks:
        h.remove()
    return values


def width_exponents(result: dict[str, dict[int, list[float]]]) -> dict[str, list[float]]:
    """Per layer and step: the least-squares slope of log(mean |coordinate|) against log(width), i.e. the
    ``a`` in ``activation ~ width^a``: 0 is flat (muP's promise), 0.5-1 is SP's growth."""
    import numpy as np

    out = {}
    for name, by_width in result.items():
        widths = sorted(by_width)
        x = np.log(widths)
        steps = len(by_width[widths[0]])
        out[name] = [float(np.polyfit(x, np.log([by_width[w][t] for w in widths]), 1)[0]) for t in range(steps)]
    return out
