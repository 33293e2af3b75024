"""Continual pretraining on the embedded sample: --init-from a run, forgetting per source, tokenizer
extension with mean-of-pieces embeddings, the embeddings-only adaptation phase, and refused inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from slimpipe.mix.packed import write_mix
from slimpipe.train.checkpoint import checkpoints, load_model_state
from slimpipe.train.continual import (
    extend_tokenizer,
    extend_tokenizer_command,
    init_from_run,
    is_extension,
    old_pieces,
)
from slimpipe.train.loop import train
from slimpipe.train.model import GPT, ModelConfig
from slimpipe.train.phases import open_training_data, recipe_summary
from slimpipe.train.plan import TrainConfig
from tests.recipes_fixtures import CODE, build_mixes, load_bpe, split_sample

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("continual")
    mixes = build_mixes(root)
    base = root / "base"
    train(TrainConfig(mix_dir=str(mixes["web"]), out_dir=str(base), model=str(mixes["model"]), max_steps=12,
                      eval_interval=0, export=False, checkpoint_interval=12, device="cpu"))
    return {**mixes, "root": root, "base": base}


def cfg(setup: dict, mix: Path, out: Path, **kw) -> TrainConfig:
    base = dict(mix_dir=str(mix), out_dir=str(out), model=str(setup["model"]), eval_interval=0, export=False,
                init_from=str(setup["base"]), warmup_steps=1, device="cpu")  # CPU even on a GPU machine
    base.update(kw)
    return TrainConfig(**base)


def test_init_from_continues_the_run_and_reports_forgetting(setup, tmp_path):
    out = tmp_path / "cont"
    m = train(cfg(setup, setup["code"], out, max_steps=6))
    base = json.loads((setup["base"] / "metrics.json").read_text())
    info = m["init_from"]
    assert info["run"] == str(setup["base"].resolve()) and info["step"] == 12
    assert info["vocab"] == {"run": 384, "this": 384, "added": 0}
    fg = info["forgetting"]
    assert set(fg) == {"c4", "github", "stackexchange", "total"}
    # the loaded weights are the base run's: on the held-out set both mixes share, "before" is its final number
    assert fg["c4"]["before"] == pytest.approx(base["eval"]["sources"]["c4"]["bpb"], rel=1e-6)
    for k, v in fg.items():
        after = m["eval"]["total"] if k == "total" else m["eval"]["sources"][k]
        assert v["after"] == pytest.approx(after["bpb"])
        assert v["delta"] == pytest.approx(v["after"] - v["before"])
    # training on the code-heavy mix helps the code sources from where the base run left them
    assert fg["github"]["delta"] < 0
    lines = recipe_summary(m)
    assert "(+ = forgotten)" in lines[0] and any(ln.strip().startswith("github") for ln in lines)
    # its own schedule: warmup from zero again, decay to zero
    lrs = [json.loads(ln)["lr"] for ln in (out / "train_log.jsonl").read_text().splitlines()]
    assert lrs[0] == pytest.approx(3e-3) and lrs[-1] == 0.0 and len(lrs) == 6
    assert json.loads((out / "metrics.json").read_text())["init_from"]["checkpoint"] == checkpoints(setup["base"])[-1].name


def test_tokenizer_extension_and_embeddings_only_adaptation(setup, tmp_path):
    bpe = load_bpe(setup["bpe"])
    train_texts, held = split_sample(setup["root"])
    code = [t for s in CODE for t in train_texts[s]]
    ext = extend_tokenizer(bpe, code, 40, tmp_path / "ext")
    assert ext.vocab_size == bpe.vocab_size + 40 and is_extension(bpe, ext) and not is_extension(ext, bpe)
    sample = code[0][:3000]
    assert len(ext.encode(sample)) < len(bpe.encode(sample)) and ext.decode(ext.encode(sample)) == sample
    pieces = old_pieces(bpe, ext)
    assert len(pieces) == 40 and all(len(p) >= 2 for p in pieces.values())
    for i, p in list(pieces.items())[:5]:  # the pieces spell the new token
        assert "".join(bpe.decode([j]) for j in p) == ext.decode([i])
    mix = tmp_path / "code-ext"
    write_mix(mix, code, {s: held[s] for s in ("github", "c4")}, ext, 64)

    # new rows start at the mean of their old pieces' embeddings; old rows are the base run's
    c = cfg(setup, mix, tmp_path / "probe", max_steps=1)
    data, evals, plan = open_training_data(c, 1, torch.device("cpu"))
    model = GPT(ModelConfig.from_dict(plan.model))
    info = init_from_run(model, setup["base"], data.train_set, mix, evals)
    assert info["vocab"] == {"run": 384, "this": 424, "added": 40}
    old = load_model_state(checkpoints(setup["base"])[-1])["wte.weight"]
    w = model.wte.weight.detach()
    assert torch.equal(w[:384], old[:384])
    for i, p in pieces.items():
        assert torch.allclose(w[i], old[p].mean(0))

    # the adaptation recipe: embeddings only, then everything, from the base run on the extended mix
    out = tmp_path / "adapt"
    m = train(cfg(setup, mix, out, phases=[{"mix": str(mix), "steps": 3, "train": "embeddings"},
                                          {"mix": str(mix), "steps": 3}]))
    assert [p["train"] for p in m["phases"]] == ["embeddings", "all"]
    assert m["init_from"]["vocab"]["added"] == 40 and set(m["init_from"]["forgetting"]) == {"github", "c4", "total"}

    # the command line: base given as a run folder's mix, sources as RedPajama-style files
    src = tmp_path / "src"
    src.mkdir()
    (src / "github.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in code[:20]))
    res = CliRunner().invoke(extend_tokenizer_command, [str(setup["web"]), str(src), "--new-tokens", "16",
                                                        "-o", str(tmp_path / "ext-cli")])
    assert res.exit_code == 0, res.output
    assert "384 -> 400 ids" in res.output and (tmp_path / "ext-cli" / "tokenizer.json").is_file()


def test_extend_tokenizer_never_overwrites_a_users_tokenizer(recipe_mixes, tmp_path):
    """OUT is claimed through slimpipe.outdir before any text is read: a folder holding the user's own
    tokenizer.json is refused in one line and left as it was; a new folder, and the same run again, are not."""
    from slimpipe.cli import main

    src = tmp_path / "src"
    src.mkdir()
    (src / "github.jsonl").write_text("".join(json.dumps({"text": f"def f{i}(x):\n    return x * {i}\n"}) + "\n"
                                              for i in range(30)))
    user = tmp_path / "mine"
    user.mkdir()
    (user / "tokenizer.json").write_text('{"mine": true}')
    base = ["extend-tokenizer", str(recipe_mixes["web"]), str(src), "--new-tokens", "8"]
    res = CliRunner().invoke(main, [*base, "-o", str(user)])
    assert res.exit_code == 2 and "not a slimpipe output (it holds tokenizer.json)" in res.output, res.output
    res = CliRunner().invoke(main, [*base, "-o", str(user), "--force"])
    assert res.exit_code == 2 and "already holds tokenizer.json" in res.output, res.output
    assert [p.name for p in user.iterdir()] == ["tokenizer.json"]
    assert (user / "tokenizer.json").read_text() == '{"mine": true}'
    for _ in range(2):  # a new folder is claimed; the same extension again is accepted
        res = CliRunner().invoke(main, [*base, "-o", str(tmp_path / "ext")])
        assert res.exit_code == 0 and (tmp_path / "ext" / "tokenizer.json").is_file(), res.output


def test_init_from_refuses_other_architecture_or_vocabulary(setup, tmp_path):
    wide = setup["root"] / "wide.yaml"
    wide.write_text(setup["model"].read_text().replace("d_model: 64", "d_model: 96"))
    with pytest.raises(ValueError, match=r"^--init-from .*different architecture \(d_model 64 vs 96"):
        train(cfg(setup, setup["code"], tmp_path / "a", max_steps=1, model=str(wide)))
    with pytest.raises(ValueError, match=r"^--init-from .*vocabulary differs \(run 384 ids, mix 300\)"):
        train(cfg(setup, setup["other"], tmp_path / "b", max_steps=1))
    with pytest.raises(ValueError, match="no checkpoint"):
        train(cfg(setup, setup["code"], tmp_path / "c", max_steps=1, init_from=str(tmp_path)))
    for d in ("a", "b", "c"):
        assert not (tmp_path / d / "train_log.jsonl").exists()
