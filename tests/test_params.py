"""Dedup parameters: presets, the S-curve optimiser, overrides."""

from __future__ import annotations

import dataclasses

import pytest

from slimpipe.dedup.params import (
    DedupParams,
    conf_dir,
    detection_probability,
    load_preset,
    optimal_bands_rows,
)


def test_slimpajama_preset_is_slimpajamas_definition():
    p = load_preset("slimpajama")
    assert (p.unit, p.ngram, p.num_perm, p.threshold, p.bands, p.rows) == ("char", 13, 128, 0.8, 9, 13)
    assert (p.min_chars, p.mode, p.keep, p.verify, p.name) == (200, "global", "smallest-id", False, "slimpajama")
    # The documented weakness of SlimPajama's banding: ~40% detection at exactly J = 0.8.
    assert p.recall_at_threshold == pytest.approx(0.3988, abs=1e-3)
    assert detection_probability(0.9, 9, 13) == pytest.approx(0.929, abs=1e-3)


def test_recall_preset_meets_its_target():
    p = load_preset("recall")
    assert p.bands * p.rows <= p.num_perm
    assert p.recall_at_threshold >= 0.99
    assert p.verify and p.min_recall == 0.99
    assert (p.unit, p.ngram, p.threshold, p.min_chars, p.mode) == ("char", 13, 0.8, 200, "global")
    # Its banding is what the optimiser picks under the same recall floor.
    assert optimal_bands_rows(0.8, p.num_perm, min_recall=0.99) == (p.bands, p.rows)


def test_optimal_bands_rows_reproduces_slimpajama():
    assert optimal_bands_rows(0.8, 128) == (9, 13)


def test_optimal_bands_rows_matches_datasketch():
    lsh = pytest.importorskip("datasketch.lsh")
    for threshold in (0.5, 0.8, 0.9):
        for num_perm in (32, 128):
            for fp_w, fn_w in ((0.5, 0.5), (0.2, 0.8)):
                ours = optimal_bands_rows(threshold, num_perm, fp_w, fn_w)
                assert ours == lsh._optimal_param(threshold, num_perm, fp_w, fn_w), (threshold, num_perm)


def test_min_recall_floor_and_infeasible():
    b, r = optimal_bands_rows(0.8, 128, min_recall=0.99)
    assert b * r <= 128 and detection_probability(0.8, b, r) >= 0.99
    with pytest.raises(ValueError):
        optimal_bands_rows(0.8, 8, min_recall=0.999999)
    with pytest.raises(ValueError):
        optimal_bands_rows(1.2, 128)


def test_with_overrides_rederives_bands_and_rows():
    p = load_preset("slimpajama")
    q = p.with_overrides(threshold=0.7)
    assert (q.bands, q.rows) == optimal_bands_rows(0.7, 128)
    assert (q.bands, q.rows) != (9, 13) and q.ngram == 13
    assert p.with_overrides(threshold=0.7, bands=10, rows=12).bands == 10
    assert p.with_overrides(bands=16).rows == 8
    assert p.with_overrides(rows=8).bands == 16
    assert p.with_overrides(threshold=None, verify=None) == p  # None = not given (CLI defaults)
    r = load_preset("recall").with_overrides(threshold=0.85)
    assert r.recall_at_threshold >= 0.99  # the recall floor travels with the preset
    assert p.with_overrides(num_perm=256).bands * p.with_overrides(num_perm=256).rows <= 256


def test_overrides_and_construction_validate():
    p = load_preset("slimpajama")
    with pytest.raises(TypeError):
        p.with_overrides(treshold=0.5)
    with pytest.raises(ValueError):
        p.with_overrides(bands=20, rows=13)  # 260 > 128
    with pytest.raises(ValueError):
        p.with_overrides(unit="sentence")
    with pytest.raises(ValueError):
        p.with_overrides(mode="both")
    with pytest.raises(ValueError):
        p.with_overrides(keep="random")
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.threshold = 0.5  # type: ignore[misc]
    assert p.with_overrides(source_priority=["wikipedia", "book"]).source_priority == ("wikipedia", "book")


def test_load_preset_from_path_and_errors(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("ngram: 5\nunit: word\nnum_perm: 112\nbands: 14\nrows: 8\nthreshold: 0.72\n")
    p = load_preset(f)
    assert (p.name, p.unit, p.ngram, p.bands, p.rows) == ("mine", "word", 5, 14, 8)
    assert load_preset(str(f)) == p
    bad = tmp_path / "bad.yaml"
    bad.write_text("ngrams: 5\n")
    with pytest.raises(ValueError):
        load_preset(bad)
    with pytest.raises(FileNotFoundError):
        load_preset("no-such-preset")
    with pytest.raises(FileNotFoundError):
        load_preset(tmp_path / "missing.yaml")


def test_conf_dir_and_round_trip():
    assert (conf_dir() / "dedup" / "slimpajama.yaml").is_file()
    p = load_preset("recall")
    assert DedupParams.from_dict(p.to_dict()) == p
