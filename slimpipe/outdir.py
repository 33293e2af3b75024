"""Output-folder rules, checked by every command before any heavy work (and before Ray starts).

1. OUT may not be a SOURCE, nor lie inside one, nor inside a folder a SOURCE links to (the input walk
   follows symlinked folders): its outputs would be read back as inputs next time. ``--scratch`` neither.
2. A new or empty OUT is claimed: ``OUT/_slimpipe.json`` records which job writes there, and a random
   claim id that ties the job's ``--scratch`` workspace to this claim of this folder (a new claim never
   reuses a workspace left by an earlier one).
3. An OUT claimed by the same job (same command, inputs and options) is resumed or left as it is.
4. An OUT claimed by another job, or by the same command with other inputs or options, is refused with
   one line naming that job -- unless it holds nothing but the claim (the job failed before it wrote
   anything: bad options, no Ray, an unusable ``--scratch``), which is claimed afresh.
5. A non-empty OUT that is not a slimpipe output is refused with one line naming what is there.
   ``--force`` writes into it anyway, but only when none of the names the job writes exist there: a
   user's file is never overwritten, and nothing else in OUT is ever deleted.

Paths may be local or URIs (``s3://``, ``gs://``, ``hdfs://``, ``file://``), through :mod:`slimpipe.storage`.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterable

from slimpipe import storage

MARKER = "_slimpipe.json"
_SHOWN = 3  # entries named in a message before "and N more"

# The top-level names each job writes in OUT (besides the marker), so --force never overwrites a user's file.
JOB_OUTPUTS: dict[str, tuple[str, ...]] = {
    "dedup": ("kept", "removed", "rejects.parquet", "manifest.json", "report.json", "report.md", "plots", "_work"),
    "slimpajama": ("train", "validation", "test", "dedup", "eval", "manifest.json", "index.json", "report.json",
                   "report.md", "plots", "_work"),
    "mix": ("train", "eval", "test", "tokenizer", "manifest.json", "index.json", ".work", "report.md"),
    "train": ("train_log.jsonl", "eval_log.jsonl", "metrics.json", "checkpoints", "model", "config.json",
              "eval_losses.npz", "ray"),
    "compare": ("report.md", "report.json", "plots"),
    "evalset": ("manifest.json", "report.md", "sources", "_work"),  # sources/<source>/: never a name of its own
    "propose": ("mixes", "proxies", "confirm", "mixtures.json", "proposal.json", "proposed.yaml", "report.md",
                "report.json", "predicted_vs_observed.png", "weights.png"),
    "tune": ("proxies", "runs", "tune.json", "report.md", "mup.yaml"),
    "extend-tokenizer": ("tokenizer.json", ".fresh"),
    "demo": ("sample", "eval", "slimpajama-global", "slimpajama-local", "mixes", "runs", "logs", "report"),
}


class OutputError(RuntimeError):
    """OUT cannot be used as asked (one line naming the folder and what is in the way)."""


def identity(**parts) -> str:
    """A stable fingerprint of a job's inputs and options (what makes a re-run "the same job")."""
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def canonical(p: str | os.PathLike) -> str:
    """A path made absolute with symlinks resolved, or a URI with a trailing ``/`` dropped."""
    return storage.canonical(p)


def _linked_folders(src: str, limit: int = 100_000) -> list[str]:
    """The real paths of the folders a local SOURCE's input walk reaches through symlinks (recursively), by
    the walk's rules (:func:`slimpipe.io.readers.discover_files`: links followed, ``.``/``_`` names skipped)."""
    if storage.local_path(src) is None or not os.path.isdir(src):  # a store has no symlinks
        return []
    seen = {os.path.realpath(src)}
    todo, found, n = [src], [], 0
    while todo and n < limit:
        top = todo.pop()
        try:
            entries = list(os.scandir(top))
        except OSError:
            continue
        for e in entries:
            n += 1
            if e.name.startswith((".", "_")):  # the input walk skips these (slimpipe.io.readers)
                continue
            try:
                if not e.is_dir():  # follows a link: a link to a folder counts
                    continue
            except OSError:
                continue
            real = os.path.realpath(e.path)
            if real in seen:
                continue
            seen.add(real)
            if e.is_symlink():
                found.append(real)
            todo.append(e.path)
    return found


def check_not_in_sources(out: str | os.PathLike, sources: Iterable[str | os.PathLike], what: str = "output folder",
                         ) -> None:
    """Raise :class:`OutputError` when OUT equals or lies inside a SOURCE, or inside a folder that a SOURCE
    links to (the input walk follows symlinked folders, so OUT would be read back as input)."""
    o = canonical(out)
    for src in sources:
        s = canonical(src)
        if storage.contains(s, o):
            where = "is" if o == s else "lies inside"
            raise OutputError(f"{what} {storage.display(out)} {where} the input {storage.display(src)}: "
                              "its outputs would be read back as inputs; choose a folder outside the inputs")
        for linked in _linked_folders(s):
            if storage.contains(linked, o):
                raise OutputError(f"{what} {storage.display(out)} lies inside {linked}, which the input "
                                  f"{storage.display(src)} links to: its outputs would be read back as inputs; "
                                  "choose a folder outside the inputs")


def _entries(out: str) -> list[str] | None:
    """Top-level names in OUT (sorted), or None when OUT does not exist. Raises OutputError if OUT is a file."""
    try:
        return storage.Folder(out).entries()
    except NotADirectoryError:
        raise OutputError(f"output folder {storage.display(out)} is a file, not a folder") from None


def _some(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def claim(out: str | os.PathLike, job: str, ident: str, sources: Iterable[str | os.PathLike] = (),
          force: bool = False, outputs: Iterable[str] | None = None,
          scratch: str | os.PathLike | None = None) -> bool:
    """Check OUT against the rules above and claim it for ``job``; True when OUT already held this job.

    ``ident`` is :func:`identity` of the job's inputs and options. Nothing is written unless every
    check passes, so a refused command leaves OUT as it found it. ``scratch`` (``--scratch``) is checked
    against the sources too.
    """
    out = os.fspath(out)
    sources = list(sources)
    check_not_in_sources(out, sources)
    if scratch:
        check_not_in_sources(scratch, sources, what="--scratch")
    storage.check_store(out, write=True)  # endpoint, credentials, bucket: one line naming the URI, now
    names = _entries(out)
    folder = storage.Folder(out)
    if names and MARKER in names:
        try:
            held = folder.read_json(MARKER)
        except (OSError, ValueError, storage.StorageError) as exc:
            raise OutputError(f"output folder {storage.display(out)} has an unreadable {MARKER} ({exc}); "
                              "delete it or choose another folder") from exc
        if held.get("job") == job and held.get("identity") == ident:
            return True
        if names != [MARKER]:  # the job wrote something: never another job's, never mixed
            if held.get("job") != job:
                raise OutputError(f"output folder {storage.display(out)} holds the output of "
                                  f"`slimpipe {held.get('job')}`, not `slimpipe {job}`; choose another folder")
            raise OutputError(f"output folder {storage.display(out)} holds a `slimpipe {job}` run with other "
                              "inputs or options; choose a new folder, or delete this one to start over")
        # only the claim of a job that failed before writing anything (bad options, no Ray, --scratch): re-admit
    elif names:
        if not force:
            raise OutputError(f"output folder {storage.display(out)} is not empty and is not a slimpipe output "
                              f"(it holds {_some(names)}); choose an empty or new folder, or pass --force to "
                              "write into it")
        clash = sorted(set(names) & set(outputs if outputs is not None else JOB_OUTPUTS.get(job, ())))
        if clash:
            raise OutputError(f"--force: output folder {storage.display(out)} already holds {_some(clash)}, which "
                              f"`slimpipe {job}` would overwrite; move them away or choose another folder")
    if scratch:  # an unusable --scratch fails now, in one line, before OUT is claimed
        storage.check_access(scratch, write=True)
    # what defines the job, and this claim's id (the --scratch workspace belongs to this claim only)
    folder.write_json(MARKER, {"job": job, "identity": ident, "claim": uuid.uuid4().hex})
    return False


def claim_id(out: str | os.PathLike) -> str:
    """The id of OUT's current claim ("" when OUT is not claimed): what a ``--scratch`` workspace is tied to."""
    folder = storage.Folder(out)
    try:
        return str(folder.read_json(MARKER).get("claim") or "") if folder.exists(MARKER) else ""
    except (OSError, ValueError, AttributeError, storage.StorageError):
        return ""


def release(out: str | os.PathLike) -> None:
    """Undo a fresh :func:`claim` after the job refused its inputs: drop the marker, and OUT if it is empty."""
    out = os.fspath(out)
    folder = storage.Folder(out)
    if folder.exists(MARKER):
        folder.delete_file(MARKER)
    if _entries(out) == []:
        storage.remove_empty_dir(out)


def input_identity(sources: Iterable[str | os.PathLike]) -> list[str]:
    """The inputs as they enter a job's identity: canonical paths or URIs, in the order given."""
    return [canonical(s) for s in sources]

