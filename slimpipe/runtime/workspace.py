"""Where a job keeps its intermediates, and the only way steps read and write them.

The workspace is ``OUT/_work`` or, with ``--scratch URI``, a folder of its own under that URI (so a
cluster needs no shared POSIX mount: every node reaches the same object store). A scratch workspace
belongs to one claim of OUT (:func:`slimpipe.outdir.claim_id`): OUT deleted and claimed again, or
another folder typed the same way from elsewhere, gets a new one, never the steps another run
committed. Every file goes through :mod:`slimpipe.storage`, so each one is committed atomically
(temporary name + fsync + rename on POSIX, an upload copied into place on object stores). A step is committed when its manifest
``<step>.done.json`` exists; later steps learn their inputs from that manifest, never from a listing.

A workspace counts the files and bytes it writes in this process, so the executor can record the
intermediates of every step (files and bytes per stage, in the job's stats).
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from slimpipe import storage

_INPUTS: dict[tuple[str, str], object] = {}


class Workspace:
    """``Workspace(out)`` → intermediates under ``OUT/_work``; ``Workspace(out, scratch)`` → under scratch."""

    def __init__(self, out: str | os.PathLike, scratch: str | os.PathLike | None = None):
        self.out = os.fspath(out)
        if scratch:
            from slimpipe.outdir import canonical, claim_id

            owner = f"{canonical(self.out)}\0{claim_id(self.out)}"
            key = hashlib.sha256(owner.encode()).hexdigest()[:16]
            self.root = storage.join(scratch, f"slimpipe-{key}")
        else:
            self.root = storage.join(self.out, "_work")
        self.files_written = 0
        self.bytes_written = 0

    def __getstate__(self) -> dict:
        return {"out": self.out, "root": self.root}

    def __setstate__(self, state: dict) -> None:
        self.out, self.root = state["out"], state["root"]
        self.files_written = self.bytes_written = 0

    # paths and manifests ------------------------------------------------------------------------

    def path(self, *parts: str) -> str:
        return storage.join(self.root, *parts)

    def manifest_path(self, step: str) -> str:
        return self.path(f"{step}.done.json")

    def done(self, step: str) -> dict | None:
        """The committed manifest of ``step``, or None when the step has not finished."""
        p = self.manifest_path(step)
        return storage.read_json(p) if storage.exists(p) else None

    def commit(self, step: str, manifest: dict) -> None:
        storage.write_json_atomic(self.manifest_path(step), manifest)

    def put_inputs(self, name: str, obj) -> str:
        """Commit a step's input list (e.g. every map task's shuffle file) once, for all its tasks to read."""
        storage.write_json_atomic(self.path("inputs", f"{name}.json"), obj)
        return name

    def inputs(self, name: str):
        """A committed input list (cached per process: a worker runs many tasks of one step)."""
        key = (self.root, name)
        if key not in _INPUTS:
            _INPUTS[key] = storage.read_json(self.path("inputs", f"{name}.json"))
        return _INPUTS[key]

    def delete(self) -> None:
        """Remove every intermediate (the job succeeded and nobody asked to keep them)."""
        storage.delete_tree(self.root)

    # counted I/O --------------------------------------------------------------------------------

    def write_bytes(self, rel: str, data: bytes) -> dict:
        storage.write_bytes_atomic(self.path(rel), data)
        self.files_written += 1
        self.bytes_written += len(data)
        return {"path": rel, "bytes": len(data)}

    def read_bytes(self, rel: str) -> bytes:
        return storage.read_bytes(self.path(rel))

    def save_array(self, rel: str, array: np.ndarray) -> dict:
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
        return self.write_bytes(rel, buf.getvalue())

    def load_array(self, rel: str, mmap: bool = False) -> np.ndarray:
        p = self.path(rel)
        if not storage.is_remote(p):
            return np.load(storage.resolve(p)[1], mmap_mode="r" if mmap else None, allow_pickle=False)
        return np.load(io.BytesIO(storage.read_bytes(p)), allow_pickle=False)

    def save_table(self, rel: str, table: pa.Table, row_group_size: int | None = None) -> dict:
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd", row_group_size=row_group_size)
        return self.write_bytes(rel, buf.getvalue())

    def load_table(self, rel: str, columns: list[str] | None = None) -> pa.Table:
        with storage.open_input(self.path(rel)) as fh:
            return pq.read_table(fh, columns=columns)

    def open_parquet(self, rel: str) -> pq.ParquetFile:
        """A parquet file opened for row-group reads (the caller closes it via ``.close()``)."""
        return pq.ParquetFile(storage.open_input(self.path(rel)))


def remove_temporaries(root: str | os.PathLike, job: str) -> int:
    """Delete the temporaries a killed writer of ``job`` left in its local OUT: only slimpipe's own
    (``.*.slimpipe.tmp``, :data:`slimpipe.storage.TMP_SUFFIX`), and only inside or next to the outputs the
    job writes (``slimpipe.outdir.JOB_OUTPUTS[job]``), which its claim of OUT proved were not the user's.
    A user's ``.draft.tmp``, or anything in a folder the job does not write, is never touched."""
    from slimpipe.outdir import JOB_OUTPUTS, MARKER

    names = {*JOB_OUTPUTS[job], MARKER}
    if storage.is_remote(root):  # an upload killed midway leaves its temporary object (never the final one)
        found_uris = [f for f in storage.list_files(root, recursive=False)
                      if any(f.rsplit("/", 1)[-1].startswith(f".{name}.") for name in names)]
        for name in names:
            found_uris += storage.list_files(storage.join(root, name))
        gone = [f for f in found_uris if storage.is_temporary(f.rsplit("/", 1)[-1])]
        for f in gone:
            storage.delete_file(f)
        return len(gone)
    base = Path(storage.resolve(root)[1])
    n = 0
    found = [p for p in base.glob(".*") if storage.is_temporary(p.name)
             and any(p.name.startswith(f".{name}.") for name in names)]
    for name in names:
        top = base / name
        if top.is_dir() and not top.is_symlink():
            found += [p for p in top.rglob(f"*{storage.TMP_SUFFIX}") if storage.is_temporary(p.name)]
    for p in found:
        if p.is_file() and not p.is_symlink():
            p.unlink(missing_ok=True)
            n += 1
    return n
