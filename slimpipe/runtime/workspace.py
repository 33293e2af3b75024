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
            self.folder = storage.Folder(scratch).folder(f"slimpipe-{key}")
        else:
            self.folder = storage.Folder(self.out).folder("_work")
        self.root = self.folder.path
        self.files_written = 0
        self.bytes_written = 0

    def __getstate__(self) -> dict:
        return {"out": self.out, "root": self.root}

    def __setstate__(self, state: dict) -> None:
        self.out, self.root = state["out"], state["root"]
        self.folder = storage.Folder(self.root)
        self.files_written = self.bytes_written = 0

    # paths and manifests ------------------------------------------------------------------------

    def path(self, *parts: str) -> str:
        return self.folder.join(*parts)

    def manifest_path(self, step: str) -> str:
        return self.path(f"{step}.done.json")

    def done(self, step: str) -> dict | None:
        """The committed manifest of ``step``, or None when the step has not finished."""
        rel = f"{step}.done.json"
        return self.folder.read_json(rel) if self.folder.exists(rel) else None

    def commit(self, step: str, manifest: dict) -> None:
        self.folder.write_json(f"{step}.done.json", manifest)

    def put_inputs(self, name: str, obj) -> str:
        """Commit a step's input list (e.g. every map task's shuffle file) once, for all its tasks to read."""
        self.folder.write_json(f"inputs/{name}.json", obj)
        return name

    def inputs(self, name: str):
        """A committed input list (cached per process: a worker runs many tasks of one step)."""
        key = (self.root, name)
        if key not in _INPUTS:
            _INPUTS[key] = self.folder.read_json(f"inputs/{name}.json")
        return _INPUTS[key]

    def delete(self) -> None:
        """Remove every intermediate (the job succeeded and nobody asked to keep them)."""
        self.folder.delete()

    # counted I/O --------------------------------------------------------------------------------

    def write_bytes(self, rel: str, data: bytes) -> dict:
        self.folder.write_bytes(rel, data)
        self.files_written += 1
        self.bytes_written += len(data)
        return {"path": rel, "bytes": len(data)}

    def read_bytes(self, rel: str) -> bytes:
        return self.folder.read_bytes(rel)

    def save_array(self, rel: str, array: np.ndarray) -> dict:
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
        return self.write_bytes(rel, buf.getvalue())

    def load_array(self, rel: str, mmap: bool = False) -> np.ndarray:
        return self.folder.load_npy(rel, mmap=mmap)

    def save_table(self, rel: str, table: pa.Table, row_group_size: int | None = None) -> dict:
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd", row_group_size=row_group_size)
        return self.write_bytes(rel, buf.getvalue())

    def load_table(self, rel: str, columns: list[str] | None = None) -> pa.Table:
        with self.folder.open(rel) as fh:
            return pq.read_table(fh, columns=columns)

    def open_parquet(self, rel: str) -> pq.ParquetFile:
        """A parquet file opened for row-group reads (the caller closes it via ``.close()``)."""
        return pq.ParquetFile(self.folder.open(rel))


def remove_temporaries(root: str | os.PathLike, job: str) -> int:
    """Delete the temporaries a killed writer of ``job`` left in its local OUT: only slimpipe's own
    (``.*.slimpipe.tmp``, :data:`slimpipe.storage.TMP_SUFFIX`), and only inside or next to the outputs the
    job writes (``slimpipe.outdir.JOB_OUTPUTS[job]``), which its claim of OUT proved were not the user's.
    A user's ``.draft.tmp``, or anything in a folder the job does not write, is never touched."""
    from slimpipe.outdir import JOB_OUTPUTS, MARKER

    return storage.remove_temporaries(root, {*JOB_OUTPUTS[job], MARKER})
