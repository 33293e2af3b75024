"""Multi-phase training on the embedded sample: one LR schedule, per-phase context, bitwise resume across
a phase boundary, the metrics ``phases`` list, compare's boundary marks, and bad phases files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from slimpipe.train.checkpoint import checkpoints, load_model_state
from slimpipe.train.command import train_command
from slimpipe.train.loop import train
from slimpipe.train.phases import load_phases, phase_boundaries, recipe_inputs
from slimpipe.train.plan import LRSchedule, TrainConfig
from tests.recipes_fixtures import assert_resumed_run_equals, read_jsonl

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def mixes(recipe_mixes) -> dict[str, Path]:
    return recipe_mixes


def write_phases(path: Path, phases: list[dict]) -> Path:
    import yaml

    path.write_text(yaml.safe_dump({"phases": phases}))
    return path


def cfg(mixes: dict[str, Path], out: Path, phases: list[dict], **kw) -> TrainConfig:
    base = dict(mix_dir=str(phases[-1]["mix"]), out_dir=str(out), model=str(mixes["model"]), eval_sequences=4,
                eval_interval=0, export=False, phases=phases, device="cpu")  # CPU even on a GPU machine
    base.update(kw)
    return TrainConfig(**base)


def test_phases_resume_across_boundary_bitwise(mixes, tmp_path):
    # BTLM-style: a short-context phase on the web mix, then full context on the code-heavier mix
    phases = load_phases(write_phases(tmp_path / "phases.yaml", [
        {"mix": str(mixes["web"]), "steps": 4, "seq_len": 32, "name": "web-32"},
        {"mix": str(mixes["code"]), "steps": 3, "name": "code-64"}]))
    kw = dict(checkpoint_interval=2, keep_checkpoints=10, warmup_steps=2)
    full = tmp_path / "full"
    metrics = train(cfg(mixes, full, phases, **kw))
    assert [p.name for p in checkpoints(full)] == [f"step_{s:07d}" for s in (2, 4, 6, 7)]

    # one schedule over all 7 steps: warmup 2, linear decay to zero at step 7, no restart at the boundary
    steps = read_jsonl(full / "train_log.jsonl")
    sched = LRSchedule(2, 7, "linear")
    assert [s["lr"] for s in steps] == pytest.approx([3e-3 * sched(i) for i in range(7)])
    assert steps[-1]["lr"] == 0.0
    # tokens per step follow each phase's context: 8 sequences x 32, then x 64
    assert [s["tokens"] for s in steps] == [256, 512, 768, 1024, 1536, 2048, 2560]
    assert metrics["tokens"] == 2560 and metrics["steps"] == 7
    ph = metrics["phases"]
    assert [(p["name"], p["seq_len"], p["start_step"], p["end_step"]) for p in ph] == [
        ("web-32", 32, 0, 4), ("code-64", 64, 4, 7)]
    assert (ph[1]["start_tokens"], ph[1]["end_tokens"]) == (1024, 2560)
    assert ph[0]["mix"] == str(mixes["web"]) and ph[1]["mix"] == str(mixes["code"])
    # held-out sets of both mixes are scored, so a shift away from a mix's sources shows
    assert set(metrics["eval"]["sources"]) == {"c4", "wikipedia", "github", "stackexchange"}
    assert phase_boundaries(json.loads((full / "metrics.json").read_text())) == [(1024.0, "code-64")]

    # "kill" after the step-2 checkpoint (inside phase 1), resume: the run crosses the boundary again
    cut = tmp_path / "cut"
    shutil.copytree(full, cut)
    for s in (4, 6, 7):
        shutil.rmtree(cut / "checkpoints" / f"step_{s:07d}")
    (cut / "metrics.json").unlink()
    train(cfg(mixes, cut, phases, resume=True, **kw))
    assert_resumed_run_equals(full, cut, "step_0000007")
    # a changed phase list is not silently resumed
    other = [dict(phases[0], steps=3), phases[1]]
    with pytest.raises(ValueError, match="cannot resume"):
        train(cfg(mixes, cut, other, resume=True, **kw))


def test_embeddings_only_phase_trains_only_the_embedding(mixes, tmp_path):
    phases = load_phases(write_phases(tmp_path / "p.yaml", [
        {"mix": str(mixes["code"]), "steps": 2, "train": "embeddings"},
        {"mix": str(mixes["code"]), "steps": 2}]))  # (step 4, the last, has LR zero)
    out = tmp_path / "run"
    train(cfg(mixes, out, phases, checkpoint_interval=1, keep_checkpoints=5, warmup_steps=0))
    s0, s2, s3 = (load_model_state(out / "checkpoints" / f"step_{s:07d}") for s in (1, 2, 3))
    for k in s0:
        moved12 = not torch.equal(s0[k], s2[k])
        assert moved12 == k.startswith("wte"), k  # phase 1 moves the (tied) embedding only
    assert not torch.equal(s2["blocks.0.mlp.down.weight"], s3["blocks.0.mlp.down.weight"])  # phase 2: all


def test_bad_phases_fail_before_training_with_one_line(mixes, tmp_path):
    out = tmp_path / "never"
    missing = [{"mix": str(mixes["web"]), "steps": 2}, {"mix": str(tmp_path / "nope"), "steps": 2}]
    with pytest.raises(ValueError, match=r"^phase 2 \(phase2\): mix .*nope does not exist$"):
        train(cfg(mixes, out, load_phases(write_phases(tmp_path / "a.yaml", missing))))
    mixed = [{"mix": str(mixes["web"]), "steps": 2}, {"mix": str(mixes["other"]), "steps": 2}]
    with pytest.raises(ValueError, match="^phases use different tokenizers: phase1 .* phase2 "):
        train(cfg(mixes, out, load_phases(write_phases(tmp_path / "b.yaml", mixed))))
    assert not out.exists()
    for bad, msg in [([{"mix": "x", "tokens": 5, "steps": 1}], "exactly one of"),
                     ([{"mix": "x", "steps": 1, "lr": 3}], "unknown keys"),
                     ([{"mix": "x", "steps": 1, "train": "heads"}], "train: must be"),
                     ([{"mix": "x", "steps": "many"}], "not a positive count")]:
        with pytest.raises(ValueError, match=msg):
            load_phases(write_phases(tmp_path / "c.yaml", bad))
    (tmp_path / "d.yaml").write_text("phases: [")
    with pytest.raises(ValueError, match="d.yaml"):
        load_phases(tmp_path / "d.yaml")
    with pytest.raises(ValueError, match="not both"):
        recipe_inputs(str(mixes["web"]), str(tmp_path / "a.yaml"), None)
    # through the command line: one line, no traceback
    res = CliRunner().invoke(train_command, ["--phases", str(tmp_path / "b.yaml"), "--model", str(mixes["model"]),
                                             "-o", str(out)])
    assert res.exit_code != 0 and "different tokenizers" in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_cli_phases_with_relative_mix_paths(mixes, tmp_path):
    yaml_path = mixes["web"].parent / "btlm.yaml"
    yaml_path.write_text("phases:\n  - {mix: web, tokens: 512, seq_len: 32}\n  - {mix: code, steps: 1}\n")
    out = tmp_path / "cli"
    res = CliRunner().invoke(train_command, ["--phases", str(yaml_path), "--model", str(mixes["model"]),
                                             "-o", str(out), "--eval-sequences", "2", "--no-compile", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert [p["steps"] for p in metrics["phases"]] == [2, 1] and metrics["tokens"] == 2 * 256 + 512
    assert "phases: phase1 (2 steps, seq_len 32) -> phase2 (1 steps, seq_len 64)" in res.output
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["mix_dir"] == str(mixes["code"]) and len(config["phases"]) == 2


def test_compare_marks_phase_boundaries_on_the_curves(mixes, tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from slimpipe.report.compare import write_compare_report
    from slimpipe.train import phases as phases_mod

    phases = load_phases(write_phases(tmp_path / "p.yaml", [
        {"mix": str(mixes["web"]), "steps": 2, "seq_len": 32, "name": "short"},
        {"mix": str(mixes["code"]), "steps": 1, "name": "long"}]))
    run = tmp_path / "run"
    metrics = train(cfg(mixes, run, phases))
    fig, ax = plt.subplots()
    phases_mod.draw_phase_boundaries(ax, metrics)
    assert [tuple(line.get_xdata()) for line in ax.lines] == [(512.0, 512.0)]
    assert [t.get_text() for t in ax.texts] == ["long"]
    plt.close(fig)
    drawn: list[float] = []
    real = phases_mod.draw_phase_boundaries
    monkeypatch.setattr(phases_mod, "draw_phase_boundaries",
                        lambda ax, m, color=None: (drawn.extend(t for t, _ in phases_mod.phase_boundaries(m)),
                                                   real(ax, m, color)))
    write_compare_report([run], tmp_path / "report")
    assert (tmp_path / "report" / "plots" / "curves.png").is_file()
    assert drawn == [512.0, 512.0]  # training-loss and bits-per-byte panels
