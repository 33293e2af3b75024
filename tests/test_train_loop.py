"""The training loop on real text: schedule, bits per byte, loss falls, bitwise resume, CLI and export."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sysconfig
from pathlib import Path
from pydoc_data.topics import topics

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from slimpipe.mix.packed import PackedDataset, open_mix, write_mix
from slimpipe.mix.tokenizer import train_bpe
from slimpipe.train.checkpoint import checkpoints, load_model_state, read_checkpoint
from slimpipe.train.command import train_command
from slimpipe.train.evaluate import bits_per_byte, evaluate_sets
from slimpipe.train.export import load_exported
from slimpipe.train.loop import train
from slimpipe.train.model import GPT, ModelConfig
from slimpipe.train.plan import LRSchedule, TrainConfig
from slimpipe.units import parse_count
from tests.recipes_fixtures import assert_resumed_run_equals, read_jsonl

MICRO_YAML = """\
name: micro
model: {n_layer: 2, d_model: 64, n_head: 4, d_ff: 170, max_seq_len: 64}
train: {seq_len: 64, batch_size: 16, micro_batch: 8, lr: 3.0e-3, warmup_fraction: 0.1, schedule: linear}
"""


def real_texts() -> tuple[list[str], list[str]]:
    """Text every Python installation carries: pydoc's topic help and small stdlib modules."""
    docs = [topics[k] for k in sorted(topics)]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    code = [p.read_text(encoding="utf-8", errors="replace") for p in sorted(stdlib.glob("*.py"))
            if 2_000 < p.stat().st_size < 12_000][:24]
    return docs, code


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def mix(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("trainer")
    docs, code = real_texts()
    tok = train_bpe(docs + code, vocab_size=512, out=root / "bpe")
    write_mix(root / "mix", docs[:-4] + code[:-4], {"wikipedia": docs[-4:], "github": code[-4:]}, tok, 64)
    (root / "micro.yaml").write_text(MICRO_YAML)
    return root


def cfg_for(mix: Path, out: Path, **kw) -> TrainConfig:
    # device pinned to the CPU: on a GPU machine these tests would otherwise train on CUDA and change meaning
    # (GPU coverage lives in tests/test_train_gpu.py)
    base = dict(mix_dir=str(mix / "mix"), out_dir=str(out), model=str(mix / "micro.yaml"), eval_sequences=8,
                export=False, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


# ---------------------------------------------------------------------------------------------- schedule

def test_linear_warmup_then_decay_to_zero():
    s = LRSchedule(warmup=10, total=100, kind="linear")
    lrs = [s(i) for i in range(100)]  # multiplier applied at update i+1
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))
    assert lrs[54] == pytest.approx(0.5) and lrs[99] == pytest.approx(0.0)


def test_cosine_to_ten_percent():
    s = LRSchedule(warmup=0, total=50, kind="cosine", min_ratio=0.1)
    assert s(-1) == pytest.approx(1.0)
    assert s(24) == pytest.approx(0.55)
    assert s(49) == pytest.approx(0.1)
    assert s(1000) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        LRSchedule(1, 2, kind="step")


def test_parse_count():
    assert parse_count("131072") == 131072
    assert parse_count("2.2e9") == 2_200_000_000
    assert parse_count("500M") == 500_000_000 and parse_count("2k") == 2000


# ---------------------------------------------------------------------------------------------- bits per byte

def test_bits_per_byte_definition():
    assert bits_per_byte(math.log(2) * 1000, 1000) == pytest.approx(1.0)
    assert bits_per_byte(math.log(2) * 300, 100) == pytest.approx(3.0)
    assert math.isnan(bits_per_byte(1.0, 0))


def test_evaluate_sets_bpb_from_token_losses_and_bytes(mix):
    torch.manual_seed(0)
    train_set, evals = open_mix(mix / "mix")
    model = GPT(ModelConfig(vocab_size=train_set.vocab_size, n_layer=1, n_head=2, d_model=32, d_ff=85,
                            max_seq_len=64)).eval()
    res = evaluate_sets(model, evals, batch_size=5)
    nll_all, bytes_all, tokens_all = 0.0, 0, 0
    for name, ds in evals.items():
        rows = torch.from_numpy(np.stack([ds[i] for i in range(len(ds))]))
        with torch.no_grad():
            _, per_token = model(rows[:, :-1], rows[:, 1:], reduction="none")
        nll = float(per_token.double().sum())
        n_bytes = int(np.asarray(ds.seq_bytes, dtype=np.int64).sum())
        got = res["sources"][name]
        assert got["tokens"] == per_token.numel() and got["bytes"] == n_bytes
        assert got["loss"] == pytest.approx(nll / per_token.numel(), rel=1e-5)
        assert got["bpb"] == pytest.approx(nll / (math.log(2) * n_bytes), rel=1e-5)
        nll_all, bytes_all, tokens_all = nll_all + nll, bytes_all + n_bytes, tokens_all + per_token.numel()
    assert res["total"]["bpb"] == pytest.approx(nll_all / (math.log(2) * bytes_all), rel=1e-5)
    assert res["total"]["loss"] == pytest.approx(nll_all / tokens_all, rel=1e-5)
    part = evaluate_sets(model, evals, batch_size=5, max_sequences=3)
    assert part["sources"]["github"]["tokens"] == 3 * 64
    assert part["sources"]["github"]["bytes"] == int(evals["github"].seq_bytes[:3].sum())
    # a shorter context view keeps byte accounting exact over whole stored sequences
    halves = {k: PackedDataset(v.path, 32) for k, v in evals.items()}
    half = evaluate_sets(model, halves, batch_size=7)
    assert half["total"]["bytes"] == res["total"]["bytes"] and half["total"]["tokens"] == res["total"]["tokens"]


# ---------------------------------------------------------------------------------------------- training

def test_loss_falls_on_real_text(mix, tmp_path):
    out = tmp_path / "run"
    metrics = train(cfg_for(mix, out, max_steps=80, eval_interval=20, export=True))
    evals = read_jsonl(out / "eval_log.jsonl")
    assert [e["step"] for e in evals] == [20, 40, 60, 80] and evals[-1]["final"]
    # the best context-free predictor: training-set unigram frequencies, scored on the held-out targets
    train_set, eval_sets = open_mix(mix / "mix")
    freq = np.bincount(np.asarray(train_set.tokens), minlength=512) + 1.0
    held_out = np.concatenate([np.asarray(ds.tokens[1:]) for ds in eval_sets.values()])
    unigram = float(-np.log(freq[held_out] / freq.sum()).mean())
    first, last = evals[0]["total"]["loss"], metrics["eval"]["total"]["loss"]
    assert last < first < math.log(512)
    assert last < unigram - 0.2, f"held-out loss {last:.3f} does not beat unigram frequencies ({unigram:.3f})"
    assert set(metrics["eval"]["sources"]) == {"github", "wikipedia"}
    assert 0 < metrics["eval"]["total"]["bpb"] < 8
    steps = read_jsonl(out / "train_log.jsonl")
    assert [s["step"] for s in steps] == list(range(1, 81))
    assert np.mean([s["loss"] for s in steps[-10:]]) < np.mean([s["loss"] for s in steps[:10]]) - 1.0
    assert steps[-1]["lr"] == 0.0 and max(s["lr"] for s in steps) == pytest.approx(3e-3)
    # the export reloads to the same function
    model, tok = load_exported(out / "model")
    ckpt = read_checkpoint(checkpoints(out)[-1])
    ref = GPT(ModelConfig.from_dict(ckpt["plan"]["model"]))
    ref.load_state_dict(ckpt["model"])
    assert all(torch.equal(v, ckpt["model"][k]) for k, v in load_model_state(checkpoints(out)[-1]).items())
    x = torch.from_numpy(open_mix(mix / "mix")[1]["github"][0][None, :-1])
    with torch.no_grad():
        assert torch.equal(model(x)[0], ref.eval()(x)[0])
    assert tok is not None and tok.vocab_size == 512


def test_resume_equals_uninterrupted_run_bitwise(mix, tmp_path):
    # accumulation (16 = 2 x 8) and more steps than one epoch of a tiny set exercise the data position
    full = tmp_path / "full"
    kw = dict(max_steps=10, eval_interval=4, checkpoint_interval=4, keep_checkpoints=10, batch_size=16,
              micro_batch=8)
    train(cfg_for(mix, full, **kw))
    assert [p.name for p in checkpoints(full)] == ["step_0000004", "step_0000008", "step_0000010"]
    assert (full / "checkpoints" / "step_0000004" / ".metadata").is_file()  # torch.distributed.checkpoint
    # "kill" after step 8's checkpoint: keep what an interrupted run would have on disk, then resume;
    # a half-written checkpoint (no trainer.pt, .tmp suffix) is ignored
    cut = tmp_path / "cut"
    shutil.copytree(full, cut)
    shutil.rmtree(cut / "checkpoints" / "step_0000010")
    (cut / "checkpoints" / "step_0000009.tmp").mkdir()
    (cut / "metrics.json").unlink()
    with pytest.raises(FileExistsError):
        train(cfg_for(mix, cut, **kw))
    train(cfg_for(mix, cut, resume=True, **kw))
    a = read_checkpoint(full / "checkpoints" / "step_0000010")
    b = read_checkpoint(cut / "checkpoints" / "step_0000010")
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert a["optimizer"]["state"] and a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for pid, st in a["optimizer"]["state"].items():
        for k, v in st.items():
            assert torch.equal(v, b["optimizer"]["state"][pid][k]), (pid, k)
    assert a["scheduler"] == b["scheduler"] and a["sample_pos"] == b["sample_pos"] == 160
    strip = ("step_s", "tokens_per_s")
    la = [{k: v for k, v in r.items() if k not in strip} for r in read_jsonl(full / "train_log.jsonl")]
    lb = [{k: v for k, v in r.items() if k not in strip} for r in read_jsonl(cut / "train_log.jsonl")]
    assert la == lb and len(la) == 10
    assert read_jsonl(full / "eval_log.jsonl") == read_jsonl(cut / "eval_log.jsonl")  # steps 4, 8, final 10
    ma, mb = json.loads((full / "metrics.json").read_text()), json.loads((cut / "metrics.json").read_text())
    assert ma["eval"] == mb["eval"]
    # resuming a differently shaped run is refused
    with pytest.raises(ValueError, match="cannot resume"):
        train(cfg_for(mix, cut, resume=True, **{**kw, "batch_size": 8}))


class _Payload:
    """A pickle that, when unpickled, writes a marker file (what a crafted run folder would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


def test_a_crafted_run_folder_never_runs_code(mix, tmp_path):
    """#19.6: export, eval and --init-from read safetensors and JSON only; --resume refuses a pickle that
    names anything but DCP's metadata classes. Every pickle of the run folder is replaced by a payload."""
    import pickle

    from slimpipe.train.export import load_run

    run = tmp_path / "run"
    train(cfg_for(mix, run, max_steps=2, eval_interval=0, checkpoint_interval=2))
    marker = tmp_path / "MARKER"
    ckpt = checkpoints(run)[-1]
    trained = load_model_state(ckpt)
    for name in ("trainer.pt", "rng_0.pt"):  # what older checkpoints held: torch.save pickles
        torch.save(_Payload(marker), ckpt / name)
    (ckpt / ".metadata").write_bytes(pickle.dumps(_Payload(marker)))  # DCP's metadata: a plain pickle
    # export and eval (both go through load_run) on a run without model/: the checkpoint's weights
    model, _tok, info = load_run(run, require_tokenizer=False)
    assert info["source"] == str(ckpt) and not marker.exists()
    for k, v in model.state_dict().items():
        assert torch.equal(v, trained[k]), k
    # --init-from
    train(cfg_for(mix, tmp_path / "cont", max_steps=1, eval_interval=0, init_from=str(run), keep_checkpoints=0))
    assert not marker.exists()
    # --resume reads DCP's files: the crafted .metadata is refused, its payload never runs
    with pytest.raises(ValueError, match="refusing to load"):
        train(cfg_for(mix, run, max_steps=2, eval_interval=0, checkpoint_interval=2, resume=True))
    assert not marker.exists()


def test_cli_trains_and_reports(mix, tmp_path):
    out = tmp_path / "cli-run"
    result = CliRunner().invoke(train_command, [
        str(mix / "mix"), "--model", str(mix / "micro.yaml"), "-o", str(out), "--max-steps", "3",
        "--eval-interval", "2", "--eval-sequences", "4", "--micro-batch", "4", "--seq-len", "32",
        "--schedule", "cosine", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "github" in result.output and "total" in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert config["plan"]["seq_len"] == 32 and config["plan"]["accum"] == 4
    assert config["plan"]["schedule"] == "cosine" and config["plan"]["min_lr_ratio"] == 0.1
    assert metrics["steps"] == 3 and metrics["tokens"] == 3 * 16 * 32
    assert metrics["attention"] == "sdpa" and metrics["throughput"]["tokens_per_s"] > 0
    assert (out / "model" / "model.safetensors").is_file() and (out / "model" / "tokenizer").is_dir()
    again = CliRunner().invoke(train_command, [str(mix / "mix"), "-o", str(out), "--max-steps", "3", "--device", "cpu"])
    assert again.exit_code != 0 and "--resume" in again.output


# ---------------------------------------------------------------------------------------------- GPU-path logic on CPU

def test_global_batch_is_exact_or_refused_with_the_nearest_choices():
    from slimpipe.train.plan import split_batch

    assert split_batch(528, 8, micro_cap=4) == (3, 22)  # 1.3B on 8 GPUs: 3 x 22 x 8 = 528, not 544
    assert split_batch(528, 1, micro_cap=4) == (4, 132)
    assert split_batch(120, 8, micro_cap=8) == (5, 3)
    assert split_batch(16, 2, micro=4) == (4, 2)
    for batch, world, micro_cap in [(528, 8, 4), (120, 3, 7), (264, 8, 4), (7, 7, None)]:
        m, a = split_batch(batch, world, micro_cap=micro_cap)
        assert m * a * world == batch and m <= (micro_cap or batch)
    with pytest.raises(ValueError, match=r"micro-batch 4 does not divide the 66 sequences per worker .*: 1, 2, 3, 6$"):
        split_batch(528, 8, micro=4)
    with pytest.raises(ValueError, match=r"global batch 528 is not divisible by 5 workers; nearest valid batches: 525, 530"):
        split_batch(528, 5)


def test_command_modules_import_without_torch_and_help_names_the_preset_option():
    """#23.8: train, tune, export and eval --help do not import torch (2-4 s); train's help says the preset
    comes from --model, not from MIX_DIR."""
    import subprocess
    import sys

    code = ("import sys, slimpipe.train.command, slimpipe.train.tune, slimpipe.evaluation.command; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout[:300]
    result = CliRunner().invoke(train_command, ["--help"])
    assert result.exit_code == 0 and "Train the --model preset" in result.output
    assert "MIX_DIR's model preset" not in result.output


def test_exact_batch_refusal_is_one_line_on_the_cli(mix, tmp_path):
    result = CliRunner().invoke(train_command, [str(mix / "mix"), "--model", str(mix / "micro.yaml"), "-o",
                                                str(tmp_path / "r"), "--max-steps", "1", "--micro-batch", "5",
                                                "--device", "cpu"])
    assert result.exit_code != 0
    assert "micro-batch 5 does not divide the 16 sequences per worker" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_cuda_device_gets_the_local_rank_index(monkeypatch):
    from slimpipe.train.plan import resolve_device

    monkeypatch.setenv("LOCAL_RANK", "3")
    assert resolve_device("cuda") == torch.device("cuda", 3)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)  # an explicit index wins
    assert resolve_device("cuda", local_rank=2) == torch.device("cuda", 2)
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.delenv("LOCAL_RANK")
    if not torch.cuda.is_available():
        assert resolve_device("cuda") == torch.device("cuda", 0)
        assert resolve_device(None) == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_requested_without_a_gpu_is_one_line(mix, tmp_path):
    result = CliRunner().invoke(train_command, [str(mix / "mix"), "--model", str(mix / "micro.yaml"), "-o",
                                                str(tmp_path / "r"), "--max-steps", "1", "--device", "cuda"])
    assert result.exit_code != 0 and "cuda:0 requested (--device/--use-gpu) but torch" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_mup_uses_its_base_learning_rate(mix):
    from slimpipe.train.plan import plan_run

    cfg = cfg_for(mix, mix / "unused")
    cpu = torch.device("cpu")
    assert plan_run(cfg, 64, 512, 1, cpu).lr == 3e-3  # the preset's standard LR
    assert plan_run(dataclasses.replace(cfg, mup=True), 64, 512, 1, cpu).lr == 6e-3  # muP's base LR
    assert plan_run(dataclasses.replace(cfg, mup=True, lr=1e-2), 64, 512, 1, cpu).lr == 1e-2
    plan = plan_run(cfg, 64, 512, 1, cpu)
    assert plan.attention == "sdpa" and plan.parallel == "none"
    with pytest.raises(ValueError, match="flex' trains on CUDA only"):
        plan_run(dataclasses.replace(cfg, attention="flex"), 64, 512, 1, cpu)
    with pytest.raises(ValueError, match="fsdp' needs a torch.distributed process group"):
        plan_run(dataclasses.replace(cfg, parallel="fsdp"), 64, 512, 1, cpu)


def test_prefetch_loader_order_and_errors():
    from slimpipe.train.data import PrefetchLoader

    def fetch(step):
        if step == 5:
            raise OSError("disk gone")
        return np.full((2, 3), step, dtype=np.uint16)

    with PrefetchLoader(fetch, start=2, stop=5, device=torch.device("cpu"), depth=2) as loader:
        got = [(s, r) for s, r in loader]
    assert [s for s, _ in got] == [2, 3, 4] and all(r.dtype == torch.int64 and int(r[0, 0]) == s for s, r in got)
    with PrefetchLoader(fetch, start=4, stop=7, device=torch.device("cpu")) as loader, \
            pytest.raises(OSError, match="disk gone"):
        list(loader)
    with PrefetchLoader(fetch, start=0, stop=1000, device=torch.device("cpu"), depth=1) as loader:
        assert next(iter(loader))[0] == 0  # closing mid-way stops the thread
    assert not loader._thread.is_alive()


def test_checkpoints_follow_the_wall_clock(mix, tmp_path, monkeypatch):
    from slimpipe.train import checkpoint as ckpt_io

    clock = {"t": 0.0}
    monkeypatch.setattr(ckpt_io.time, "monotonic", lambda: clock["t"])
    cp = ckpt_io.Checkpointer(tmp_path, device=torch.device("cpu"), interval_s=60.0)
    assert not cp.due(1, False)
    clock["t"] = 59.0
    assert not cp.due(2, False)
    clock["t"] = 61.0
    assert cp.due(3, False) and cp.due(4, True)
    assert ckpt_io.Checkpointer(tmp_path, device=torch.device("cpu"), interval_s=None, every_steps=5).due(10, False)
    assert not ckpt_io.Checkpointer(tmp_path, device=torch.device("cpu"), keep=0).due(10, True)  # none at all
    # a run with the default 30-minute interval writes only its final checkpoint
    out = tmp_path / "run"
    train(cfg_for(mix, out, max_steps=3, eval_interval=0))
    assert [p.name for p in checkpoints(out)] == ["step_0000003"]


@pytest.fixture
def gloo_world_of_one():
    import socket

    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_fsdp2_sharded_async_checkpoint_resumes_bitwise(mix, tmp_path, gloo_world_of_one):
    """FSDP2 (fully_shard, bf16 params, fp32 reduce) under a gloo process group, with activation
    checkpointing and asynchronous DCP checkpoints: a resumed run equals the uninterrupted one."""
    kw = dict(max_steps=6, eval_interval=3, checkpoint_interval=3, keep_checkpoints=5, parallel="fsdp",
              activation_checkpointing=True, async_checkpoint=True)
    full = tmp_path / "full"
    metrics = train(cfg_for(mix, full, **kw))
    assert metrics["parallel"] == "fsdp" and metrics["activation_checkpointing"] and metrics["world_size"] == 1
    assert [p.name for p in checkpoints(full)] == ["step_0000003", "step_0000006"]
    a = read_checkpoint(full / "checkpoints" / "step_0000006")
    assert a["model"]["wte.weight"].dtype == torch.float32  # fp32 master weights; bf16 only in compute
    cut = tmp_path / "cut"
    shutil.copytree(full, cut)
    shutil.rmtree(cut / "checkpoints" / "step_0000006")
    (cut / "metrics.json").unlink()
    train(cfg_for(mix, cut, resume=True, **kw))
    la = assert_resumed_run_equals(full, cut, "step_0000006")
    assert len(la) == 6
    # the loss is the fp32 run's within bf16 precision
    ref = train(cfg_for(mix, tmp_path / "fp32", max_steps=6, eval_interval=0))
    assert metrics["final_train_loss"] == pytest.approx(ref["final_train_loss"], rel=3e-2)


def test_mix_handle_opens_once_and_reads_its_parts(mix):
    """#22.5: the Mix handle resolves the folder once; its sets, tokenizer and manifest come from the one
    tokenizer-folder constant, and :meth:`Mix.at` reads another length without reloading the tokenizer."""
    from slimpipe.mix.packed import TOKENIZER_DIR
    from slimpipe.train.data import Mix

    m = Mix.open(mix / "mix")
    assert m.tokenizer_dir == mix / "mix" / TOKENIZER_DIR and m.manifest is None  # write_mix writes no manifest
    assert m.train.seq_len == 64 and list(m.evals) == ["github", "wikipedia"]  # canonical source order
    tok = m.tokenizer()
    assert tok is m.tokenizer() and tok.vocab_size == m.train.vocab_size
    short = m.at(32)
    assert short.root == m.root and short.train.seq_len == 32 and len(short.train) == 2 * len(m.train)
    assert short.tokenizer() is tok and Mix.open(short) is short and m.at(None) is m
    with pytest.raises((FileNotFoundError, ValueError)):  # what final_document_eval reports as "no tokenizer"
        Mix.open(mix / "bpe").tokenizer()
