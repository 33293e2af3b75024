"""The muP coordinate check on the real model: per-layer activation scale across 4 widths over a few
training steps is flat under muP and grows with width under the standard parametrisation (SP)."""

from __future__ import annotations

import pytest
import torch

from slimpipe.train.mup import coord_check, proxy_config, width_exponents

WIDTHS = [64, 128, 256, 512]
VOCAB = 384


@pytest.fixture(scope="module")
def batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, VOCAB, (8, 65), generator=g) for _ in range(3)]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_proxy_config_scales_heads_and_keeps_head_size():
    cfg = proxy_config(256, vocab_size=VOCAB, head_dim=16, init_std=0.05)
    assert (cfg.n_head, cfg.head_dim, cfg.mup, cfg.mup_base_init_std) == (16, 16, True, 0.05)
    assert proxy_config(128, vocab_size=VOCAB, mup=False, init_std=0.01).init_std == 0.01
    with pytest.raises(ValueError, match="multiple of the head size"):
        proxy_config(100, vocab_size=VOCAB)


def test_coordinate_check_flat_under_mup_and_growing_under_sp(batches):
    lr = 6e-3  # the same peak LR for both (muP's base LR)
    mup = width_exponents(coord_check(WIDTHS, batches, mup=True, lr=lr, vocab_size=VOCAB))
    sp = width_exponents(coord_check(WIDTHS, batches, mup=False, lr=lr, vocab_size=VOCAB))
    report = "\n".join(f"{k:>10} muP {[round(a, 2) for a in mup[k]]}  SP {[round(a, 2) for a in sp[k]]}" for k in mup)
    # activation ~ width^a: muP keeps every hidden layer flat (|a| small) at init and after each step ...
    for layer in ("embedding", "block0", "block1"):
        assert all(abs(a) < 0.2 for a in mup[layer]), report
    # ... and its logits never grow with width (they start ~ width^-1/2: tied readout times base/width)
    assert all(a < 0.1 for a in mup["logits"]), report
    # SP: the blocks grow with width from init (fixed std 0.02: ~sqrt(width)) and faster after updates
    for layer in ("block0", "block1"):
        assert all(a > 0.4 for a in sp[layer]), report
        assert sp[layer][-1] > sp[layer][0] + 0.2, report
    assert sp["logits"][-1] > 0.4, report


def test_coordinate_check_catches_a_broken_mup(batches, monkeypatch):
    """Negative control: muP without its width-scaled hidden learning rate fails the flatness criterion."""
    from slimpipe.train.model import GPT

    full = GPT.param_groups

    def unscaled(self, lr, weight_decay):
        groups = full(self, lr, weight_decay)
        for g in groups:
            g["lr"], g["lr_scale"] = lr, 1.0
        return groups

    monkeypatch.setattr(GPT, "param_groups", unscaled)
    broken = width_exponents(coord_check(WIDTHS, batches, mup=True, lr=6e-3, vocab_size=VOCAB))
    assert abs(broken["embedding"][-1]) < 0.2  # the embedding's own LR never depended on width
    assert broken["block0"][-1] > 0.4 and broken["block1"][-1] > 0.4  # the hidden layers blow up with width
