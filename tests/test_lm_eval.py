"""The real lm-evaluation-harness on small local tasks (tests/lm_eval_tasks): multiple choice, rolling
log-likelihood, generation. The HF export under ``--model hf`` and slimpipe's native model agree."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from export_fixtures import OFFLINE, TASKS_DIR, make_run, offline_env

lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("transformers")

from lm_eval.tasks import TaskManager  # noqa: E402

from slimpipe.evaluation.command import eval_command, parse_tasks  # noqa: E402
from slimpipe.evaluation.lm import SlimpipeLM  # noqa: E402
from slimpipe.hf.export import export_hf  # noqa: E402

TASKS = ["slimpipe_mc", "slimpipe_rolling", "slimpipe_gen"]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    for k, v in OFFLINE.items():
        monkeypatch.setenv(k, v)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("lmeval"))


@pytest.fixture(scope="module")
def hf_dir(run, tmp_path_factory) -> Path:
    return export_hf(run, tmp_path_factory.mktemp("lmeval-hf") / "hf")


def _evaluate(model, model_args, batch_size=4) -> dict:
    return lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=TASKS, batch_size=batch_size,
                                   device="cpu", task_manager=TaskManager(include_path=str(TASKS_DIR), include_defaults=False),
                                   log_samples=True)


@pytest.fixture(scope="module")
def both(run, hf_dir) -> tuple[dict, dict]:
    mp = pytest.MonkeyPatch()
    for k, v in OFFLINE.items():
        mp.setenv(k, v)
    try:
        hf = _evaluate("hf", f"pretrained={hf_dir},trust_remote_code=True,dtype=float32")
        native = _evaluate("slimpipe", f"pretrained={run}")
    finally:
        mp.undo()
    return hf, native


def test_native_model_agrees_with_the_hf_export_under_lm_eval(both):
    hf, native = both
    for task in TASKS:
        assert task in hf["results"] and task in native["results"]
    for metric in ("acc,none", "acc_norm,none"):
        assert native["results"]["slimpipe_mc"][metric] == hf["results"]["slimpipe_mc"][metric]
    for metric in ("bits_per_byte,none", "byte_perplexity,none", "word_perplexity,none"):
        a, b = native["results"]["slimpipe_rolling"][metric], hf["results"]["slimpipe_rolling"][metric]
        assert a == pytest.approx(b, rel=0.005), metric
    bpb = native["results"]["slimpipe_rolling"]["bits_per_byte,none"]
    assert 0.5 < bpb < 9  # a trained-for-seconds model on a 512-id BPE: far from 0, below 8 bits + slack
    assert native["results"]["slimpipe_gen"]["exact_match,none"] == hf["results"]["slimpipe_gen"]["exact_match,none"]
    # request by request: the same log-likelihoods, greediness and generated strings
    for task in TASKS:
        ours = {s["doc_id"]: s["resps"] for s in native["samples"][task]}
        theirs = {s["doc_id"]: s["resps"] for s in hf["samples"][task]}
        assert ours.keys() == theirs.keys()
        for doc_id, resps in ours.items():
            for a, b in zip(resps, theirs[doc_id], strict=True):
                if task == "slimpipe_gen":
                    assert a == b
                elif task == "slimpipe_mc":
                    assert a[0][0] == pytest.approx(b[0][0], abs=1e-3) and a[0][1] == b[0][1]
                else:
                    assert a[0] == pytest.approx(b[0], rel=1e-5)
    gens = [r[0][0] for r in ours.values()] if task == "slimpipe_gen" else []
    assert all(isinstance(g, str) and "\n" not in g for g in gens)


def test_rolling_windows_cover_long_documents_with_full_context(run):
    """Documents longer than the model's 64 tokens are scored in lm-eval's windows: every token exactly
    once, the last (partial) window conditioned on a full context, like HFLM."""
    from lm_eval import utils

    lm = SlimpipeLM(str(run), device="cpu", batch_size=3)
    text = json.loads((TASKS_DIR / "rolling.jsonl").read_text().splitlines()[0])["text"]
    ids = lm.tok_encode(text)
    assert len(ids) > 2 * lm.max_length + 10
    windows = [utils.make_disjoint_window(w) for w in utils.get_rolling_token_windows(
        ids, prefix_token=lm.prefix_token_id, max_seq_len=lm.max_length, context_len=1)]
    assert sum(len(c) for _, c in windows) == len(ids)
    assert len(windows[-1][0]) + len(windows[-1][1]) == lm.max_length + 1  # last window: full context
    expected = 0.0
    for ctx, cont in windows:  # one window at a time, scored straight from the model
        x = torch.tensor([(ctx + cont)[:-1]])
        with torch.no_grad():
            logp = torch.log_softmax(lm.model(x)[0][0, -len(cont):].float(), -1)
        expected += float(logp.gather(1, torch.tensor(cont)[:, None]).sum())

    class Req:
        args = (text,)

    (got,) = lm.loglikelihood_rolling([Req()])
    assert got == pytest.approx(expected, rel=1e-5)


def test_batch_size_is_honoured_and_long_contexts_truncate_with_a_warning(run, caplog):
    lm = SlimpipeLM(str(run), device="cpu", batch_size=3, max_length=16)
    shapes: list[tuple[int, int]] = []
    call = lm._model_call
    lm._model_call = lambda x: (shapes.append(tuple(x.shape)), call(x))[1]
    reqs = [(("a", "b"), lm.tok_encode("The for statement"), lm.tok_encode(" is used")) for _ in range(7)]
    long_ctx = lm.tok_encode(" ".join(["The while statement is used for repeated execution"] * 4))
    reqs.append(((None, None), long_ctx, lm.tok_encode(" as long")))
    with caplog.at_level(logging.WARNING, logger="slimpipe.evaluation.lm"):
        res = lm._loglikelihood_tokens(reqs)
    assert [s[0] for s in shapes] == [3, 3, 2]
    assert max(s[1] for s in shapes) == 16
    assert any("truncating" in r.message for r in caplog.records)
    cont = lm.tok_encode(" as long")
    x = torch.tensor([(long_ctx + cont)[-17:-1]])
    with torch.no_grad():
        logp = torch.log_softmax(lm.model(x)[0][0, -len(cont):].float(), -1)
    assert res[-1][0] == pytest.approx(float(logp.gather(1, torch.tensor(cont)[:, None]).sum()), rel=1e-5)
    # identical requests in batches of 3 and of 2 (right-padded differently): the same score. Equal to the
    # last float bits is not promised: a CPU GEMM's rounding depends on the batch's row count (1e-7 here),
    # while padding leaking into a score would move it by orders of magnitude more.
    first = res[0][0]
    assert all(r[0] == pytest.approx(first, rel=1e-6, abs=0) for r in res[:7]), [r[0] for r in res[:7]]


def test_slimpipe_eval_cli_writes_lm_evals_results(run, both, tmp_path):
    out = tmp_path / "results.json"
    result = CliRunner().invoke(eval_command, [str(run), "--tasks", ",".join(TASKS), "--include-path",
                                               str(TASKS_DIR), "--batch-size", "2", "-o", str(out)])
    assert result.exit_code == 0, result.output
    written = json.loads(out.read_text())
    native = both[1]
    for task in TASKS:
        for metric, value in native["results"][task].items():
            if isinstance(value, float) and "stderr" not in metric:
                assert written["results"][task][metric] == pytest.approx(value, rel=1e-6), (task, metric)
    assert written["config"]["batch_size"] == 2 and written["slimpipe"]["run"] == str(run)
    assert "slimpipe_mc" in result.output
    # offline and no --tasks: one line saying why and what to pass
    bare = CliRunner().invoke(eval_command, [str(run), "-o", str(tmp_path / "x.json")])
    assert bare.exit_code != 0 and "--tasks" in bare.output and "HF_HUB_OFFLINE" in bare.output
    assert len(bare.output.strip().splitlines()) == 1
    assert parse_tasks("arc_challenge:25, hellaswag") == {"arc_challenge": 25, "hellaswag": None}


def test_lm_eval_command_line_finds_model_slimpipe(run, tmp_path):
    """lm-eval 0.4.13 has no plugin discovery for models: `python -m slimpipe.evaluation` is lm-eval's own
    command line with `--model slimpipe` registered (the HF path, `--model hf`, is the fixture above)."""
    native = subprocess.run([sys.executable, "-m", "slimpipe.evaluation", "run", "--model", "slimpipe",
                             "--model_args", f"pretrained={run}", "--tasks", "slimpipe_mc", "--include_path",
                             str(TASKS_DIR), "--limit", "3", "--device", "cpu", "--batch_size", "2",
                             "--output_path", str(tmp_path / "sp")],
                            env=offline_env(), capture_output=True, text=True, timeout=300)
    assert native.returncode == 0, native.stderr[-3000:]
    (path,) = tmp_path.glob("sp/**/results_*.json")
    results = json.loads(path.read_text())
    assert results["config"]["model"] == "slimpipe" and 0 <= results["results"]["slimpipe_mc"]["acc,none"] <= 1
