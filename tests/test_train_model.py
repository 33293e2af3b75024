"""The model: ALiBi slopes and mask, causal masking, presets' parameter counts, init, muP, tying."""

from __future__ import annotations

import math

import pytest
import torch

from slimpipe.train.model import (
    GPT,
    ModelConfig,
    alibi_causal_bias,
    alibi_slopes,
    count_params_meta,
    resolve_attention,
    swiglu_width,
)
from slimpipe.train.presets import PRESET_NAMES, available_presets, load_preset


def small_cfg(**kw) -> ModelConfig:
    base = dict(vocab_size=97, n_layer=2, n_head=4, d_model=32, d_ff=85, max_seq_len=32)
    base.update(kw)
    return ModelConfig(**base)


# ---------------------------------------------------------------------------------------------- ALiBi

def test_alibi_slopes_power_of_two():
    assert alibi_slopes(8).tolist() == [2.0 ** -i for i in range(1, 9)]
    assert alibi_slopes(16).tolist() == pytest.approx([2.0 ** (-i / 2) for i in range(1, 17)])
    assert alibi_slopes(1).tolist() == [2.0 ** -8]


@pytest.mark.parametrize("n", [3, 6, 12, 17, 20])
def test_alibi_slopes_non_power_of_two(n):
    c = 2 ** int(math.floor(math.log2(n)))
    base = [2.0 ** (-8 * i / c) for i in range(1, c + 1)]
    doubled = [2.0 ** (-8 * i / (2 * c)) for i in range(1, 2 * c + 1)]
    expected = base + doubled[0::2][: n - c]
    assert alibi_slopes(n).tolist() == pytest.approx(expected, rel=1e-6)


def test_alibi_slopes_17_heads_of_256m():
    s = alibi_slopes(17).tolist()
    assert len(s) == 17 and len(set(s)) == 17
    assert s[:16] == pytest.approx([2 ** (-0.5 * i) for i in range(1, 17)])
    assert s[16] == pytest.approx(2 ** -0.25)  # first odd slope of the 32-head sequence


def test_alibi_bias_values():
    slopes = alibi_slopes(4)
    bias = alibi_causal_bias(slopes, 5)
    assert bias.shape == (4, 5, 5)
    for h in range(4):
        for i in range(5):
            for j in range(5):
                if j > i:
                    assert bias[h, i, j] == float("-inf")
                else:
                    assert bias[h, i, j].item() == pytest.approx(-slopes[h].item() * (i - j))


# ---------------------------------------------------------------------------------------------- masking

@pytest.mark.parametrize("attention", ["sdpa", "flex"])
def test_future_tokens_never_change_earlier_logits(attention):
    torch.manual_seed(0)
    model = GPT(small_cfg(attention=attention, n_head=3, d_model=48)).eval()
    x = torch.randint(0, 97, (2, 20))
    with torch.no_grad():
        base, _ = model(x)
        for t in (0, 7, 19):
            y = x.clone()
            y[:, t] = (y[:, t] + 1 + torch.arange(2)) % 97
            changed, _ = model(y)
            assert torch.equal(changed[:, :t], base[:, :t]), f"logits before position {t} changed"
            assert not torch.allclose(changed[:, t:], base[:, t:]), "the change did not reach later positions"


@pytest.mark.parametrize("mup", [False, True])
def test_flex_and_sdpa_agree_forward_on_cpu(mup):
    """FlexAttention has no CPU backward in torch (NotImplementedError), so on CPU only the forward is
    compared; tests/test_train_gpu.py compares forward and backward of every backend on CUDA."""
    torch.manual_seed(1)
    sdpa = GPT(small_cfg(n_head=17, d_model=68, attention="sdpa", mup=mup)).eval()
    flex = GPT(small_cfg(n_head=17, d_model=68, attention="flex", mup=mup)).eval()
    flex.load_state_dict(sdpa.state_dict())
    x = torch.randint(0, 97, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(flex(x)[0], sdpa(x)[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(flex(x[:, :9])[0], sdpa(x[:, :9])[0], rtol=1e-5, atol=1e-5)


def test_sdpa_mask_is_one_max_length_tensor_sliced_per_call():
    model = GPT(small_cfg(attention="sdpa", max_seq_len=32)).eval()
    with torch.no_grad():
        for T in (3, 17, 32, 5, 1):
            model(torch.zeros(1, T, dtype=torch.long))
    masks = model.alibi._masks
    assert len(masks) == 1 and next(iter(masks.values())).shape == (1, 4, 32, 32)
    sliced = model.alibi.mask(5, torch.float32, torch.device("cpu"))
    assert torch.equal(sliced[0], alibi_causal_bias(model.alibi.slopes, 5))
    model.generate(torch.zeros(1, 2, dtype=torch.long), max_new_tokens=40)  # crops at max_seq_len
    assert len(model.alibi._masks) == 1


def test_attention_backend_resolution():
    assert resolve_attention("auto", "cpu") == "sdpa"
    assert resolve_attention("flex", "cpu") == "flex" and resolve_attention("sdpa", "cuda:0") == "sdpa"
    with pytest.raises(ValueError, match="flash-attn"):
        resolve_attention("flash", "cpu")
    with pytest.raises(ValueError, match="attention must be one of"):
        small_cfg(attention="xformers")


# ---------------------------------------------------------------------------------------------- padded vocab

def test_vocab_padded_to_128_and_padding_logits_masked_everywhere():
    torch.manual_seed(0)
    cfg = small_cfg(vocab_size=97)
    assert cfg.padded_vocab_size == 128 and small_cfg(vocab_size=256).padded_vocab_size == 256
    assert ModelConfig(vocab_size=50257).padded_vocab_size == 50304
    model = GPT(cfg)
    assert model.wte.weight.shape == (128, 32)
    x = torch.randint(0, 97, (2, 12))
    logits, loss = model(x[:, :-1], x[:, 1:], return_logits=True)
    assert logits.shape[-1] == 128
    assert torch.all(logits[..., 97:] == float("-inf")) and torch.isfinite(logits[..., :97]).all()
    # the loss equals a cross-entropy over the real vocabulary only
    ref = torch.nn.functional.cross_entropy(logits[..., :97].reshape(-1, 97), x[:, 1:].reshape(-1))
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    loss.backward()
    assert model.wte.weight.grad[97:].abs().sum() == 0  # padding rows learn nothing
    assert torch.isfinite(model.wte.weight.grad).all()
    # generation and sampling never produce a padding id, even if those rows were huge
    with torch.no_grad():
        model.wte.weight[97:] = 100.0
    out = model.eval().generate(x[:, :3], max_new_tokens=8)
    assert int(out.max()) < 97
    probs = torch.softmax(model(x)[0], dim=-1)
    assert probs[..., 97:].sum() == 0 and torch.allclose(probs.sum(-1), torch.ones(2, 12))


def test_alibi_prefers_recent_tokens_without_position_embeddings():
    """With identical keys everywhere, ALiBi alone must put the most weight on the nearest key."""
    slopes = alibi_slopes(2)
    q = torch.ones(1, 2, 6, 4)
    k = torch.ones(1, 2, 6, 4)
    v = torch.eye(6)[None, None].expand(1, 2, 6, 6)[..., :6]
    w = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=alibi_causal_bias(slopes, 6)[None])
    last = w[0, :, -1]
    assert torch.all(last[:, 1:] > last[:, :-1])
    assert "wpe" not in dict(GPT(small_cfg()).named_parameters())


# ---------------------------------------------------------------------------------------------- presets

def expected_params(cfg: ModelConfig) -> int:
    d, f, L, V = cfg.d_model, cfg.d_ff, cfg.n_layer, cfg.padded_vocab_size
    attn = 3 * d * d + 3 * d + d * d + d
    mlp = d * 2 * f + 2 * f + f * d + d
    ln = 2 * d
    return V * d + L * (attn + mlp + 2 * ln) + ln


def test_all_presets_exist():
    assert set(PRESET_NAMES) <= set(available_presets())


@pytest.mark.parametrize("name", ["111m", "256m", "590m", "1.3b"])
def test_preset_parameter_counts_match_cerebras_gpt(name):
    preset = load_preset(name)
    cfg = preset.model
    assert cfg.vocab_size == 50257 and cfg.max_seq_len == 2048 and cfg.padded_vocab_size == 50304
    assert cfg.d_ff % 64 == 0 and cfg.d_ff == swiglu_width(cfg.d_model)  # 8/3 d to the nearest 64
    with torch.device("meta"):
        model = GPT(cfg)
    assert all(p.device.type == "meta" for p in model.parameters())  # nothing allocated
    n = count_params_meta(cfg)
    assert n == model.num_params() == expected_params(cfg)
    assert abs(n / preset.published_params - 1) < 0.02, f"{name}: {n:,} vs {preset.published_params:,}"


def test_cerebras_sizes_in_presets():
    table = {"111m": (10, 768, 12, 120, 6e-4), "256m": (14, 1088, 17, 264, 6e-4),
             "590m": (18, 1536, 12, 264, 2e-4), "1.3b": (24, 2048, 16, 528, 2e-4)}
    for name, (layers, width, heads, batch, lr) in table.items():
        p = load_preset(name)
        assert (p.model.n_layer, p.model.d_model, p.model.n_head) == (layers, width, heads)
        assert (p.train["batch_size"], p.train["lr"], p.train["seq_len"]) == (batch, lr, 2048)


def test_tiny_preset_is_a_few_million_parameters():
    n = count_params_meta(load_preset("tiny").model)
    assert 1e6 < n < 1e7


def test_preset_from_yaml_path(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\nmodel: {n_layer: 1, d_model: 16, n_head: 2, d_ff: 42}\n"
                    "train: {lr: 1e-3, tokens: 2e6}\n")
    p = load_preset(path)
    assert p.name == "mine" and p.model.d_ff == 42
    assert p.train["lr"] == 1e-3 and p.train["tokens"] == 2_000_000
    path.write_text("model: {n_layers: 3}\n")
    with pytest.raises(ValueError, match="unknown model fields"):
        load_preset(path)
    with pytest.raises(ValueError, match="unknown model preset"):
        load_preset("7b")


# ---------------------------------------------------------------------------------------------- init, muP, tying

def test_cerebras_init():
    torch.manual_seed(0)
    cfg = small_cfg(d_model=256, n_head=4, d_ff=682, n_layer=4, vocab_size=4000)
    model = GPT(cfg)
    out_std = 0.02 / math.sqrt(2 * cfg.n_layer)
    assert model.wte.weight[: cfg.vocab_size].std().item() == pytest.approx(0.02, rel=0.05)
    assert model.blocks[0].attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.blocks[1].attn.proj.weight.std().item() == pytest.approx(out_std, rel=0.05)
    assert model.blocks[2].mlp.down.weight.std().item() == pytest.approx(out_std, rel=0.05)
    assert torch.count_nonzero(model.blocks[0].attn.qkv.bias) == 0
    assert torch.all(model.ln_f.weight == 1)


def test_tied_embeddings_receive_output_gradients():
    torch.manual_seed(0)
    model = GPT(small_cfg())
    assert sum(p.numel() for p in model.parameters() if p.shape == (128, 32)) == 128 * 32  # padded 97
    x = torch.randint(0, 97, (1, 8))
    _, loss = model(x[:, :-1], x[:, 1:])
    loss.backward()
    unused = sorted(set(range(97)) - set(x.flatten().tolist()))
    # rows of tokens never seen as inputs still get gradient: through the output projection
    assert model.wte.weight.grad[unused].abs().sum() > 0


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    a = GPT(small_cfg())
    b = GPT(small_cfg())
    b.load_state_dict(a.state_dict())
    b.activation_checkpointing = True
    x = torch.randint(0, 97, (2, 16))
    for m in (a, b):
        m(x[:, :-1], x[:, 1:])[1].backward()
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_mup_multipliers_and_learning_rates():
    cfg = small_cfg(d_model=512, n_head=8, d_ff=1365, mup=True)
    model = GPT(cfg)
    assert cfg.width_mult == 2.0
    assert model.embed_mult == 10.0 and model.logit_mult == 0.5
    assert model.blocks[0].attn.scale == 1.0 / cfg.head_dim
    groups = model.param_groups(lr=1e-2, weight_decay=0.1)
    by_scale = {g["lr_scale"]: g for g in groups if g["weight_decay"] > 0}
    hidden = {id(p) for p in by_scale[0.5]["params"]}
    assert id(model.blocks[0].attn.qkv.weight) in hidden and id(model.wte.weight) not in hidden
    assert by_scale[0.5]["lr"] == pytest.approx(5e-3)
    no_decay = [g for g in groups if g["weight_decay"] == 0]
    assert all(p.dim() == 1 for g in no_decay for p in g["params"])
    torch.manual_seed(0)
    model.reset_parameters()
    assert model.wte.weight[: cfg.vocab_size].std().item() == pytest.approx(0.08, rel=0.05)
    assert model.blocks[0].attn.qkv.weight.std().item() == pytest.approx(0.08 / math.sqrt(2), rel=0.05)
    assert cfg.mup_base_lr == 6e-3  # Cerebras-GPT-muP's base LR, used by --mup unless --lr is given


def test_loss_reductions_agree():
    torch.manual_seed(0)
    model = GPT(small_cfg()).eval()
    x = torch.randint(0, 97, (3, 17))
    with torch.no_grad():
        _, mean = model(x[:, :-1], x[:, 1:])
        _, total = model(x[:, :-1], x[:, 1:], reduction="sum")
        _, each = model(x[:, :-1], x[:, 1:], reduction="none")
    assert total.item() == pytest.approx(mean.item() * 48, rel=1e-5)
    assert each.shape == (48,) and each.sum().item() == pytest.approx(total.item(), rel=1e-5)
    assert math.log(97) - 1 < mean.item() < math.log(97) + 1  # fresh init predicts ~uniformly


@pytest.mark.parametrize("mup", [False, True])
def test_fused_head_equals_the_plain_logits_path(mup, monkeypatch):
    """#20.3: training and evaluation never build (B, T, vocab) logits; the chunked linear + cross-entropy
    gives the plain path's loss and gradients (padded vocabulary, muP logit scale, ignored targets, several
    chunks), and the same per-token and summed losses without gradients."""
    import slimpipe.train.model as model_mod

    torch.manual_seed(0)
    plain, fused = GPT(small_cfg(mup=mup, mup_base_width=16)), GPT(small_cfg(mup=mup, mup_base_width=16))
    fused.load_state_dict(plain.state_dict())
    monkeypatch.setattr(model_mod, "HEAD_CHUNK_LOGITS", 7 * 128)  # 7 tokens a chunk: 5 chunks of 34 tokens
    x = torch.randint(0, 97, (2, 18))
    y = x[:, 1:].clone()
    y[0, :4] = -100
    logits, ref = plain(x[:, :-1], y, return_logits=True)
    none, loss = fused(x[:, :-1], y)
    assert logits is not None and none is None
    ref.backward()
    loss.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    for (name, p), q in zip(plain.named_parameters(), fused.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-6, msg=name)
    assert fused.wte.weight.grad[97:].abs().sum() == 0  # padding rows learn nothing
    with torch.no_grad():
        for reduction in ("sum", "none"):
            _, a = plain(x[:, :-1], y, reduction=reduction, return_logits=True)
            _, b = fused(x[:, :-1], y, reduction=reduction)
            torch.testing.assert_close(b.view(-1), a.view(-1), rtol=1e-6, atol=1e-6)


def test_fused_head_keeps_no_logits_for_backward():
    """What autograd saves for the backward pass holds no tensor with vocab-size rows per token."""
    torch.manual_seed(0)
    model = GPT(small_cfg(vocab_size=1000))
    x = torch.randint(0, 1000, (4, 30))
    shapes: list[tuple] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: shapes.append(tuple(t.shape)) or t, lambda t: t):
        _, loss = model(x[:, :-1], x[:, 1:])
    assert all(not (len(s) >= 2 and s[-1] == 1024 and math.prod(s[:-1]) == 4 * 29) for s in shapes), shapes
    with torch.autograd.graph.saved_tensors_hooks(lambda t: shapes.append(tuple(t.shape)) or t, lambda t: t):
        model(x[:, :-1], x[:, 1:], return_logits=True)
    assert any(len(s) >= 2 and s[-1] == 1024 and math.prod(s[:-1]) == 4 * 29 for s in shapes)  # the plain path does


def test_context_longer_than_trained_is_refused():
    model = GPT(small_cfg(max_seq_len=8))
    with pytest.raises(ValueError):
        model(torch.zeros(1, 9, dtype=torch.long))


@pytest.mark.parametrize("attention", ["sdpa", "flex"])
def test_compiled_model_has_one_graph_break_and_the_same_loss(attention):
    """Mask caches are built in AlibiBias.prepare, outside the graph: torch.compile traces every layer in
    one graph (the single break is prepare itself). Flex is checked without gradients (no CPU backward)."""
    import torch._dynamo as dynamo

    torch.manual_seed(0)
    model = GPT(small_cfg(attention=attention))
    x = torch.randint(0, 97, (2, 17))
    with torch.set_grad_enabled(attention == "sdpa"):
        explained = dynamo.explain(model)(x[:, :-1], x[:, 1:])
        assert explained.graph_break_count == 1, [str(r.reason)[:200] for r in explained.break_reasons]
        dynamo.reset()
        ref = model(x[:, :-1], x[:, 1:])[1]
        got = torch.compile(model, backend="aot_eager")(x[:, :-1], x[:, 1:])[1]
    assert got.item() == pytest.approx(ref.item(), rel=1e-6)
    dynamo.reset()


def test_regional_compilation_matches_eager_forward_and_backward():
    import torch._dynamo as dynamo

    torch.manual_seed(0)
    eager = GPT(small_cfg(attention="sdpa", n_layer=3))
    compiled = GPT(small_cfg(attention="sdpa", n_layer=3))
    compiled.load_state_dict(eager.state_dict())
    compiled.compile_regions(backend="aot_eager")
    x = torch.randint(0, 97, (2, 17))
    losses = []
    for m in (eager, compiled):
        logits, loss = m(x[:, :-1], x[:, 1:], return_logits=True)
        loss.backward()
        losses.append(loss.item())
        assert torch.all(logits[..., 97:] == float("-inf"))
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7, msg=name)
    assert set(compiled.state_dict()) == set(eager.state_dict())  # compiling does not rename weights
    dynamo.reset()


def test_a_full_evaluation_compiles_at_most_one_graph_per_length_bucket(tmp_path):
    """#20.1: evaluation pads each batch to one of 4 lengths, so a compiled model (FlexAttention on CUDA)
    compiles at most 4 graphs over a whole evaluation, instead of one per window length (and past
    recompile_limit, an unfused eager fallback). Counted with dynamo's counters on CPU through the SDPA path
    (FlexAttention has no CPU backward and compiling it on CPU is slow), static shapes as on CUDA's flex."""
    import numpy as np
    import torch._dynamo as dynamo

    from slimpipe.mix.packed import PackedDataset
    from slimpipe.mix.packed_writer import PackedWriter
    from slimpipe.train.evaluate import evaluate_documents

    rng = np.random.default_rng(0)
    with PackedWriter(tmp_path / "ev", 32, vocab_size=97, eos_id=0) as w:  # documents of 1..40 tokens
        for n in rng.integers(1, 41, size=60):
            w.add(rng.integers(1, 97, size=int(n)), int(n))
    ds = PackedDataset(tmp_path / "ev")
    torch.manual_seed(0)
    model = GPT(small_cfg(attention="sdpa"))
    plain, _ = evaluate_documents(model, {"s": ds}, seq_len=32, batch_size=4, byte_lengths=np.ones(97, np.int64))
    dynamo.reset()
    dynamo.utils.counters.clear()
    model.compile_regions(backend="eager", dynamic=False)
    got, _ = evaluate_documents(model, {"s": ds}, seq_len=32, batch_size=4, byte_lengths=np.ones(97, np.int64))
    graphs = dynamo.utils.counters["stats"]["unique_graphs"]
    dynamo.reset()
    assert got["total"]["nll"] == pytest.approx(plain["total"]["nll"], rel=1e-5)
    # one graph per bucket for the blocks (one compiled block serves all layers) and per bucket for the head
    assert 0 < graphs <= 2 * 4, graphs
