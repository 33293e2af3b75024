"""``slimpipe tune`` on the embedded sample: a tiny muP sweep, the choice across widths, the preset it
writes (usable at another width), a rerun that reuses finished trials, and refused input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from slimpipe.cli import main
from slimpipe.train.loop import train
from slimpipe.train.plan import TrainConfig
from slimpipe.train.presets import load_preset
from slimpipe.train.tune import proxy_preset, summarise

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def mixes(recipe_mixes) -> dict[str, Path]:
    return recipe_mixes


def test_summarise_picks_the_point_closest_to_best_on_every_width():
    lrs, widths = [1e-3, 3e-3, 1e-2], [64, 128]
    bpb = {(64, 1e-3): 2.0, (64, 3e-3): 1.5, (64, 1e-2): 1.4,   # best at 1e-2 for the narrow proxy
           (128, 1e-3): 1.9, (128, 3e-3): 1.3, (128, 1e-2): math.inf}  # diverges at 1e-2 when wider
    trials = [{"width": w, "lr": lr, "init_std": 0.08, "bpb": v, "diverged": not math.isfinite(v)}
              for (w, lr), v in bpb.items()]
    r = summarise(trials, widths=widths, lrs=lrs, init_stds=[0.08], mup=True)
    assert r["best_per_width"]["64"]["lr"] == 1e-2 and r["best_per_width"]["128"]["lr"] == 3e-3
    assert r["best_lr_spread_steps"] == 1
    assert r["chosen"]["lr"] == 3e-3 and r["chosen"]["mean_excess_bpb"] == pytest.approx(0.05)


def test_proxy_preset_keeps_depth_and_head_size(mixes):
    p = proxy_preset(str(mixes["model"]), 128, mup=True, init_std=0.05, seq_len=32, batch_size=4)
    assert p["model"]["n_layer"] == 2 and p["model"]["n_head"] == 8 and p["model"]["d_model"] == 128
    assert p["model"]["mup"] is True and p["model"]["mup_base_init_std"] == 0.05 and p["model"]["d_ff"] == 320
    assert p["train"]["seq_len"] == 32 and p["train"]["batch_size"] == 4 and "lr" not in p["train"]
    with pytest.raises(ValueError, match="multiple of .* head size 16"):
        proxy_preset(str(mixes["model"]), 40, mup=True, init_std=0.08)


def test_tune_command_writes_a_preset_usable_at_any_width(mixes, tmp_path):
    out = tmp_path / "tune"
    args = ["tune", str(mixes["web"]), "--model", str(mixes["model"]), "--widths", "32,64", "--lrs", "1e-3,1e-2",
            "--init-stds", "0.04,0.08", "--steps", "4", "--seq-len", "32", "--batch-size", "4", "-o", str(out)]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    r = json.loads((out / "tune.json").read_text())
    assert len(r["trials"]) == 8 and r["parametrisation"] == "mup"
    assert all(0 < t["bpb"] < 20 and not t["diverged"] for t in r["trials"])
    assert set(r["best_per_width"]) == {"32", "64"}
    for w, b in r["best_per_width"].items():
        same = [t["bpb"] for t in r["trials"] if t["width"] == int(w)]
        assert b["bpb"] == min(same)
    preset = load_preset(out / "mup.yaml")
    assert preset.model.mup and preset.model.mup_base_lr == r["chosen"]["lr"]
    assert preset.model.mup_base_init_std == r["chosen"]["init_std"]
    assert "Best LR moves" in (out / "report.md").read_text() and "| 64 |" in (out / "report.md").read_text()
    # the preset at another width: only the shape changes, the tuned muP values stay
    wide = tmp_path / "wide.yaml"
    wide.write_text((out / "mup.yaml").read_text().replace("d_model: 64", "d_model: 96").replace("n_head: 4", "n_head: 6"))
    m = train(TrainConfig(mix_dir=str(mixes["web"]), out_dir=str(tmp_path / "wide-run"), model=str(wide), max_steps=2,
                          seq_len=32, batch_size=4, eval_interval=0, export=False))
    cfg = json.loads((tmp_path / "wide-run" / "config.json").read_text())["plan"]
    assert cfg["model"]["d_model"] == 96 and cfg["lr"] == r["chosen"]["lr"] and m["steps"] == 2
    # a rerun reuses every finished trial (same numbers, no new run folders)
    before = sorted(p.name for p in (out / "runs").iterdir())
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0, again.output
    assert json.loads((out / "tune.json").read_text())["trials"] == r["trials"]
    assert sorted(p.name for p in (out / "runs").iterdir()) == before


def test_tune_never_writes_into_a_users_folder(mixes, tmp_path):
    """OUT is claimed through slimpipe.outdir before any proxy trains: a user's folder is refused in one line
    naming what is there, and left as it was (--force too, when a name tune writes is there)."""
    user = tmp_path / "mine"
    user.mkdir()
    (user / "report.md").write_text("my notes")
    base = ["tune", str(mixes["web"]), "--model", str(mixes["model"]), "--widths", "32", "--lrs", "1e-3",
            "--steps", "1", "-o", str(user)]
    res = CliRunner().invoke(main, base)
    assert res.exit_code == 2 and "not a slimpipe output (it holds report.md)" in res.output, res.output
    res = CliRunner().invoke(main, [*base, "--force"])
    assert res.exit_code == 2 and "already holds report.md" in res.output, res.output
    assert [p.name for p in user.iterdir()] == ["report.md"] and (user / "report.md").read_text() == "my notes"


def test_tune_refuses_bad_grids_with_one_line(mixes, tmp_path):
    for extra, msg in [(["--widths", "40"], "head size"), (["--lrs", "fast"], "--lrs"),
                       (["--lrs", "0,1e-3"], "positive")]:
        res = CliRunner().invoke(main, ["tune", str(mixes["web"]), "--model", str(mixes["model"]), "-o",
                                        str(tmp_path / "t"), *extra])
        assert res.exit_code != 0 and msg in res.output and "Traceback" not in res.output, res.output
    bare = tmp_path / "bare"
    (bare / "train").mkdir(parents=True)
    for f in (mixes["web"] / "train").iterdir():
        (bare / "train" / f.name).write_bytes(f.read_bytes())
    res = CliRunner().invoke(main, ["tune", str(bare), "-o", str(tmp_path / "t2")])
    assert res.exit_code != 0 and "no held-out sets" in res.output, res.output
