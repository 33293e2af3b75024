"""The first hour (#15): inputs, output folders, one-line user errors, help on every option."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
import zstandard
from click.testing import CliRunner

from slimpipe.cli import COMMANDS, _load, main

ROOT = Path(__file__).resolve().parents[1]


def _text(i: int, topic: str) -> str:
    words = " ".join(f"{topic}{(i * 7 + k) % 97}" for k in range(80))
    return f"Document {i} about {topic}: {words}."


def _corpus(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "c4_sample.jsonl").write_text("".join(json.dumps({"text": _text(i, "web")}) + "\n" for i in range(12)))
    data = "".join(json.dumps({"text": _text(i, "noise")}) + "\n" for i in range(6)).encode()
    (d / "perturbed_sample.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(data))
    return d


def _run(*args: str) -> click.testing.Result:
    return CliRunner().invoke(main, list(args))


def _one_error_line(result: click.testing.Result) -> str:
    lines = [x for x in result.output.splitlines() if x.strip()]
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: "), result.output
    return lines[0]


# ------------------------------------------------------------------------------------------------
# help and one-line errors


def _options(cmd: click.Command, path: str):
    if isinstance(cmd, click.Group):
        for name in cmd.list_commands(click.Context(cmd)):
            yield from _options(cmd.get_command(click.Context(cmd), name), f"{path} {name}")
        return
    for p in cmd.params:
        if isinstance(p, click.Option) and "--help" not in p.opts:
            yield path, p


def test_every_option_of_every_command_has_help() -> None:
    missing = []
    for name in COMMANDS:
        for path, opt in _options(_load(name), name):
            if not (opt.help or "").strip():
                missing.append(f"slimpipe {path} {'/'.join(opt.opts)}")
    assert not missing, "options without help text:\n" + "\n".join(missing)
    assert any(o.opts == ["-v", "--verbose"] and o.help for o in main.params)


def test_missing_input_fails_before_ray_starts_and_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    for job in ("dedup", "slimpajama"):
        for verbose in ([], ["-v"]):
            t0 = time.monotonic()
            r = subprocess.run([sys.executable, "-m", "slimpipe.cli", *verbose, job, str(tmp_path / "nope"), "-o",
                                str(out)], capture_output=True, text=True, cwd=ROOT, timeout=120,
                               env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
            elapsed = time.monotonic() - t0
            print(f"{job} {verbose}: missing input refused in {elapsed:.2f} s (process start and imports included)")
            assert r.returncode == 2, r.stderr
            lines = r.stderr.strip().splitlines()
            assert lines[-1] == f"Error: input not found: {tmp_path / 'nope'}"
            if verbose:
                assert "ray: " not in r.stderr  # -v shows Ray starting: it never did
            else:
                assert len(lines) == 1, r.stderr
            assert not out.exists()


def test_user_errors_are_one_line_with_exit_code_2(tmp_path: Path) -> None:
    src = _corpus(tmp_path / "src")
    r = _run("dedup", str(src), "-o", str(tmp_path / "o"), "--source-priority", "c4,http://x/y")
    assert r.exit_code == 2 and "is not a source name" in _one_error_line(r)
    for args, says in ((["dedup"], "Missing argument 'SOURCES...'"),
                       (["dedup", str(src), "-o", "x", "--mode", "foo"], "'foo' is not one of 'global', 'local'"),
                       (["mix", str(tmp_path / "nope"), "--config", "dc1", "--tokens", "5M", "-o", "x"],
                        f"{tmp_path / 'nope'}"),
                       (["nosuch"], "No such command 'nosuch'")):
        r = _run(*args)
        assert r.exit_code == 2 and says in _one_error_line(r) and "-h`)" in r.output
    r = _run("dedup", str(src), "-o", str(tmp_path / "o"), "--source", "a/b")
    assert r.exit_code == 2 and "not a source name" in _one_error_line(r)
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------------
# output folders


def test_non_empty_out_that_is_not_slimpipe_is_refused_naming_what_is_there(tmp_path: Path) -> None:
    src = _corpus(tmp_path / "src")
    out = tmp_path / "mine"
    out.mkdir()
    (out / "manifest.json").write_text('{"mine": true}')
    (out / "notes.txt").write_text("my notes")
    for job in ("dedup", "slimpajama"):
        r = _run(job, str(src), "-o", str(out))
        assert r.exit_code == 2
        line = _one_error_line(r)
        assert "is not empty and is not a slimpipe output" in line and "manifest.json, notes.txt" in line
        assert "--force" in line
    # --force never overwrites a file the job would write
    r = _run("dedup", str(src), "-o", str(out), "--force")
    assert r.exit_code == 2 and "already holds manifest.json" in _one_error_line(r)
    assert (out / "manifest.json").read_text() == '{"mine": true}' and sorted(os.listdir(out)) == [
        "manifest.json", "notes.txt"]


def test_out_equal_to_or_inside_a_source_is_refused(tmp_path: Path) -> None:
    src = _corpus(tmp_path / "src")
    for out in (src, src / "deduped", src / "." / "x" / ".."):
        r = _run("dedup", str(src), "-o", str(out))
        assert r.exit_code == 2
        assert "its outputs would be read back as inputs" in _one_error_line(r)
    assert sorted(os.listdir(src)) == ["c4_sample.jsonl", "perturbed_sample.jsonl.zst"]
    runs = tmp_path / "run"
    runs.mkdir()
    r = _run("compare", str(runs), "-o", str(runs / "report"))
    assert r.exit_code == 2 and "read back as inputs" in _one_error_line(r)


def test_an_out_holding_another_job_is_one_line(tmp_path: Path) -> None:
    from slimpipe.outdir import MARKER, claim

    src = _corpus(tmp_path / "src")
    out = tmp_path / "out"
    claim(out, "slimpajama", "x")
    (out / "train").mkdir()
    r = _run("dedup", str(src), "-o", str(out))
    assert r.exit_code == 2
    assert "holds the output of `slimpipe slimpajama`, not `slimpipe dedup`" in _one_error_line(r)
    assert json.loads((out / MARKER).read_text())["job"] == "slimpajama"


def test_force_dedup_any_source_name_and_the_same_job_with_other_options(tmp_path: Path, ray_session) -> None:
    """A real dedup into a folder of the user's files with --force: their file survives, sources keep
    any name, the same command resumes, and other options are one line, not a traceback."""
    src = _corpus(tmp_path / "src")
    (src / "README.md").write_text("not data")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    args = ["dedup", str(src), "-o", str(out), "--force", "--quiet"]
    r = _run(*args)
    assert r.exit_code == 0, r.output
    assert (out / "notes.txt").read_text() == "my notes"
    assert sorted(p.name for p in (out / "kept").iterdir()) == ["c4", "perturbed"]
    assert "skipped: README.md: not a data file" in r.output  # named on stderr
    report = json.loads((out / "report.json").read_text())
    assert {"perturbed", "c4"} <= set(report["sources"])
    assert any(f["file"] == "README.md" and f["status"] == "skipped" for f in report["files"])
    assert _run(*args).exit_code == 0  # the same job: finished, nothing to do
    r = _run(*args, "--threshold", "0.5")
    assert r.exit_code == 2
    assert "holds a `slimpipe dedup` run with other inputs or options" in _one_error_line(r)
    (src / "c4_more.jsonl").write_text(json.dumps({"text": _text(99, "web")}) + "\n")  # the inputs changed on disk
    r = _run(*args)
    assert r.exit_code == 2 and "holds a dedup job with other inputs or parameters" in _one_error_line(r)


def test_slimpajama_names_unreadable_files_and_claims_no_completeness(tmp_path: Path, ray_session) -> None:
    src = _corpus(tmp_path / "src")
    (src / "github_sample.jsonl.zst").write_bytes(b"\x28\xb5\x2f\xfd" + b"not a zstd frame" * 8)  # corrupt
    wiki = tmp_path / "elsewhere" / "wiki"
    wiki.mkdir(parents=True)
    (wiki / "wikipedia_sample.jsonl").write_text("".join(json.dumps({"text": _text(i, "wiki")}) + "\n"
                                                         for i in range(5)))
    (src / "wiki").symlink_to(wiki, target_is_directory=True)  # a symlinked data folder: followed
    (wiki / "loop").symlink_to(src, target_is_directory=True)  # back to the root: named, not followed
    (src / "gone.jsonl").symlink_to(tmp_path / "nowhere.jsonl")  # broken: named as unreadable
    out = tmp_path / "out"
    r = _run("slimpajama", str(src), "-o", str(out), "--no-eval-set", "--quiet", "--holdout-fraction", "0.2")
    assert r.exit_code == 0, r.output
    assert "error: unreadable: github_sample.jsonl.zst:" in r.output
    assert "error: unreadable: gone.jsonl: broken symlink" in r.output
    assert "skipped: wiki/loop: symlink loop" in r.output
    report = json.loads((out / "report.json").read_text())
    assert sorted(f["file"] for f in report["files_not_read"]) == ["github_sample.jsonl.zst", "gone.jsonl", "wiki/loop"]
    md = (out / "report.md").read_text()
    assert "Not complete: 2 input file(s) could not be read" in md and "github_sample.jsonl.zst" in md
    assert "gone.jsonl" in md and "wiki/loop" in md
    assert "Every line read is accounted for" not in md and "Of what could be read, every line is accounted" in md
    assert report["sources"]["perturbed"]["lines_read"] == 6  # any source name, through to the report
    assert report["sources"]["wikipedia"]["lines_read"] == 5  # the symlinked folder was read, once


def test_a_refused_compare_leaves_no_folder_behind(tmp_path: Path) -> None:
    not_a_run = tmp_path / "run"
    not_a_run.mkdir()
    r = _run("compare", str(not_a_run), "-o", str(tmp_path / "report"))
    assert r.exit_code == 1 and "missing metrics.json" in _one_error_line(r)
    assert not (tmp_path / "report").exists()


def test_output_folder_rules_hold_on_object_storage(s3_server: dict) -> None:
    """The same rules for an s3:// OUT on a real S3-compatible server (moto's, on loopback)."""
    import uuid

    from slimpipe import storage
    from slimpipe.outdir import MARKER, OutputError, check_not_in_sources, claim

    base = f"{s3_server['url']}/outdir-{uuid.uuid4().hex[:8]}"
    out = f"{base}/dedup-out"
    assert claim(out, "dedup", "id1", sources=[f"{base}/raw"]) is False  # new: claimed
    assert storage.read_json(f"{out}/{MARKER}")["job"] == "dedup"
    assert claim(out, "dedup", "id1") is True  # the same job again
    assert claim(out, "dedup", "id1b") is False  # nothing but the claim (a failed start): claimed afresh
    assert claim(out, "dedup", "id1") is False
    storage.write_bytes_atomic(f"{out}/kept/part-0.jsonl.zst", b"")  # once the job wrote, OUT is its own
    with pytest.raises(OutputError, match="with other inputs or options"):
        claim(out, "dedup", "id2")
    with pytest.raises(OutputError, match="holds the output of `slimpipe dedup`, not `slimpipe compare`"):
        claim(out, "compare", "report")
    mine = f"{base}/mine"
    storage.write_bytes_atomic(f"{mine}/report.md", b"my notes")
    with pytest.raises(OutputError, match=r"not a slimpipe output \(it holds report.md\)"):
        claim(mine, "compare", "report")
    with pytest.raises(OutputError, match="already holds report.md"):
        claim(mine, "compare", "report", force=True)
    assert storage.read_bytes(f"{mine}/report.md") == b"my notes"
    with pytest.raises(OutputError, match="read back as inputs"):
        check_not_in_sources(f"{base}/raw/out/", [f"{base}/raw"])
    with pytest.raises(storage.StorageError, match="s3://no-such-bucket-x/out: cannot write"):
        claim("s3://no-such-bucket-x/out", "dedup", "id1")  # a missing bucket: one line, before any work


def test_sample_never_overwrites_a_users_file(tmp_path: Path) -> None:
    out = tmp_path / "data"
    out.mkdir()
    (out / "arxiv_sample.jsonl.zst").write_bytes(b"the user's own arxiv sample")
    r = _run("sample", "-o", str(out), "--size", "0.05")
    assert r.exit_code == 2 and "not a slimpipe output (it holds arxiv_sample.jsonl.zst)" in _one_error_line(r)
    r = _run("sample", "-o", str(out), "--size", "0.05", "--force")
    assert r.exit_code == 2 and "already holds arxiv_sample.jsonl.zst" in _one_error_line(r)
    assert (out / "arxiv_sample.jsonl.zst").read_bytes() == b"the user's own arxiv sample"
