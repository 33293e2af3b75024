"""Write a Hugging Face transformers folder for a slimpipe run (how BTLM itself is published).

The folder loads offline with ``AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)`` and
``AutoTokenizer.from_pretrained(DIR)``; it holds::

    config.json                 model_type "slimpipe", auto_map, the ModelConfig under "slimpipe_model"
    configuration_slimpipe.py   SlimpipeConfig (PretrainedConfig)
    modeling_slimpipe.py        SlimpipeForCausalLM (PreTrainedModel + GenerationMixin), a thin wrapper
    slimpipe_model.py           slimpipe/train/model.py itself, unchanged (imports only torch)
    model.safetensors           the model's state dict under the prefix "model."
    tokenizer.json              (tokenizers' format; GPT-2 BPE built from encoder.json + vocab.bpe)
    vocab.json, merges.txt      the BPE vocabulary and merges (when the tokenizer is a BPE)
    tokenizer_config.json, special_tokens_map.json
    generation_config.json      greedy defaults, end-of-text as EOS

No transformers import is needed to write it. Special tokens spelled inside a text (``<|endoftext|>``)
are ordinary text to slimpipe's tokenizer but a special token to transformers'; otherwise ids agree.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

from slimpipe.mix.tokenizer import EOS_TEXT, GPT2Tokenizer, HFTokenizer, Tokenizer
from slimpipe.train import model as model_module
from slimpipe.train.export import ExportError, load_run
from slimpipe.train.model import GPT

HERE = Path(__file__).resolve().parent
MODEL_FILE = "slimpipe_model.py"
_IMPORT_IN_PACKAGE = "from slimpipe.train.model import"
_IMPORT_IN_EXPORT = "from .slimpipe_model import"
AUTO_MAP = {"AutoConfig": "configuration_slimpipe.SlimpipeConfig",
            "AutoModelForCausalLM": "modeling_slimpipe.SlimpipeForCausalLM"}


def _write_code(out: Path) -> None:
    shutil.copyfile(HERE / "configuration_slimpipe.py", out / "configuration_slimpipe.py")
    modeling = (HERE / "modeling_slimpipe.py").read_text(encoding="utf-8")
    if modeling.count(_IMPORT_IN_PACKAGE) != 1:
        raise RuntimeError(f"{HERE / 'modeling_slimpipe.py'}: expected one line '{_IMPORT_IN_PACKAGE} ...'")
    (out / "modeling_slimpipe.py").write_text(modeling.replace(_IMPORT_IN_PACKAGE, _IMPORT_IN_EXPORT))
    shutil.copyfile(Path(model_module.__file__), out / MODEL_FILE)


def _hf_config(model: GPT, tok: Tokenizer) -> dict:
    m = model.cfg.to_dict()
    dtype = str(model.wte.weight.dtype).replace("torch.", "")
    return {
        "architectures": ["SlimpipeForCausalLM"],
        "auto_map": AUTO_MAP,
        "model_type": "slimpipe",
        "slimpipe_model": m,
        "vocab_size": m["vocab_size"], "tokenizer_vocab_size": tok.vocab_size,
        "hidden_size": m["d_model"], "num_hidden_layers": m["n_layer"], "num_attention_heads": m["n_head"],
        "intermediate_size": m["d_ff"], "max_position_embeddings": m["max_seq_len"],
        "bos_token_id": tok.eos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.eos_id,
        "tie_word_embeddings": False, "use_cache": False,
        "torch_dtype": dtype, "dtype": dtype,
        "slimpipe_tokenizer": tok.describe(),
    }


def _gpt2_tokenizer_json(tok: GPT2Tokenizer, out: Path) -> None:
    """tokenizers' byte-level BPE from GPT-2's own files (the same vocabulary and merges tiktoken uses)."""
    from tokenizers import AddedToken, decoders, models, pre_tokenizers, processors
    from tokenizers import Tokenizer as _HF

    bpe = models.BPE.from_file(str(tok.encoder_json), str(tok.vocab_bpe))
    hf = _HF(bpe)
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    hf.post_processor = processors.ByteLevel(trim_offsets=False)
    hf.add_special_tokens([AddedToken(EOS_TEXT, special=True, normalized=False)])
    if hf.token_to_id(EOS_TEXT) != tok.eos_id:
        raise ExportError(f"GPT-2 tokenizer files give {EOS_TEXT} id {hf.token_to_id(EOS_TEXT)}, not {tok.eos_id}")
    hf.save(str(out / "tokenizer.json"))
    shutil.copyfile(tok.encoder_json, out / "vocab.json")
    shutil.copyfile(tok.vocab_bpe, out / "merges.txt")


def _hf_tokenizer_files(tok: HFTokenizer, out: Path) -> None:
    shutil.copyfile(tok.path, out / "tokenizer.json")
    spec = json.loads(tok.path.read_text(encoding="utf-8"))
    bpe = spec.get("model") or {}
    if bpe.get("type") == "BPE":
        (out / "vocab.json").write_text(json.dumps(bpe.get("vocab", {}), ensure_ascii=False))
        merges = [m if isinstance(m, str) else " ".join(m) for m in bpe.get("merges", [])]
        (out / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{m}\n" for m in merges), encoding="utf-8")


def write_tokenizer(tok: Tokenizer, out: Path, max_length: int) -> None:
    """tokenizer.json (+ vocab.json / merges.txt for BPE) and the transformers tokenizer configs."""
    if isinstance(tok, GPT2Tokenizer):
        _gpt2_tokenizer_json(tok, out)
    elif isinstance(tok, HFTokenizer):
        _hf_tokenizer_files(tok, out)
    else:
        raise ExportError(f"tokenizer {tok!r}: no Hugging Face form known for {type(tok).__name__}")
    eos = tok.decode([tok.eos_id])
    special = {"bos_token": eos, "eos_token": eos, "unk_token": eos, "pad_token": eos}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", **special, "model_max_length": max_length,
        "add_bos_token": False, "add_eos_token": False, "clean_up_tokenization_spaces": False,
        "padding_side": "right"}, indent=2) + "\n")


def export_hf(run: str | Path, out_dir: str | Path, *, tokenizer: str | Path | None = None,
              overwrite: bool = False) -> Path:
    """Write ``out_dir`` for ``run`` (a run directory, an export folder, or a run with checkpoints only).

    The folder is written under a temporary name and renamed into place. Raises :class:`ExportError`
    (one line) when the run has no model or no tokenizer, or ``out_dir`` exists without ``overwrite``.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"{out} exists and is not empty; pass --overwrite to replace it")
    model, tok, _ = load_run(run, tokenizer=tokenizer)
    assert tok is not None  # load_run raises without one
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        state = {f"model.{k}": v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        _write_code(tmp)
        (tmp / "config.json").write_text(json.dumps(_hf_config(model, tok), indent=2) + "\n")
        (tmp / "generation_config.json").write_text(json.dumps({
            "bos_token_id": tok.eos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.eos_id,
            "do_sample": False, "use_cache": False}, indent=2) + "\n")
        write_tokenizer(tok, tmp, model.cfg.max_seq_len)
        if out.exists():  # --overwrite replaces an earlier export, never a folder of anything else (#19)
            foreign = sorted({p.name for p in out.iterdir()} - {p.name for p in tmp.iterdir()})
            if foreign:
                shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
                raise ExportError(f"--overwrite: {out} holds {shown}, which an export does not write: it replaces "
                                  "only an earlier export; move them away or choose another folder")
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out

