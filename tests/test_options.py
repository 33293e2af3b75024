"""#22.4: options defined once. Every converted command keeps its ``--help`` text, its parameter table (names,
flags, types and ranges, defaults, required, multiple, help) and its one-line errors for bad values exactly as
before the refactor: ``tests/golden/options_before.json`` was captured from the pre-refactor code (6c1c07b) by
running this file as a script (``PYTHONPATH=<old checkout> python tests/test_options.py --write``).
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

GOLDEN = Path(__file__).parent / "golden" / "options_before.json"
#: The commands built on slimpipe.options' generated options.
COMMANDS = ("dedup", "slimpajama", "evalset", "sample", "inspect", "eval", "export", "compare", "propose", "mix",
            "train")


def _bad_value(param: click.Parameter) -> str | None:
    """A value the parameter's type refuses (at parse time, before any work), or None."""
    t = param.type
    if isinstance(t, click.Choice):
        return "no-such-choice"
    if isinstance(t, (click.IntRange, click.FloatRange)):
        if t.min is not None:
            return str(t.min - 1)
        if t.max is not None:
            return str(t.max + 1)
    if t in (click.INT, click.FLOAT) or isinstance(t, (click.types.IntParamType, click.types.FloatParamType)):
        return "not-a-number"
    if type(t).__name__ == "TokenCount":
        return "12 apples"
    return None


def _invoke(args: list[str]) -> dict:
    from slimpipe.cli import main

    # click caches a command's help option from the first context it meets: a test that invoked the command
    # object alone leaves it "--help" without slimpipe's "-h" (seen in a full run). Measure what a user's
    # fresh process shows.
    with click.Context(main) as ctx:
        cmd = main.get_command(ctx, args[0])
    if cmd is not None and hasattr(cmd, "_help_option"):
        cmd._help_option = None
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):  # anything written lands here
        res = CliRunner().invoke(main, args, env={"COLUMNS": "80"}, catch_exceptions=False)
    return {"args": args, "exit_code": res.exit_code, "output": res.output}


def describe(name: str) -> dict:
    """Help text, parameter table and bad-value errors of ``slimpipe NAME``."""
    from slimpipe.cli import _load

    cmd = _load(name)
    params = [json.loads(json.dumps({**p.to_info_dict(), "type_class": type(p.type).__name__,
                                     "show_default": getattr(p, "show_default", None),
                                     "callback": getattr(p.callback, "__name__", None),
                                     "expose_value": p.expose_value, "is_eager": p.is_eager}, default=repr))
              for p in cmd.params]
    def required(but: click.Parameter) -> list[str]:  # without ``but``: a later value would replace the bad one
        out: list[str] = []
        for p in cmd.params:
            if isinstance(p, click.Argument) and p.required:
                out.append("no-such-input")
            elif isinstance(p, click.Option) and p.required and p is not but:
                out += [p.opts[0], "out-folder"]
        return out

    errors = []
    for p in cmd.params:
        value = _bad_value(p) if isinstance(p, click.Option) and not p.is_flag else None
        if value is not None:  # the bad option first: click converts in command-line order
            res = _invoke([name, p.opts[-1], value, *required(but=p)])
            if res["exit_code"] == 2:
                errors.append(res)
    return {"help": _invoke([name, "--help"])["output"], "params": params, "errors": errors}


def capture(names: Sequence[str] = COMMANDS) -> dict:
    return {name: describe(name) for name in names}


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads(GOLDEN.read_text())


@pytest.mark.parametrize("name", COMMANDS)
def test_help_and_options_unchanged(golden: dict, name: str) -> None:
    now, before = describe(name), golden[name]
    assert now["help"] == before["help"]
    assert [p["name"] for p in now["params"]] == [p["name"] for p in before["params"]]
    for p, q in zip(now["params"], before["params"], strict=True):
        assert p == q, p["name"]
    assert [e["args"] for e in now["errors"]] == [e["args"] for e in before["errors"]]
    for e, f in zip(now["errors"], before["errors"], strict=True):
        assert e == f


def test_the_golden_file_covers_the_options() -> None:
    """The capture is not empty: every numeric/choice option of the big commands has its bad-value error."""
    g = json.loads(GOLDEN.read_text())
    assert len(g["dedup"]["params"]) == 22 and len(g["slimpajama"]["params"]) == 36
    assert len(g["dedup"]["errors"]) >= 10 and len(g["slimpajama"]["errors"]) >= 20


if __name__ == "__main__":
    if sys.argv[1:2] != ["--write"] or not set(sys.argv[2:]) <= set(COMMANDS):
        sys.exit("usage: PYTHONPATH=<checkout> python tests/test_options.py --write [COMMAND ...]\n"
                 "  (no COMMAND: capture all of them; else only these, the other entries kept as they are)")
    import slimpipe

    print("capturing from", slimpipe.__file__, file=sys.stderr)
    names = sys.argv[2:]
    captured = {**json.loads(GOLDEN.read_text()), **capture(names)} if names else capture()
    GOLDEN.write_text(json.dumps(captured, indent=1, sort_keys=True) + "\n")


def test_shared_options_are_one_definition_with_one_default() -> None:
    """dedup's options inside slimpajama, and evalset's draw options inside slimpajama, are the same fields; each
    option's default is its dataclass field's."""
    import dataclasses

    from slimpipe.dedup.command import DedupCommand, DedupOptions
    from slimpipe.evalset.command import EvalDrawOptions
    from slimpipe.options import click_params, values_of
    from slimpipe.pipeline.command import SlimpajamaCommand

    slim = [p.name for p in click_params(SlimpajamaCommand)]
    for group in (DedupOptions, EvalDrawOptions):
        names = [p.name for p in click_params(group)]
        assert names and any(slim[i:i + len(names)] == names for i in range(len(slim)))
    assert [p.name for p in click_params(DedupCommand)] == ["sources", "out", *names_of(DedupOptions), "quiet"]
    ctx = click.Context(click.Command("x"))
    for p in click_params(DedupOptions):
        assert p.get_default(ctx) == {f.name: f.default for f in dataclasses.fields(DedupOptions)}[p.name]
    d = DedupOptions(threshold=0.7, force=True)
    assert values_of(d)["threshold"] == 0.7 and d.params().threshold == 0.7 and d.params().bands * d.params().rows <= 128


def names_of(cls: type) -> list[str]:
    from slimpipe.options import click_params

    return [p.name for p in click_params(cls)]


def test_an_option_defined_twice_is_refused() -> None:
    from dataclasses import dataclass

    from slimpipe.evalset.command import EvalDrawOptions
    from slimpipe.options import command_options, group

    @dataclass(frozen=True, kw_only=True)
    class Twice:
        a: EvalDrawOptions = group(EvalDrawOptions)
        b: EvalDrawOptions = group(EvalDrawOptions)

    with pytest.raises(TypeError, match="eval_seed"):
        command_options(Twice)(lambda opts: None)


def test_a_command_gets_one_instance_and_keeps_its_other_parameters() -> None:
    from dataclasses import dataclass

    from slimpipe.evalset.command import EvalDrawOptions
    from slimpipe.options import command_options, group, option

    @dataclass(frozen=True, kw_only=True)
    class Cmd:
        name: str = option("--name", default="x", help="A name.")
        draw: EvalDrawOptions = group(EvalDrawOptions)

    seen = []

    @click.command("c")
    @command_options(Cmd)
    @click.option("--extra", is_flag=True)
    def c(opts: Cmd, extra: bool) -> None:
        seen.append((opts, extra))

    assert [p.name for p in c.params][:2] == ["name", "eval_seed"] and c.params[-1].name == "extra"
    res = CliRunner().invoke(c, ["--eval-seq-len", "16", "--extra"])
    assert res.exit_code == 0, res.output
    assert seen == [(Cmd(name="x", draw=EvalDrawOptions(eval_seq_len=16)), True)]
    assert seen[0][0].draw.build().seq_len == 16


def test_mix_and_train_options_reach_the_library_as_before() -> None:
    """mix and train build the library's MixOptions / TrainConfig from their option fields by name: every option
    arrives (each set here to a value unlike the library's default), exactly as the old keyword-by-keyword call."""
    from slimpipe.mix.command import MixCommand
    from slimpipe.mix.common import MixOptions
    from slimpipe.train.command import TrainCommand
    from slimpipe.train.plan import TrainConfig

    m = MixCommand(slimpajama_dir="sp", config="dc1", tokens=5, out="o", tokenizer="train", vocab_size=300,
                   bpe_sample=7, seq_len=16, seed=3, output_format="text", eval_tokens=9, token_cache="c", force=True,
                   keep_work=True, ray_address="auto", quiet=False)
    assert m.mix_options(print) == MixOptions(
        tokens=5, seq_len=16, seed=3, output_format="text", tokenizer="train", vocab_size=300, bpe_sample_bytes=7,
        eval_tokens=9, token_cache="c", force=True, keep_work=True, ray_address="auto", quiet=False, warn=print)

    t = TrainCommand(mix_dir="given", model="111m", output="run", max_steps=3, tokens="2k", eval_interval=5,
                     eval_sequences=6, seed=7, lr=0.01, schedule="cosine", warmup_steps=1, batch_size=8, micro_batch=2,
                     seq_len=16, attention="sdpa", mup=True, checkpoint_interval=2, checkpoint_minutes=0.5,
                     parallel="fsdp", activation_checkpointing=True, device="cpu", ray_address="auto", num_workers=2,
                     cpus_per_worker=1, use_gpu=True, resume=True, compile_=False, threads=1, phases_file="p.yaml",
                     init_from="i", eval_seq_lens="8,16", force=True)
    phases = [{"mix": "m", "tokens": 10}]
    assert t.config("read", phases, [8, 16]) == TrainConfig(
        mix_dir="read", out_dir="run", model="111m", max_steps=3, tokens=2000, eval_interval=5, eval_sequences=6,
        seed=7, lr=0.01, schedule="cosine", warmup_steps=1, batch_size=8, micro_batch=2, seq_len=16,
        attention="sdpa", mup=True, checkpoint_interval=2, checkpoint_minutes=0.5, parallel="fsdp",
        activation_checkpointing=True, device="cpu", resume=True, compile=False, threads=1, phases=phases,
        init_from="i", eval_seq_lens=[8, 16])
