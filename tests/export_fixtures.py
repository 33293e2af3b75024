"""A small trained run (real text, real training loop, real export) shared by the export and lm-eval tests."""

from __future__ import annotations

import os
from pathlib import Path
from pydoc_data.topics import topics

import torch

from slimpipe.mix.packed import write_mix
from slimpipe.mix.tokenizer import train_bpe
from slimpipe.train.loop import train
from slimpipe.train.plan import TrainConfig

TASKS_DIR = Path(__file__).resolve().parent / "lm_eval_tasks"
MICRO_YAML = """\
name: micro
model: {n_layer: 2, d_model: 64, n_head: 4, d_ff: 192, max_seq_len: 64, attention: sdpa}
train: {seq_len: 64, batch_size: 8, micro_batch: 8, lr: 3.0e-3, warmup_fraction: 0.1, schedule: linear}
"""
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def real_texts() -> list[str]:
    return [topics[k] for k in sorted(topics)]


def make_run(root: Path, steps: int = 12) -> Path:
    """Train the micro model for a few steps on pydoc's topic help (BPE of 512 ids); returns RUN."""
    docs = real_texts()
    tok = train_bpe(docs, vocab_size=512, out=root / "bpe")
    write_mix(root / "mix", docs[:-4], {"wikipedia": docs[-4:]}, tok, 64)
    (root / "micro.yaml").write_text(MICRO_YAML)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(TrainConfig(mix_dir=str(root / "mix"), out_dir=str(root / "run"), model=str(root / "micro.yaml"),
                          max_steps=steps, eval_interval=0, eval_sequences=2, export=True, device="cpu"))
    finally:
        torch.set_num_threads(threads)
    return root / "run"


def offline_env() -> dict[str, str]:
    return {**os.environ, **OFFLINE}
