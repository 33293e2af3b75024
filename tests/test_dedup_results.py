"""The dedup job's typed hand-offs: the report is built from parameters and typed step results alone (no
job object, no Ray), a marker this code cannot read is refused by name, and the layering holds."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from slimpipe.dedup import results as R
from slimpipe.dedup.params import load_preset
from slimpipe.dedup.report import AccountingError, build_report
from slimpipe.io.readers import FileStats

DEDUP = Path(__file__).resolve().parents[1] / "slimpipe" / "dedup"


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_report_does_not_import_the_job_and_dedup_makes_no_ray_call() -> None:
    assert not {n for n in _imports(DEDUP / "report.py") if n.startswith("slimpipe.dedup.job")}
    assert not {n for n in _imports(DEDUP / "results.py") if n.startswith("slimpipe.dedup.")} - {
        "slimpipe.dedup.params"}
    for path in sorted(DEDUP.rglob("*.py")):
        ray = {n for n in _imports(path) if n == "ray" or n.startswith("ray.")}
        assert not ray, f"{path.relative_to(DEDUP)} imports {ray}: Ray tasks go through slimpipe.runtime"


def _read(source: str, docs: int, nbytes: int, short: int = 0, short_bytes: int = 0) -> R.ReadResult:
    stats = FileStats(file=f"{source}_sample.jsonl", source=source, read=docs, accepted=docs)
    return R.ReadResult(stats=stats, lines=docs, docs=docs, short=short,
                        by_source={source: R.SourceCounts(docs, nbytes, short, short_bytes)}, sources=[source],
                        signed=docs - short, clean_chars=nbytes, band_rows=0, exact_piece=None, band_piece=None,
                        texts=None, rejects=None)


def _keep(removed: dict, cross: dict, sizes: dict) -> R.KeepResult:
    return R.KeepResult(removed=removed, cross=cross, cluster_sizes=sizes, components=sum(sizes.values()), saved={},
                        check_rounds=0, removed_bytes=sum(v[1] for v in removed.values()), top=[], piece=None)


def _results(kept_c4: list[int]) -> R.DedupResults:
    # c4: 10 docs (1 short) of which 2 near copies of each other's c4 doc and 1 copy of a wiki doc (global only)
    g = _keep({("c4", "near_duplicate"): [2, 200], ("c4", "exact_duplicate"): [1, 100]},
              {("c4", "c4"): 2, ("c4", "wikipedia"): 1}, {2: 1, 3: 1})
    loc = _keep({("c4", "near_duplicate"): [2, 200]}, {("c4", "c4"): 2}, {3: 1})
    written = [R.WriteResult(kept={"c4": kept_c4}, removed_file=None, sink={"shards": []}),
               R.WriteResult(kept={"wikipedia": [4, 400]}, removed_file=None, sink={"shards": []})]
    return R.DedupResults(
        files=2, tasks=2, partitions=4, read=[_read("c4", 10, 1000, 1, 50), _read("wikipedia", 4, 400)],
        buckets=[R.BucketsResult(0, 0, 7, 3, None, None, None)], verify=None,
        components=R.ComponentsInfo("single-process", 3, 1, 0, {"global": {"edges": 3, "nodes": 5},
                                                                 "local": {"edges": 2, "nodes": 3}}),
        keep={"global": [g], "local": [loc]}, written=written, samples=[], timings={"read": 1.0})


def test_build_report_from_typed_results_alone() -> None:
    params = load_preset("slimpajama").with_overrides(mode="global")
    report = build_report(params, _results([6, 650]))
    c4 = report["sources"]["c4"]
    assert (c4["docs_in"], c4["short_docs"], c4["kept_docs"]) == (10, 1, 6)
    assert c4["global"]["near_docs"] == 2 and c4["global"]["exact_docs"] == 1
    assert c4["local"]["kept_docs"] == 7 and c4["global_removes_on_top_docs"] == 1
    assert report["cross_source_duplicates"] == {"c4": {"wikipedia": 1}}
    assert report["cluster_sizes"] == {"global": {"2": 1, "3": 1}, "local": {"3": 1}}
    assert report["inputs"] == {"files": 2, "tasks": 2, "partitions": 4}
    assert report["components"]["global"] == {"edges": 3, "nodes": 5}
    assert report["total"]["docs_in"] == 14 and report["total"]["kept_docs"] == 10
    with pytest.raises(AccountingError, match="c4: wrote 7 docs"):  # one document written too many
        build_report(params, _results([7, 700]))


def test_a_marker_without_a_needed_field_is_refused_by_name() -> None:
    keep = _keep({("c4", "near_duplicate"): [1, 10]}, {}, {2: 1}).to_dict()
    assert R.KeepResult.from_dict({**keep, "_io": {"files": 1, "bytes": 2}}).removed == {("c4", "near_duplicate"): [1, 10]}
    del keep["piece"]
    with pytest.raises(R.MarkerError, match="keep result .* lacks piece"):
        R.KeepResult.from_dict(keep)


def test_a_marker_this_code_cannot_read_is_one_line_on_the_cli(tmp_path, ray_session) -> None:
    """A workspace whose read manifest lacks a field (written by other code) stops the command with one line
    naming what to do, not a traceback."""
    import json

    from click.testing import CliRunner

    from slimpipe.cli import main

    src = tmp_path / "wikipedia_sample.jsonl"
    src.write_text("".join(json.dumps({"text": f"document number {i} " * 20}) + "\n" for i in range(5)))
    out = tmp_path / "out"
    args = ["dedup", str(src), "-o", str(out), "-q", "--keep-intermediates"]
    assert CliRunner().invoke(main, args).exit_code == 0
    manifest = out / "_work" / "read.done.json"
    done = json.loads(manifest.read_text())
    for r in done["results"]:
        del r["band_rows"]
    manifest.write_text(json.dumps(done))
    (out / "report.json").unlink()  # so the job runs its steps again, from the workspace
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "lacks band_rows" in result.output and "run again" in result.output
