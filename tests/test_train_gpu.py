"""The GPU path: what runs on CPU (imports without ray or the data side, the benchmark's CPU smoke run),
and CUDA tests that skip with a reason when no GPU is present (backend agreement forward and backward,
training and bitwise resume on ``cuda``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from slimpipe.train.model import GPT, ModelConfig, flash_attn_available

ROOT = Path(__file__).resolve().parents[1]
# Modules a bare GPU image does not have: the trainer and bench_gpu.py must not need them at import time.
BLOCKED = ("ray", "yaml", "pyarrow", "tokenizers", "tiktoken", "zstandard", "click", "pandas", "psutil")
BLOCK = f"import sys\nfor m in {BLOCKED!r}: sys.modules[m] = None\n"
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)")


def run_python(code: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", BLOCK + code, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_trainer_imports_without_ray_pyyaml_or_the_data_side():
    r = run_python(
        "import slimpipe.train.loop, slimpipe.train.checkpoint, slimpipe.train.data, slimpipe.train.model\n"
        "from slimpipe.train.presets import load_preset\n"
        "p = load_preset('1.3b'); assert p.model.d_ff == 5440 and p.train['batch_size'] == 528, p\n"
        "sys.path.insert(0, 'benchmarks'); import bench_gpu\n"
        "print('ok')")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == "ok"
    # and with everything installed, importing them does not pull ray or pyarrow in either
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", "import sys; import slimpipe.train.loop, slimpipe.train.launch; "
                        "print(sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'pyarrow', 'yaml'}))"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "[]", (r.stdout, r.stderr[-2000:])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_bench_gpu_without_a_gpu_says_so_and_exits_zero():
    r = run_python("import runpy; sys.argv = ['bench_gpu.py']; runpy.run_path('benchmarks/bench_gpu.py', "
                   "run_name='__main__')")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "no GPU" in r.stdout


def test_bench_gpu_cpu_smoke_runs_end_to_end_with_only_torch_numpy_safetensors():
    r = run_python("import runpy; sys.argv = ['bench_gpu.py', '--cpu-smoke', '--no-append']\n"
                   "runpy.run_path('benchmarks/bench_gpu.py', run_name='__main__')", timeout=500)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    assert "| tiny | sdpa | 2 x 2 |" in r.stdout and "bitwise equal" in r.stdout
    assert "tiny x sdpa:" in r.stdout and "tokens/s per GPU" in r.stdout and "compiles" in r.stdout
    assert lines[-2].startswith("CPU smoke run (not a GPU figure)") and lines[-2].endswith("resume PASS")


def test_bench_gpu_peak_table_matches_the_specific_model_first():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_gpu
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    peak = bench_gpu.known_peak
    assert peak("NVIDIA H200") == peak("NVIDIA H100 80GB HBM3") == 989e12
    assert peak("NVIDIA H100 PCIe") == 756e12 and peak("NVIDIA A100-SXM4-80GB") == 312e12
    assert (peak("NVIDIA L4"), peak("NVIDIA L40"), peak("NVIDIA L40S")) == (121e12, 181e12, 362e12)
    assert (peak("NVIDIA A10G"), peak("NVIDIA A10")) == (70e12, 125e12)
    assert peak("Some Future GPU") is None  # then the benchmark uses a measured matmul
    assert peak("NVIDIA H200 NVL") == 835e12 and peak("NVIDIA GeForce RTX 4090") == 82.6e12  # #20.7
    assert peak("NVIDIA H100 80GB HBM3 MIG 3g.40gb") is None  # a slice, not the whole GPU: measured instead


# ---------------------------------------------------------------------------------------------- CUDA only

def _cfg(**kw) -> ModelConfig:
    base = dict(vocab_size=1000, n_layer=2, n_head=4, d_model=128, d_ff=320, max_seq_len=256)
    base.update(kw)
    return ModelConfig(**base)


@cuda
@pytest.mark.parametrize("mup", [False, True])
def test_backends_agree_forward_and_backward_on_cuda(mup):
    backends = ["sdpa", "flex"] + (["flash"] if flash_attn_available() else [])
    torch.manual_seed(0)
    ref = GPT(_cfg(attention="sdpa", mup=mup)).cuda()
    x = torch.randint(0, 1000, (2, 200), device="cuda")
    outs = {}
    for name in backends:
        m = GPT(_cfg(attention=name, mup=mup)).cuda()
        m.load_state_dict(ref.state_dict())
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits, loss = m(x[:, :-1], x[:, 1:], return_logits=True)
        loss.backward()
        assert torch.all(logits[..., 1000:] == float("-inf"))  # padded vocab masked under bf16 too
        outs[name] = (loss.detach().float(), logits.detach()[..., :1000].float(),
                      {k: p.grad.float() for k, p in m.named_parameters()})
    base_loss, base_logits, base_grads = outs["sdpa"]
    for name in backends[1:]:
        loss, logits, grads = outs[name]
        torch.testing.assert_close(loss, base_loss, rtol=2e-2, atol=2e-2, msg=name)
        torch.testing.assert_close(logits, base_logits, rtol=5e-2, atol=5e-2, msg=name)
        for k, g in base_grads.items():
            rel = (grads[k] - g).norm() / g.norm().clamp_min(1e-12)
            assert rel < 5e-2, (name, k, float(rel))


@cuda
def test_cuda_training_with_a_bare_cuda_device_resumes_bitwise(tmp_path):
    """``device="cuda"`` (no index) trains on cuda:LOCAL_RANK; a resume restores the CUDA RNG from the CPU."""
    from pydoc_data.topics import topics

    from slimpipe.mix.packed import write_mix
    from slimpipe.mix.tokenizer import train_bpe
    from slimpipe.train.checkpoint import checkpoints, read_checkpoint
    from slimpipe.train.loop import train
    from slimpipe.train.plan import TrainConfig

    docs = [topics[k] for k in sorted(topics)]
    tok = train_bpe(docs, vocab_size=512, out=tmp_path / "bpe")
    write_mix(tmp_path / "mix", docs[:-4], {"wikipedia": docs[-4:]}, tok, 64)
    (tmp_path / "m.yaml").write_text("name: m\nmodel: {n_layer: 2, d_model: 64, n_head: 4, d_ff: 192, "
                                     "max_seq_len: 64}\ntrain: {seq_len: 64, batch_size: 8, micro_batch: 4, "
                                     "lr: 3.0e-3}\n")
    kw = dict(mix_dir=str(tmp_path / "mix"), model=str(tmp_path / "m.yaml"), max_steps=6, eval_interval=3,
              checkpoint_interval=3, keep_checkpoints=5, device="cuda", compile=False, export=False)
    full, cut = tmp_path / "full", tmp_path / "cut"
    metrics = train(TrainConfig(out_dir=str(full), **kw))
    assert metrics["device"].startswith("cuda:") and metrics["throughput"]["peak_memory_gb"] > 0
    rng = json.loads((checkpoints(full)[0] / "rng_0.json").read_text())
    assert isinstance(rng["cuda"], str)  # the CUDA generator's state, saved as bytes (base64), not a pickle
    shutil.copytree(full, cut)
    shutil.rmtree(cut / "checkpoints" / "step_0000006")
    (cut / "metrics.json").unlink()
    train(TrainConfig(out_dir=str(cut), resume=True, **kw))
    a = read_checkpoint(full / "checkpoints" / "step_0000006")
    b = read_checkpoint(cut / "checkpoints" / "step_0000006")
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    la = [json.loads(x)["loss"] for x in (full / "train_log.jsonl").read_text().splitlines()]
    lb = [json.loads(x)["loss"] for x in (cut / "train_log.jsonl").read_text().splitlines()]
    assert la == lb
