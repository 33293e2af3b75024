"""slimpipe.units: the one count parser of every command (train --tokens, mix --tokens, phases, --max-bytes)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from slimpipe.units import format_count, parse_count


@pytest.mark.parametrize(("text", "value"), [
    ("330B", 330_000_000_000), ("5M", 5_000_000), ("2.5k", 2_500), ("1e6", 1_000_000), ("1_000_000", 1_000_000),
    ("1,000", 1_000), ("12", 12), ("1.5T", 1_500_000_000_000), (" 7m ", 7_000_000), (4096, 4096),
    ("2.2e9", 2_200_000_000), ("2G", 2_000_000_000),
])
def test_parse_count(text, value):
    assert parse_count(text) == value


@pytest.mark.parametrize("bad", ["", "0", "-5M", "lots", "1.5", "5X", "nan", "inf", True, 0, "2 apples"])
def test_parse_count_rejects(bad):
    with pytest.raises(ValueError):
        parse_count(bad)


def test_zero_only_when_allowed_and_errors_name_the_quantity():
    assert parse_count("0", allow_zero=True) == 0 and parse_count("0k", allow_zero=True) == 0
    with pytest.raises(ValueError, match="not a token count: 'x'"):
        parse_count("x", what="token count")


@pytest.mark.parametrize(("n", "text"), [(330_000_000_000, "330B"), (2_500, "2.5k"), (131_072, "131072"),
                                          (5_000_000, "5M"), (999, "999"), (1_234_567_891, "1234567891")])
def test_format_count_round_trips(n, text):
    assert format_count(n) == text and parse_count(format_count(n)) == n


def test_every_command_parses_counts_alike(tmp_path):
    """train --tokens, mix --tokens and a phases file's tokens: read the same spellings through one parser
    (before: train truncated '1.5' to 1 and accepted what mix refused)."""
    from slimpipe.mix.budget import parse_token_count
    from slimpipe.mix.command import TokenCount
    from slimpipe.train.command import train_command
    from slimpipe.train.phases import normalise_phases

    for text in ("2.5k", "1e6", "1_000", "3M"):
        n = parse_count(text)
        assert parse_token_count(text) == TokenCount().convert(text, None, None) == n
        assert normalise_phases([{"mix": "m", "tokens": text}])[0]["tokens"] == n
    result = CliRunner().invoke(train_command, [str(tmp_path), "-o", str(tmp_path / "run"), "--tokens", "1.5"])
    assert result.exit_code != 0 and "whole number" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()
