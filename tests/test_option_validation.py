"""#19.17: a numeric option out of range is one line and exit 2, before any work (no OUT, no Ray, no traceback)."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from slimpipe.cli import _load, main

COMMANDS = ("dedup", "slimpajama", "evalset", "mix")

BAD = [
    ("dedup", "--bands", "0"),
    ("dedup", "--rows", "0"),
    ("dedup", "--partitions", "-3"),
    ("dedup", "--num-perm", "0"),
    ("dedup", "--ngram", "0"),
    ("dedup", "--threshold", "1.5"),
    ("dedup", "--threshold", "nan"),
    ("dedup", "--min-chars", "-1"),
    ("dedup", "--max-edges-in-memory", "-1"),
    ("slimpajama", "--bands", "0"),
    ("slimpajama", "--partitions", "0"),
    ("slimpajama", "--holdout-fraction", "1"),
    ("slimpajama", "--holdout-fraction", "-0.1"),
    ("slimpajama", "--chunks", "0"),
    ("slimpajama", "--chunk-mb", "0"),
    ("slimpajama", "--chunk-mb", "inf"),
    ("slimpajama", "--shard-mb", "-1"),
    ("slimpajama", "--shard-records", "0"),
    ("slimpajama", "--seed", "-1"),
    ("slimpajama", "--split-seed", "-1"),
    ("slimpajama", "--eval-seq-len", "0"),
    ("slimpajama", "--eval-max-fraction", "0"),
    ("evalset", "--eval-seed", "-1"),
    ("evalset", "--eval-min-seqs", "0"),
    ("evalset", "--eval-min-tokens", "0"),
    ("evalset", "--eval-seq-len", "-5"),
    ("evalset", "--eval-max-fraction", "2"),
    ("evalset", "--eval-max-fraction", "nan"),
    ("mix", "--seed", "-1"),
    ("mix", "--seq-len", "0"),
    ("mix", "--vocab-size", "10"),
]


def _corpus(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "c4_sample.jsonl").write_text("".join(json.dumps({"text": f"document {i} " * 40}) + "\n" for i in range(3)))
    return d


@pytest.mark.parametrize("command, option, value", BAD)
def test_a_numeric_option_out_of_range_is_one_line_and_exit_2_before_any_work(
        tmp_path: Path, command: str, option: str, value: str) -> None:
    src = _corpus(tmp_path / "src")
    out = tmp_path / "out"
    args = [command, str(src), "-o", str(out), option, value]
    if command == "mix":
        args += ["--config", "dc1", "--tokens", "5M"]
    r = CliRunner().invoke(main, args)
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert r.exit_code == 2, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert len(lines) == 1 and lines[0].startswith("Error: ") and option in lines[0], r.output
    assert not out.exists()  # refused before OUT was claimed (and so before Ray)


def _numeric_options():
    for name in COMMANDS:
        for p in _load(name).params:
            if isinstance(p, click.Option) and not p.is_flag:
                yield name, p


def test_every_numeric_option_says_its_range() -> None:
    # a bare int or float option takes 0, -3, nan or inf and fails late (a traceback after Ray started)
    bare = [f"{name} {p.opts[-1]}" for name, p in _numeric_options()
            if type(p.type) in (click.types.IntParamType, click.types.FloatParamType)]
    assert bare == []
    assert sum(1 for _ in _numeric_options()) > 20


def test_a_value_in_range_still_passes() -> None:
    from slimpipe.options import OPEN_FRACTION, POSITIVE_INT, SEED, megabytes

    assert POSITIVE_INT.convert("3", None, None) == 3 and SEED.convert(str(2**64 - 1), None, None) == 2**64 - 1
    assert OPEN_FRACTION.convert("0.8", None, None) == 0.8 and megabytes().convert("0.5", None, None) == 0.5
    with pytest.raises(click.BadParameter, match="not a finite number"):
        megabytes().convert("inf", None, None)
