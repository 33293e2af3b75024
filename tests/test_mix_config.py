"""Mix definitions: the paper's six SlimPajama-DC configurations, the RedPajama baseline, custom mixes."""

from __future__ import annotations

import math

import pytest

from slimpipe.mix.config import (
    PRESET_NAMES,
    MixConfig,
    MixConfigError,
    available_mixes,
    load_mix,
    parse_inline,
)
from slimpipe.sources import SOURCES

# SlimPajama-DC (arXiv 2309.10818) as tabulated in docs REFERENCE.md, in SOURCES order:
# common_crawl, c4, github, book, arxiv, wikipedia, stackexchange
PAPER = {
    "dc1": (100.0, 0, 0, 0, 0, 0, 0),
    "dc2": (90.9, 0, 9.1, 0, 0, 0, 0),
    "dc3": (75.8, 0, 24.2, 0, 0, 0, 0),
    "dc4": (75.8, 0, 0, 0, 0, 24.2, 0),
    "dc5": (75.8, 0, 9.1, 7.9, 0, 7.3, 0),
    "dc6": (52.2, 26.7, 5.2, 4.2, 4.6, 3.8, 3.3),
    "redpajama": (72.6, 14.4, 4.9, 2.1, 2.3, 2.0, 1.7),
}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_presets_load_with_the_papers_numbers(name):
    mix = load_mix(name)
    assert mix.name == name
    assert list(mix.weights) == list(SOURCES)
    assert tuple(mix.weights.values()) == PAPER[name]
    total = math.fsum(PAPER[name])
    for s, w in zip(SOURCES, PAPER[name], strict=True):
        assert mix.shares[s] == pytest.approx(w / total, abs=1e-12)
    assert math.fsum(mix.shares.values()) == pytest.approx(1.0, abs=1e-12)
    assert mix.active_sources == [s for s, w in zip(SOURCES, PAPER[name], strict=True) if w > 0]


def test_every_preset_is_shipped_and_documented():
    assert set(PRESET_NAMES) <= set(available_mixes())
    for name in PRESET_NAMES:
        assert load_mix(name).description


def test_dc5_is_normalised_although_the_paper_sums_to_100_1():
    mix = load_mix("dc5")
    assert math.fsum(mix.weights.values()) == pytest.approx(100.1)
    assert mix.shares["common_crawl"] == pytest.approx(75.8 / 100.1)


@pytest.mark.parametrize("spelling", ["DC-6", "dc6", "DC6", "dc_6"])
def test_preset_spellings(spelling):
    assert load_mix(spelling).weights == load_mix("dc6").weights


def test_custom_yaml_mix_normalised_with_source_aliases(tmp_path):
    f = tmp_path / "code-heavy.yaml"
    f.write_text("description: half code\nweights:\n  CommonCrawl: 2\n  github: 1\n  RedPajamaBook: 1\n")
    mix = load_mix(f)
    assert mix.name == "code-heavy" and mix.path == str(f)
    assert mix.shares["common_crawl"] == 0.5 and mix.shares["github"] == 0.25 and mix.shares["book"] == 0.25
    assert mix.shares["c4"] == 0.0
    assert mix.to_dict()["weights"]["common_crawl"] == 2.0


def test_any_source_name_is_a_source():
    """RedPajama's seven stay first (0 when unnamed); another name is a source of its own, after them."""
    mix = MixConfig(name="x", weights={"arabic_web": 1, "cc": 3, "StarCoder": 1})
    assert list(mix.weights) == [*SOURCES, "arabic_web", "starcoder"]
    assert mix.active_sources == ["common_crawl", "arabic_web", "starcoder"]
    assert mix.shares["arabic_web"] == 0.2 and mix.shares["c4"] == 0.0
    assert "arabic_web" not in load_mix("dc6").weights  # presets give other sources nothing


def test_inline_mix():
    mix = load_mix("cc=3, github=1")
    assert mix.shares["common_crawl"] == 0.75 and mix.shares["github"] == 0.25
    assert parse_inline("wikipedia=1").active_sources == ["wikipedia"]


@pytest.mark.parametrize(("weights", "message"), [
    ({"common_crawl": 1, "red/dit": 1}, "'red/dit' is not a source name"),
    ({"common_crawl": 1, "github": -0.5}, "negative"),
    ({"common_crawl": 0, "github": 0.0}, "all weights are zero"),
    ({"common_crawl": "lots"}, "must be a number"),
    ({"common_crawl": True}, "must be a number"),
    ({"common_crawl": float("nan")}, "finite"),
    ({"cc": 1, "common_crawl": 2}, "given twice"),
    ({}, "non-empty"),
])
def test_invalid_weights_are_clear_errors(weights, message):
    with pytest.raises(MixConfigError, match=message):
        MixConfig(name="bad", weights=weights)


def test_file_errors(tmp_path):
    with pytest.raises(MixConfigError, match="unknown keys"):
        MixConfig.from_dict({"weigths": {"c4": 1}})
    with pytest.raises(MixConfigError, match="no `weights:`"):
        MixConfig.from_dict({"name": "x"})
    with pytest.raises(MixConfigError, match="not found"):
        load_mix(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("weights: [1, 2\n")
    with pytest.raises(MixConfigError, match="not valid YAML"):
        load_mix(bad)
    with pytest.raises(MixConfigError, match="unknown mix 'dc7'"):
        load_mix("dc7")
    with pytest.raises(MixConfigError, match="SOURCE=WEIGHT"):
        load_mix("c4=1,github")
