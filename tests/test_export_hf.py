"""``slimpipe export --format hf``: the folder loads offline in transformers and reproduces slimpipe."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from export_fixtures import OFFLINE, TASKS_DIR, make_run, real_texts

from slimpipe.evaluation.command import eval_command, export_command
from slimpipe.hf.export import export_hf
from slimpipe.mix.tokenizer import GPT2Tokenizer
from slimpipe.train import model as model_module
from slimpipe.train.export import ExportError, export_model, load_run
from slimpipe.train.model import GPT, ModelConfig

pytest.importorskip("transformers")

TEXTS = ["The for statement is used to iterate over the elements of a sequence.",
         "  indented\tcode:\n    x = {'a': 1}  # comment\r\n",
         "Unicode: élan, naïve café, 日本語のテキスト, emoji 🙂, math ∑ x² — done.",
         "numbers 1234567 3.14159 and   multiple    spaces\n\n\nend"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("hfexport"))


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    for k, v in OFFLINE.items():
        monkeypatch.setenv(k, v)


def _load(folder: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(folder), trust_remote_code=True, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(str(folder), trust_remote_code=True)


def test_hf_export_loads_offline_with_equal_logits_ids_and_generations(run, tmp_path):
    result = CliRunner().invoke(export_command, [str(run), "--format", "hf", "-o", str(tmp_path / "hf")])
    assert result.exit_code == 0, result.output
    out = tmp_path / "hf"
    for name in ("config.json", "model.safetensors", "modeling_slimpipe.py", "configuration_slimpipe.py",
                 "slimpipe_model.py", "tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json",
                 "special_tokens_map.json"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_slimpipe.SlimpipeForCausalLM"
    # the model file shipped is the model file slimpipe runs, byte for byte
    assert (out / "slimpipe_model.py").read_bytes() == Path(model_module.__file__).read_bytes()

    ref, tok, _ = load_run(run)
    hf_model, hf_tok = _load(out)
    assert type(hf_model).__name__ == "SlimpipeForCausalLM"
    for text in TEXTS + real_texts()[:3]:
        assert hf_tok(text)["input_ids"] == tok.encode(text), text
        assert hf_tok.decode(tok.encode(text)) == tok.decode(tok.encode(text))
    ids = torch.tensor([tok.encode(real_texts()[5])[:64], tok.encode(real_texts()[6])[:64]])
    with torch.no_grad():
        expected, got = ref(ids)[0], hf_model(ids).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)  # padded-vocab columns: -inf in both
    assert torch.isfinite(got[..., : tok.vocab_size]).all()
    # a left-padded batch (as lm-eval's generation pads) gives each row its unpadded logits
    short = ids[1, :40]
    padded = torch.cat([torch.full((24,), tok.eos_id), short])[None]
    mask = torch.cat([torch.zeros(24, dtype=torch.long), torch.ones(40, dtype=torch.long)])[None]
    with torch.no_grad():
        row = hf_model(torch.cat([ids[:1], padded]), attention_mask=torch.cat([torch.ones_like(mask), mask])).logits
    torch.testing.assert_close(row[1, 24:], ref(short[None])[0][0], atol=1e-4, rtol=0)
    # slimpipe reads the transformers folder back (slimpipe eval RUN_HF works too)
    again, again_tok, _ = load_run(out)
    with torch.no_grad():
        torch.testing.assert_close(again(ids)[0], expected, atol=1e-4, rtol=0)
    assert again_tok.encode(TEXTS[2]) == tok.encode(TEXTS[2])
    # greedy generation equals slimpipe's own
    prompt = ids[:1, :10]
    with torch.no_grad():
        hf_gen = hf_model.generate(prompt, max_new_tokens=8, do_sample=False)
    assert hf_gen.tolist() == ref.generate(prompt, 8).tolist()


def test_gpt2_tokenizer_exports_vocab_merges_and_equal_ids(tmp_path):
    from transformers import AutoTokenizer

    tok = GPT2Tokenizer()
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, d_model=32, d_ff=64, max_seq_len=32,
                            attention="sdpa")).eval()
    export_model(model, tmp_path / "run" / "model", tokenizer=tok)
    out = export_hf(tmp_path / "run", tmp_path / "hf")
    assert json.loads((out / "vocab.json").read_text())["<|endoftext|>"] == tok.eos_id == 50256
    assert (out / "merges.txt").read_text().splitlines()[1] == "Ġ t"
    hf_tok = AutoTokenizer.from_pretrained(str(out), trust_remote_code=True)
    assert hf_tok.eos_token_id == tok.eos_id
    for text in TEXTS + real_texts()[:5]:
        assert hf_tok(text)["input_ids"] == tok.encode(text), text
    hf_model = _load(out)[0]
    x = torch.tensor([tok.encode(TEXTS[0])])
    with torch.no_grad():
        torch.testing.assert_close(hf_model(x).logits, model(x)[0], atol=1e-4, rtol=0)


def test_export_without_a_tokenizer_says_what_is_missing(run, tmp_path):
    model, _, _ = load_run(run)
    export_model(model, tmp_path / "bare" / "model")  # no mix, no tokenizer: weights and config only
    result = CliRunner().invoke(export_command, [str(tmp_path / "bare"), "-o", str(tmp_path / "hf")])
    assert result.exit_code != 0
    message = result.output.strip().splitlines()
    assert len(message) == 1 and "no tokenizer" in message[0] and "--tokenizer" in message[0], result.output
    assert not (tmp_path / "hf").exists()
    if importlib.util.find_spec("lm_eval") is not None:  # slimpipe eval says the same, before any task work
        scored = CliRunner().invoke(eval_command, [str(tmp_path / "bare"), "--tasks", "slimpipe_mc",
                                                   "--include-path", str(TASKS_DIR), "-o", str(tmp_path / "r.json")])
        assert scored.exit_code != 0 and "no tokenizer" in scored.output
        assert len(scored.output.strip().splitlines()) == 1, scored.output
    ok = CliRunner().invoke(export_command, [str(tmp_path / "bare"), "-o", str(tmp_path / "hf"),
                                             "--tokenizer", str(run.parent / "bpe")])
    assert ok.exit_code == 0, ok.output
    with pytest.raises(ExportError, match="exists"):
        export_hf(tmp_path / "bare", tmp_path / "hf", tokenizer=run.parent / "bpe")
    with pytest.raises(ExportError, match="no model found"):
        export_hf(tmp_path, tmp_path / "hf2")


def test_export_from_a_checkpoint_when_the_run_has_no_model_folder(run, tmp_path):
    ckpt_run = tmp_path / "ckpt-run"
    shutil.copytree(run, ckpt_run, ignore=shutil.ignore_patterns("model"))
    out = export_hf(ckpt_run, tmp_path / "hf")  # tokenizer found through the run's mix
    ref, tok, _ = load_run(run)
    hf_model = _load(out)[0]
    x = torch.tensor([tok.encode(TEXTS[0])])
    with torch.no_grad():
        torch.testing.assert_close(hf_model(x).logits, ref(x)[0], atol=1e-4, rtol=0)


def test_overwrite_replaces_only_an_earlier_export(run, tmp_path):
    """#19: --overwrite deleted any folder it was pointed at; it replaces an earlier export, nothing else."""
    proj = tmp_path / "proj"
    (proj / "src").mkdir(parents=True)
    (proj / "src" / "train.py").write_text("x")
    (proj / "config.json").write_text("{}")
    with pytest.raises(ExportError, match="holds src, which an export does not write"):
        export_hf(run, proj, overwrite=True)
    assert (proj / "src" / "train.py").read_text() == "x" and sorted(p.name for p in proj.iterdir()) == [
        "config.json", "src"]
    first = export_hf(run, tmp_path / "hf")
    assert export_hf(run, tmp_path / "hf", overwrite=True) == first and (first / "model.safetensors").is_file()
