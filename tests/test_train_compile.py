"""#20.1: what a compiled model sees. The attention mask is built once per forward pass outside any compiled
region and handed to every block as an argument (no cache lookup traced inside a block), and a whole
context-length run (several lengths, plain and interpolated slopes) pads to one grid of lengths, so a
compiled model compiles at most one graph per padded length over all of it. Counted with dynamo's
counters on the CPU (``compile_regions(backend="eager")``: dynamo's graph capture, without inductor)."""

from __future__ import annotations

import pytest
import torch

from slimpipe.train.data import Mix
from slimpipe.train.interp import context_length_eval, pad_lengths
from slimpipe.train.model import GPT, ModelConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(**{**dict(vocab_size=97, n_layer=2, n_head=4, d_model=32, d_ff=85, max_seq_len=32),
                              **kw})).eval()


@pytest.mark.parametrize("attention", ["sdpa", "flex"])
def test_each_block_takes_the_mask_of_the_forward_pass_as_an_argument(attention):
    """The mask a block gets is the one it uses: the model's own mask reproduces the model's forward, and
    another mask (here: a causal window of 4 keys) changes the block's output accordingly. The block reads
    no cache, so a compiled block cannot specialise on a cache lookup."""
    model = small(attention=attention)
    alibi, block = model.alibi, model.blocks[0]
    x = torch.randn(2, 32, 32)
    with torch.no_grad():
        mask = alibi.prepare(attention, 32, torch.float32, x.device)
        causal = block(x, alibi, mask)
        if attention == "flex":
            from torch.nn.attention.flex_attention import create_block_mask

            window = create_block_mask(lambda b, h, q, k: (q >= k) & (q - k < 4), None, None, 32, 32, device="cpu")
        else:
            keep = torch.ones(32, 32, dtype=torch.bool).tril() & ~torch.ones(32, 32, dtype=torch.bool).tril(-4)
            window = mask.masked_fill(~keep, float("-inf"))
        windowed = block(x, alibi, window)
        # reference for the windowed block: SDPA with the ALiBi bias restricted to the window
        from slimpipe.train.model import alibi_causal_bias

        bias = alibi_causal_bias(alibi.slopes, 32)
        keep = torch.ones(32, 32, dtype=torch.bool).tril() & ~torch.ones(32, 32, dtype=torch.bool).tril(-4)
        bias = bias.masked_fill(~keep, float("-inf"))[None]
        h = block.ln_1(x)
        attn = block.attn
        q, k, v = attn.qkv(h).view(2, 32, 3, 4, 8).permute(2, 0, 3, 1, 4)
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=attn.scale)
        ref = x + attn.proj(y.transpose(1, 2).reshape(2, 32, 32))
        ref = ref + block.mlp(block.ln_2(ref))
    torch.testing.assert_close(windowed, ref, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(windowed, causal, atol=1e-4)
    # and the model's forward is its blocks, each given the one mask prepare() built for the pass
    idx = torch.randint(0, 97, (2, 32))
    with torch.no_grad():
        h = model.wte(idx)
        for b in model.blocks:
            h = b(h, alibi, alibi.prepare(attention, 32, torch.float32, h.device))
        ref_logits = (model.ln_f(h) @ model.wte.weight.T)[..., :97]
        logits = model(idx)[0][..., :97]
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attention", ["sdpa", "flex"])
def test_a_whole_context_length_run_compiles_one_graph_per_padded_length(recipe_mixes, tmp_path, attention):
    """A full ALiBi context-length run (lengths 16..128 around a training length of 32, plain and
    interpolated slopes: 6 evaluations of documents of 1..300 tokens; flex: 32 and 64) on a compiled model compiles exactly
    one block graph and one head graph per padded length it meets, all from one grid, and gives the eager
    model's numbers. (Before: the SDPA mask was a slice of a max-length mask whose strides changed with the
    interpolation length, so the same padded length compiled again at every longer context.)"""
    import numpy as np
    import torch._dynamo as dynamo
    from torch._dynamo.testing import CompileCounter

    from slimpipe.mix.packed import PackedDataset
    from slimpipe.mix.packed_writer import PackedWriter

    mix = Mix.open(recipe_mixes["web"])
    vocab = mix.tokenizer().vocab_size
    rng = np.random.default_rng(0)
    with PackedWriter(tmp_path / "ev", 32, vocab_size=vocab, eos_id=0) as w:
        for n in rng.integers(1, 300, size=12 if attention == "flex" else 30):
            w.add(rng.integers(1, vocab, size=int(n)), int(n))
    sets = {"s": PackedDataset(tmp_path / "ev")}
    # flex: fewer lengths (dynamo traces its score_mod at every compile, which is slow on CPU)
    lengths = [16, 32, 64, 128] if attention == "sdpa" else [32, 64]
    grid = pad_lengths(lengths)
    assert grid == ([2, 4, 8, 16, 32, 64, 128] if attention == "sdpa" else [4, 8, 16, 32, 64])
    model = small(vocab_size=vocab, attention=attention)
    kw = dict(train_seq_len=32, mix=mix, batch_size=4)
    eager = context_length_eval(model, sets, lengths, **kw)
    seen: set[int] = set()
    model.register_forward_pre_hook(lambda m, args: seen.add(args[0].shape[1]))  # GPT.forward is not compiled
    counter = CompileCounter()
    dynamo.reset()
    try:
        with torch._dynamo.config.patch(recompile_limit=64):  # count every compile, never fall back to eager
            model.compile_regions(backend=counter, dynamic=False)
            got = context_length_eval(model, sets, lengths, **kw)
    finally:
        dynamo.reset()
    for variant in ("plain", "interpolated"):
        assert got["bpb"][variant]["total"] == pytest.approx(eager["bpb"][variant]["total"], rel=1e-5)
    assert seen <= set(grid) and len(seen) >= 2, seen
    # per padded length: one graph of the (shared) block code and one of the loss head, whatever the
    # context length or slopes it was met at
    assert counter.frame_count == 2 * len(seen), (counter.frame_count, sorted(seen))


def test_the_eager_flex_warning_is_never_swallowed():
    """torch warns once per process that eager FlexAttention materialises the full scores; slimpipe never
    filters it (#20.1). A filter on CPU calls would have used up that one warning, so a CUDA block that
    fell back to eager later in the process would run unfused without a word. Checked in a fresh process
    (the warning is once per process)."""
    import subprocess
    import sys

    code = (
        "import warnings, torch\n"
        "from slimpipe.train.model import GPT, ModelConfig\n"
        "with warnings.catch_warnings(record=True) as rec:\n"
        "    warnings.simplefilter('always')\n"
        "    m = GPT(ModelConfig(vocab_size=97, n_layer=1, n_head=2, d_model=16, d_ff=64, max_seq_len=16,\n"
        "                        attention='flex')).eval()\n"
        "    with torch.no_grad():\n"
        "        m(torch.zeros(1, 8, dtype=torch.long))\n"
        "print(sum('flex_attention called without torch.compile' in str(w.message) for w in rec))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "1", out.stdout
