"""slimpipe.storage on local paths, file:// URIs and a real S3-compatible server (moto) on loopback."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pytest

from slimpipe import storage
from slimpipe.storage import StorageError


class Boom(Exception):
    pass


def _roundtrip(base: str) -> None:
    """The contract every backend keeps: atomic outputs, manifests, listings, deletion."""
    f = storage.join(base, "a", "b.json")
    assert not storage.exists(f)
    storage.write_json_atomic(f, {"x": 1, "é": [1, 2]})
    assert storage.exists(f)
    assert storage.read_json(f) == {"x": 1, "é": [1, 2]}
    assert storage.read_bytes(f) == storage.dumps_json({"x": 1, "é": [1, 2]})
    # an output whose writer fails is never published, not even partly
    g = storage.join(base, "a", "c.bin")
    with pytest.raises(Boom), storage.open_output(g) as fh:
        fh.write(b"partial")
        raise Boom
    assert not storage.exists(g)
    with storage.open_output(g) as fh:
        fh.write(b"0123456789" * 1000)
    assert storage.size(g) == 10000
    with storage.open_input(g) as fh:  # byte ranges are read by seeking
        fh.seek(9995)
        assert fh.read() == b"56789"
    # bytes are stored as given: no compression guessed from a name such as .zst or .gz
    z = storage.join(base, "a", "d.jsonl.zst")
    storage.write_bytes_atomic(z, b"not zstd at all")
    assert storage.read_bytes(z) == b"not zstd at all"
    storage.delete_file(z)
    storage.write_bytes_atomic(storage.join(base, "top.txt"), b"t")
    files = storage.list_files(base)
    assert files == sorted([storage.join(base, "a", "b.json"), storage.join(base, "a", "c.bin"),
                            storage.join(base, "top.txt")])
    assert storage.list_files(base, recursive=False) == [storage.join(base, "top.txt")]
    assert storage.list_files(storage.join(base, "nothing-here")) == []
    storage.delete_tree(storage.join(base, "a"))
    assert not storage.exists(f) and not storage.exists(g)
    assert storage.list_files(base) == [storage.join(base, "top.txt")]
    storage.delete_tree(storage.join(base, "a"))  # deleting twice is fine


def test_local_paths(tmp_path: Path) -> None:
    base = str(tmp_path / "out")
    assert not storage.is_remote(base)
    _roundtrip(base)
    # no temporary file is left behind by the failed write
    assert not [p for p in Path(base).rglob("*") if p.name.endswith(".tmp")]


def test_file_uri_is_local(tmp_path: Path) -> None:
    uri = f"file://{tmp_path}/u"
    assert not storage.is_remote(uri)
    fs, path = storage.resolve(uri)
    assert path == str(tmp_path / "u")
    storage.write_bytes_atomic(storage.join(uri, "x.txt"), b"hi")
    assert (tmp_path / "u" / "x.txt").read_bytes() == b"hi"
    assert storage.local_copy(storage.join(uri, "x.txt"), tmp_path / "cache") == tmp_path / "u" / "x.txt"


def test_published_files_get_umask_mode(tmp_path: Path) -> None:
    p = tmp_path / "m.bin"
    storage.write_bytes_atomic(p, b"x")
    mask = os.umask(0)
    os.umask(mask)
    assert p.stat().st_mode & 0o777 == 0o666 & ~mask


def test_join_keeps_uri_scheme() -> None:
    assert storage.join("s3://b/pre/", "x", "/y/") == "s3://b/pre/x/y"
    assert storage.is_remote("s3://b") and storage.is_remote("gs://b") and storage.is_remote("hdfs://nn:8020/x")


def test_s3_roundtrip(s3_server: dict, tmp_path: Path) -> None:
    base = f"{s3_server['url']}/storage-{uuid.uuid4().hex[:8]}"
    assert storage.is_remote(base)
    storage.check_access(base, write=True)
    _roundtrip(base)
    # local_copy downloads once and then serves the cached file
    obj = storage.join(base, "big.bin")
    storage.write_bytes_atomic(obj, os.urandom(3 << 20))
    first = storage.local_copy(obj, tmp_path / "cache")
    assert first.read_bytes() == storage.read_bytes(obj)
    stamp = first.stat().st_mtime_ns
    assert storage.local_copy(obj, tmp_path / "cache") == first
    assert first.stat().st_mtime_ns == stamp
    storage.delete_tree(base)
    assert storage.list_files(base) == []


def test_s3_missing_bucket_is_one_line(s3_server: dict) -> None:
    uri = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/out"
    with pytest.raises(StorageError) as err:
        storage.check_access(uri, write=True)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(uri) and "cannot write" in msg
    with pytest.raises(StorageError, match="not found"):
        storage.check_access(f"{s3_server['url']}/absent-{uuid.uuid4().hex[:8]}/x.jsonl")


def test_unreachable_endpoint_is_one_line(s3_server: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    uri = f"{s3_server['url']}/out"
    for write in (False, True):
        with pytest.raises(StorageError) as err:
            storage.check_access(uri, write=write)
        assert "\n" not in str(err.value) and str(err.value).startswith(uri)


def test_missing_local_input_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="not found"):
        storage.check_access(tmp_path / "absent")
    storage.check_access(tmp_path / "new" / "out", write=True)  # creates what it needs
    assert storage.list_files(tmp_path / "new") == []


def test_unknown_scheme_is_one_line() -> None:
    with pytest.raises(StorageError) as err:
        storage.check_access("nosuchscheme://x/y")
    assert "\n" not in str(err.value) and "nosuchscheme" in str(err.value)


# ------------------------------------------------------------------------------------------- Folder


def _folder_roundtrip(root: str, tmp_path: Path) -> None:
    """Everything a step does with a Folder, the same on a local folder and an S3 prefix."""
    import pickle

    import numpy as np
    import pyarrow as pa

    f = storage.Folder(root + "/")  # a trailing "/" is dropped, for paths and URIs alike
    assert f.path == storage.join(root) and os.fspath(f) == f.path
    assert not f.exists("a.json") and f.list() == []
    f.write_json("a.json", {"x": 1})
    f.write_bytes("sub/deep/b.bin", b"\x00\x01")
    with f.open("sub/c.txt", "wb") as fh:
        fh.write(b"hello")
    with pytest.raises(RuntimeError), f.open("sub/d.txt", "wb") as fh:  # a failed block publishes nothing
        fh.write(b"half")
        raise RuntimeError("killed")
    assert f.read_json("a.json") == {"x": 1}
    assert f.list() == ["a.json", "sub/c.txt", "sub/deep/b.bin"]
    assert f.list("sub", recursive=False) == ["sub/c.txt"]
    assert f.entries() == ["a.json", "sub"] and f.folder("absent").entries() is None
    with pytest.raises(NotADirectoryError):
        f.folder("a.json").entries()
    assert f.is_dir("sub") and f.exists("sub/deep/b.bin") and f.size("sub/c.txt") == 5
    with f.open("sub/c.txt") as fh:
        fh.seek(1)
        assert fh.read(3) == b"ell"
    sub = f.folder("sub")
    assert sub.read_bytes("deep/b.bin") == b"\x00\x01" and sub == storage.Folder(f.join("sub"))
    # Arrow IPC: whole file and one record batch (memory map locally, ranged reads remotely)
    batches = [pa.record_batch({"v": pa.array(range(i * 3, i * 3 + 3), pa.int64())}) for i in range(3)]
    f.write_arrow("t.arrow", batches[0].schema, batches)
    assert f.read_arrow("t.arrow").column("v").to_pylist() == list(range(9))
    assert f.read_arrow_batch("t.arrow", 2).column("v").to_pylist() == [6, 7, 8]
    buf = __import__("io").BytesIO()
    np.save(buf, np.arange(5, dtype=np.uint16), allow_pickle=False)
    f.write_bytes("a.npy", buf.getvalue())
    for mmap in (False, True):
        assert f.load_npy("a.npy", mmap=mmap).tolist() == [0, 1, 2, 3, 4]
    # a local folder for libraries that write with open(), published here on a clean exit, the mark last
    with f.folder("staged").staged(last=["done.json"]) as d:
        (d / "done.json").write_text("{}")
        (d / "x" / "y.txt").parent.mkdir()
        (d / "x" / "y.txt").write_text("y")
    assert f.folder("staged").list() == ["done.json", "x/y.txt"]
    with pytest.raises(RuntimeError), f.folder("failed").staged() as d:
        (d / "z.txt").write_text("z")
        if not f.shared:
            raise RuntimeError("local: written in place")
        raise RuntimeError("remote: nothing uploaded")
    assert f.folder("failed").list() == ([] if f.shared else ["z.txt"])
    view = storage.local_view(f.join("sub"), tmp_path / "view", recursive=False)
    assert sorted(p.name for p in view.iterdir() if p.is_file()) == ["c.txt"]
    # a killed writer's temporaries: only slimpipe's own, only of the names given
    f.write_bytes(f"sub/.e.bin.1234{storage.TMP_SUFFIX}", b"")
    f.write_bytes(f".sub.99{storage.TMP_SUFFIX}", b"")
    f.write_bytes("sub/.draft.tmp", b"mine")
    assert f.remove_temporaries(["sub"]) == 2
    assert f.exists("sub/.draft.tmp") and not f.exists(f".sub.99{storage.TMP_SUFFIX}")
    # pickles as its name only (no filesystem object, no credentials)
    state = pickle.dumps(f)
    assert b"testing" not in state and pickle.loads(state) == f
    f.delete("sub")
    assert not f.exists("sub/c.txt") and f.exists("a.json")
    f.delete()
    assert f.list() == []


def test_folder_local(tmp_path: Path) -> None:
    root = tmp_path / "out"
    f = storage.Folder(root)
    assert f.local_path == os.fspath(root) and not f.shared
    assert storage.Folder(f"file://{root}").local_path == os.fspath(root)
    _folder_roundtrip(os.fspath(root), tmp_path)


def test_folder_s3(s3_server: dict, tmp_path: Path) -> None:
    root = f"{s3_server['url']}/folder-{uuid.uuid4().hex[:8]}"
    f = storage.Folder(root)
    assert f.local_path is None and f.shared
    f.check(write=True)
    _folder_roundtrip(root, tmp_path)


def test_stat_takes_local_names_that_are_not_utf8(tmp_path: Path) -> None:
    name = os.fsdecode(b"caf\xe9.jsonl")  # a Latin-1 name: lone surrogates in Python, refused by Arrow
    try:
        (tmp_path / name).write_bytes(b"abc")
    except (OSError, UnicodeEncodeError):
        pytest.skip("this filesystem refuses names that are not UTF-8")
    assert storage.stat(tmp_path / name)[0] == 3 and storage.size(tmp_path / name) == 3
    with pytest.raises(FileNotFoundError):
        storage.stat(tmp_path)  # a folder is not a file


def test_missing_local_dir_and_check_store(tmp_path: Path) -> None:
    assert storage.missing_local_dir(tmp_path / "absent") and not storage.missing_local_dir(tmp_path)
    assert not storage.missing_local_dir("s3://bucket/checked-when-read")
    storage.check_store(tmp_path / "absent")  # a local path is checked by its first use
    assert storage.contains(storage.canonical(tmp_path), storage.canonical(tmp_path / "a"))
    assert not storage.contains("s3://b/x", "s3://b/xy")
