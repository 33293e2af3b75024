"""ALiBi position interpolation on the embedded sample: bits per byte at several context lengths, with and
without slope interpolation, in metrics.json and a plot in the run folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from slimpipe.train.command import train_command
from slimpipe.train.interp import alibi_context, interpolation_scale
from slimpipe.train.model import GPT, ModelConfig, alibi_causal_bias

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def mixes(recipe_mixes) -> dict[str, Path]:
    return recipe_mixes


def test_interpolated_slopes_map_long_distances_onto_trained_ones():
    assert interpolation_scale(256, 64) == 4.0 and interpolation_scale(32, 64) == 1.0
    model = GPT(ModelConfig(vocab_size=100, n_layer=1, n_head=4, d_model=32, d_ff=64, max_seq_len=16)).eval()
    x = torch.randint(0, 100, (1, 64))
    with pytest.raises(ValueError, match="exceeds max_seq_len"):
        model(x)
    slopes = model.alibi.slopes.clone()
    before = model(x[:, :16])[0]
    with alibi_context(model, 64, interpolation_scale(64, 16)):
        assert torch.allclose(model.alibi.slopes, slopes / 4)
        # the bias at distance 4d under interpolation is the trained bias at distance d
        long = alibi_causal_bias(model.alibi.slopes, 64)
        short = alibi_causal_bias(slopes, 16)
        assert torch.allclose(long[:, 60, 60 - 4 * 15], short[:, 15, 0])
        assert model(x)[0].shape == (1, 64, model.cfg.padded_vocab_size)
    # restored exactly: same slopes, same function, same length limit
    assert torch.equal(model.alibi.slopes, slopes) and torch.equal(model(x[:, :16])[0], before)
    with pytest.raises(ValueError, match="exceeds max_seq_len"):
        model(x)


def test_eval_seq_lens_reports_bpb_per_length_plain_and_interpolated(mixes, tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(train_command, [
        str(mixes["web"]), "--model", str(mixes["model"]), "-o", str(out), "--max-steps", "12", "--seq-len", "32",
        "--eval-interval", "0", "--eval-seq-lens", "64,16,32,128", "--no-compile", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    cl = m["context_length"]
    assert cl["train_seq_len"] == 32 and cl["lengths"] == [16, 32, 64, 128]
    assert cl["slope_scale"] == [1.0, 1.0, 2.0, 4.0]
    plain, interp = cl["bpb"]["plain"], cl["bpb"]["interpolated"]
    assert set(plain) == {"c4", "wikipedia", "total"} == set(interp)
    for name in plain:
        assert all(0 < v < 10 for v in plain[name] + interp[name])
        assert plain[name][:2] == interp[name][:2]  # up to the training length: the same model
        assert plain[name][2:] != interp[name][2:]  # beyond it the slopes differ, and so do the numbers
    # at the training length this is exactly the final per-document evaluation
    assert plain["total"][1] == pytest.approx(m["eval_docs"]["total"]["bpb"], rel=1e-9)
    assert (out / "context_length.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "by context length (trained at 32)" in res.output and "    128" in res.output
    # compare plots the same numbers across runs
    from slimpipe.report.compare import write_compare_report

    write_compare_report([out], tmp_path / "report")
    assert (tmp_path / "report" / "plots" / "context_length.png").read_bytes()[:4] == b"\x89PNG"
    assert "plots/context_length.png" in (tmp_path / "report" / "report.md").read_text()
    bad = CliRunner().invoke(train_command, [str(mixes["web"]), "-o", str(tmp_path / "x"), "--eval-seq-lens", "a,b"])
    assert bad.exit_code != 0 and "--eval-seq-lens" in bad.output
