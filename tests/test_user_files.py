"""Nothing lost (#19): what a command writes, where, and what it never touches.

Output folders (slimpipe/outdir.py), the scratch workspace, temporaries, ``file://`` URIs, symlinked
inputs and object-store commits, each tried the way a careless user (or a failing network) would.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import uuid
from pathlib import Path

import pytest
import zstandard
from click.testing import CliRunner

from slimpipe import storage
from slimpipe.cli import main
from slimpipe.outdir import JOB_OUTPUTS, MARKER, OutputError, check_not_in_sources, claim


def _text(i: int, topic: str) -> str:
    return f"Document {i} about {topic}: " + " ".join(f"{topic}{(i * 7 + k) % 97}" for k in range(80)) + "."


def _corpus(d: Path, n: int = 12) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "c4_sample.jsonl").write_text("".join(json.dumps({"text": _text(i, "web")}) + "\n" for i in range(n)))
    data = "".join(json.dumps({"text": _text(i, "noise")}) + "\n" for i in range(6)).encode()
    (d / "arxiv_sample.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(data))
    return d


def _run(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


def _shards(out: Path) -> list[str]:
    return sorted(p.relative_to(out).as_posix() for p in (out / "kept").rglob("*.jsonl.zst"))


# ------------------------------------------------------------------------------------------------
# 10. an object-store write that fails midway publishes nothing under the final name


class _BreaksMidway(io.RawIOBase):
    """A stream of ``size`` bytes whose read fails once ``fail_at`` bytes have been handed out."""

    def __init__(self, size: int, fail_at: int):
        self.size, self.fail_at, self.pos = size, fail_at, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self.pos >= self.fail_at:
            raise OSError("connection reset by peer (injected)")
        n = min(len(b), self.size - self.pos, self.fail_at - self.pos)
        b[:n] = b"x" * n
        self.pos += n
        return n


def test_an_upload_that_fails_midway_publishes_nothing(s3_server: dict) -> None:
    base = f"{s3_server['url']}/midway-{uuid.uuid4().hex[:8]}"
    big = 12 << 20  # more than one multipart part: the first parts are on the server when the stream breaks
    for target, size, fail_at in ((f"{base}/kept/part-00000.jsonl.zst", big, 11 << 20),
                                  (f"{base}/manifest.json", 4096, 1000)):
        with pytest.raises(OSError, match="injected"):
            storage.upload(_BreaksMidway(size, fail_at), target)
        assert not storage.exists(target), f"a truncated {target} was published"
    assert storage.list_files(base) == []  # no temporary object left behind either
    # the same path with a whole stream publishes the whole object
    storage.upload(_BreaksMidway(5000, 10_000), f"{base}/manifest.json")
    assert storage.read_bytes(f"{base}/manifest.json") == b"x" * 5000
    # and open_output (spool, then upload) publishes only on a clean exit
    with pytest.raises(RuntimeError), storage.open_output(f"{base}/report.json") as fh:
        fh.write(b"half")
        raise RuntimeError("the writer failed")
    assert not storage.exists(f"{base}/report.json")
    assert storage.list_files(base) == [f"{base}/manifest.json"]
    # what an upload killed outright leaves is a temporary object, which the job's clean-up removes (only its own)
    from slimpipe.runtime.workspace import remove_temporaries

    left = [f"{base}/kept/c4/.part-00000.jsonl.zst.0a1b.slimpipe.tmp", f"{base}/.manifest.json.2c3d.slimpipe.tmp"]
    users = [f"{base}/notes/.x.slimpipe.tmp", f"{base}/.draft.tmp", f"{base}/kept/c4/.draft.tmp"]
    for f in left + users:
        storage.write_bytes_atomic(f, b"partial")
    assert remove_temporaries(base, "dedup") == 2
    assert sorted(storage.list_files(base)) == sorted([f"{base}/manifest.json", *users])


# ------------------------------------------------------------------------------------------------
# 1. --scratch never reuses a workspace that belongs to another claim of OUT


def test_scratch_is_tied_to_the_claim_of_out(tmp_path: Path, ray_session) -> None:
    src, out, scratch = _corpus(tmp_path / "s1"), tmp_path / "dw", tmp_path / "S"
    args = ("dedup", src, "-o", out, "--scratch", scratch, "--quiet")
    r = _run(*args, "--keep-intermediates")
    assert r.exit_code == 0, r.output
    first = _shards(out)
    assert first and (out / "manifest.json").is_file()
    shutil.rmtree(out)  # what a refusal suggests; the kept workspace under S belongs to that claim only
    r = _run(*args)
    assert r.exit_code == 0, r.output
    assert _shards(out) == first, "the write step was skipped: a finished workspace was reused for a new OUT"
    listed = json.loads((out / "manifest.json").read_text())
    assert listed["files"] and all((out / f["path"]).is_file() for f in listed["files"])


# ------------------------------------------------------------------------------------------------
# 3. --force deletes no temporary file it did not create


def test_force_leaves_the_users_temporary_files(tmp_path: Path, ray_session) -> None:
    from slimpipe.runtime.workspace import remove_temporaries

    src, out = _corpus(tmp_path / "s1"), tmp_path / "u"
    (out / "notes").mkdir(parents=True)
    (out / ".draft.tmp").write_text("d")
    (out / "notes" / ".todo.md.tmp").write_text("t")
    (out / "notes" / ".a.json.x1y2z3.slimpipe.tmp").write_text("another job's, in a folder dedup does not write")
    r = _run("dedup", src, "-o", out, "--force", "--quiet")
    assert r.exit_code == 0, r.output
    assert (out / ".draft.tmp").read_text() == "d" and (out / "notes" / ".todo.md.tmp").read_text() == "t"
    assert (out / "notes" / ".a.json.x1y2z3.slimpipe.tmp").is_file()
    written = set(os.listdir(out)) - {".draft.tmp", "notes"}
    assert written <= {*JOB_OUTPUTS["dedup"], MARKER}, "a name --force does not check before writing"
    # what a killed writer of this job leaves (its own temporary names, in its own outputs) does go
    left = out / "kept" / "c4" / ".part-00009.jsonl.zst.abcd1234.slimpipe.tmp"
    left.write_bytes(b"partial")
    (out / ".manifest.json.zz9.slimpipe.tmp").write_bytes(b"{")
    assert remove_temporaries(out, "dedup") == 2 and not left.exists()
    assert (out / ".draft.tmp").is_file() and (out / "notes" / ".a.json.x1y2z3.slimpipe.tmp").is_file()


# ------------------------------------------------------------------------------------------------
# 9. file:///path is that absolute path, for SOURCE and -o


def test_file_uris_are_absolute_paths(tmp_path: Path, ray_session, monkeypatch: pytest.MonkeyPatch) -> None:
    src, out = _corpus(tmp_path / "s1"), tmp_path / "out"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    for job in ("dedup", "slimpajama", "evalset"):  # OUT inside SOURCE, spelled as URIs: refused, nothing made
        r = _run(job, f"file://{src}", "-o", f"file://{src}/out")
        assert r.exit_code == 2 and "read back as inputs" in r.output, (job, r.output)
    assert sorted(os.listdir(src)) == ["arxiv_sample.jsonl.zst", "c4_sample.jsonl"]
    r = _run("dedup", f"file://{src}", "-o", f"file://{out}", "--quiet")
    assert r.exit_code == 0, r.output
    assert os.listdir(cwd) == [], "a relative ./file: folder was written"
    assert _shards(out) and (out / "report.json").is_file()


# ------------------------------------------------------------------------------------------------
# 11. OUT and --scratch never where the input walk reaches


def test_out_or_scratch_behind_a_followed_symlink_is_refused(tmp_path: Path) -> None:
    src = _corpus(tmp_path / "s")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (src / "more").symlink_to("../elsewhere", target_is_directory=True)  # the input walk follows it
    r = _run("dedup", src, "-o", elsewhere / "out")
    assert r.exit_code == 2 and "which the input" in r.output and "links to" in r.output, r.output
    for scratch in (src / "tmp", elsewhere / "scr"):
        r = _run("dedup", src, "-o", tmp_path / "out", "--scratch", scratch)
        assert r.exit_code == 2 and "--scratch" in r.output and "read back as inputs" in r.output, r.output
    assert sorted(os.listdir(elsewhere)) == [] and not (tmp_path / "out").exists()
    with pytest.raises(OutputError, match="links to"):
        check_not_in_sources(elsewhere / "deep" / "out", [src])


# ------------------------------------------------------------------------------------------------
# 17. a start that failed before writing anything does not keep OUT from the corrected command


def test_a_failed_start_does_not_poison_out(tmp_path: Path, ray_session) -> None:
    out = tmp_path / "o"
    assert claim(out, "dedup", "wrong-options") is False  # what a start that failed after its claim leaves
    first = json.loads((out / MARKER).read_text()).get("claim")
    assert claim(out, "dedup", "corrected") is False  # nothing but the claim: claimed afresh
    held = json.loads((out / MARKER).read_text())
    assert held["identity"] == "corrected" and held["claim"] != first
    assert claim(out, "dedup", "corrected") is True  # the same job resumes its own claim
    (out / "kept").mkdir()
    with pytest.raises(OutputError, match="other inputs or options"):
        claim(out, "dedup", "third")  # once a job wrote, its folder is its own
    # the command line: a failed start, then the corrected command (other options) runs
    src, out = _corpus(tmp_path / "s1"), tmp_path / "o2"
    r = _run("dedup", src, "-o", out, "--scratch", src / "c4_sample.jsonl" / "x")
    assert r.exit_code != 0 and not out.exists()  # an unusable --scratch fails before the claim
    claim(out, "dedup", "a failed start")
    r = _run("dedup", src, "-o", out, "--threshold", "0.7", "--quiet")
    assert r.exit_code == 0, r.output
    assert _shards(out)


# ------------------------------------------------------------------------------------------------
# 4 and 16. evalset writes its sources under EVAL/sources/: a user's folder named like a source, and a
# source named like the set's own files, never meet; train lists every name it writes


def test_evalset_sources_never_meet_a_users_folder_or_its_own_files(tmp_path: Path, ray_session) -> None:
    src, e = _corpus(tmp_path / "s1"), tmp_path / "e"
    small = ("--eval-seq-len", 16, "--eval-min-seqs", 2, "--quiet")
    (e / "arxiv").mkdir(parents=True)
    (e / "arxiv" / "part-00000.jsonl.zst").write_bytes(b"the user's own arxiv part")
    r = _run("evalset", src, "-o", e, "--force", *small)
    assert r.exit_code == 0, r.output
    assert (e / "arxiv" / "part-00000.jsonl.zst").read_bytes() == b"the user's own arxiv part"
    m = json.loads((e / "manifest.json").read_text())
    assert set(m["sources"]) == {"arxiv", "c4"}
    assert set(os.listdir(e)) - {"arxiv"} <= {*JOB_OUTPUTS["evalset"], MARKER}
    assert all(f.startswith("sources/") and (e / f).is_file() for v in m["sources"].values() for f in v["files"])
    for name in ("report.md", "manifest.json"):  # a source may have any name, the job's own files included
        out = tmp_path / f"named-{name}"
        r = _run("evalset", src, "-o", out, "--source", name, *small)
        assert r.exit_code == 0, r.output
        m = json.loads((out / "manifest.json").read_text())
        assert list(m["sources"]) == [name] and (out / "report.md").is_file()


def test_train_force_refuses_every_name_a_run_writes(tmp_path: Path) -> None:
    for name in ("eval_losses.npz", "ray", "metrics.json", "checkpoints"):
        out = tmp_path / name.replace(".", "_")
        out.mkdir()
        (out / name).write_text("the user's")
        with pytest.raises(OutputError, match=f"already holds {name}"):
            claim(out, "train", "run", force=True)
        assert (out / name).read_text() == "the user's" and not (out / MARKER).exists()


def test_a_training_run_writes_only_the_names_train_force_checks(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from export_fixtures import make_run

    run = make_run(tmp_path, steps=2)
    assert set(os.listdir(run)) <= {*JOB_OUTPUTS["train"], MARKER}, sorted(os.listdir(run))


# ------------------------------------------------------------------------------------------------
# 2. mix claims OUT by the rules every command follows: a user's folder is never deleted


def test_mix_never_deletes_a_users_folder(tmp_path: Path) -> None:
    from mix_fixtures import build_slimpajama_dir, sample_documents

    sp = build_slimpajama_dir(tmp_path / "SP", sample_documents(tmp_path / "sample", size=0.1)).root
    proj = tmp_path / "proj"
    (proj / "train").mkdir(parents=True)
    (proj / "train" / "train.py").write_text("x")
    base = ("mix", sp, "--config", "redpajama", "--tokens", "2000", "-o", proj, "--quiet")
    r = _run(*base)
    assert r.exit_code == 2 and "not a slimpipe output (it holds train)" in r.output, r.output
    r = _run(*base, "--overwrite")  # gone: it deleted train/ eval/ test/ tokenizer/ of any folder
    assert r.exit_code == 2, r.output
    r = _run(*base, "--force")
    assert r.exit_code == 2 and "already holds train" in r.output, r.output
    assert (proj / "train" / "train.py").read_text() == "x" and os.listdir(proj) == ["train"]
