"""Every path slimpipe reads or writes: a local path or a URI (``file://``, ``s3://``, ``gs://``, ``hdfs://``).

One module so that every stage, task and command goes through the same rules, and the only one that asks
whether a path is local or remote: everything else names a folder once as a :class:`Folder` (or hands a
path string to the functions here) and reads, writes, lists and commits through it, never branching on
the kind of store. Where a question really differs between stores, a function here answers it by name:

* :class:`Folder` -- one folder, local or remote (the model is datatrove's ``DataFolder``): ``join``,
  ``folder``, ``exists``, ``list``, ``entries``, ``open``, ``read_*``/``write_*`` (every write atomic), ``delete``,
  ``staged`` (a local folder for libraries that write with ``open()``, uploaded on a clean exit),
  ``remove_temporaries``, ``check``; ``local_path`` (its name on this machine, or None) and ``shared``
  (every node of a cluster sees it as written).
* Reading a file the fast way for its store: :func:`read_arrow` and :func:`read_arrow_batch` memory-map a
  local Arrow IPC file and use ranged reads on an object store; :func:`load_npy` likewise.
* Local copies and views: :func:`local_copy` (a file), :func:`local_view` (a folder), :func:`staged_folder`.
* Checks: :func:`check_access`, :func:`check_store` (network stores only), :func:`missing_local_dir`
  (command-line checks), :func:`canonical` and :func:`contains` (is OUT inside a SOURCE).
* **One atomic-write API**: :func:`open_output` (a stream), :func:`write_bytes_atomic`,
  :func:`write_json_atomic`, :func:`write_arrow_atomic`, :func:`upload`, and the Folder's ``write_*``
  on top of them.

The rules:

* **Filesystems** come from :mod:`pyarrow.fs` (local, S3, GCS, HDFS), with fsspec for any other scheme
  fsspec knows. Endpoints and credentials come from the standard environment, never from the command
  line: ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``), ``AWS_ACCESS_KEY_ID``,
  ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION`` (or ``AWS_DEFAULT_REGION``);
  ``GOOGLE_APPLICATION_CREDENTIALS`` and ``STORAGE_EMULATOR_HOST`` for GCS. pyarrow's S3 client does not
  read ``AWS_ENDPOINT_URL`` itself, so it is passed explicitly as ``endpoint_override``.
* **Atomic commits.** :func:`open_output` publishes a file whole or not at all. On POSIX it writes a
  temporary file in the same folder, fsyncs it and renames it into place; on HDFS it writes a
  temporary file and renames it (HDFS renames are atomic). On object stores (S3, GCS, anything else)
  it spools to a local temporary file and, only on a clean exit, uploads it to a temporary object and
  copies that to the final name in one server-side copy (:func:`upload`): a stream that fails midway is
  still committed by the store when it is closed, so only the copy may publish, and it is atomic. Every
  temporary name ends in :data:`TMP_SUFFIX`. A *step* of a job commits a set of objects by writing its manifest last
  (:mod:`slimpipe.runtime`); readers trust the manifest, never a listing.
* **Errors** a user can act on: :func:`check_access` raises :class:`StorageError` with one line naming
  the URI and the cause, before any work starts.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import shutil
import stat as _stat
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.ipc as ipc

# Schemes with a native pyarrow filesystem; anything else with "://" goes to fsspec.
_S3 = ("s3", "s3a", "s3n")
_GCS = ("gs", "gcs")
_HDFS = ("hdfs", "viewfs")
# Environment that decides how a remote filesystem is reached (forwarded to Ray tasks, see storage_env).
ENV_VARS = (
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE",
    "GOOGLE_APPLICATION_CREDENTIALS", "STORAGE_EMULATOR_HOST", "HADOOP_HOME", "CLASSPATH",
)
_CHUNK = 8 << 20


class StorageError(RuntimeError):
    """A path or URI that cannot be used; the message is one line naming the URI and the cause."""


def _file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


# mkstemp creates 0600 files; published files get the mode a plain open() would give.
_FILE_MODE = _file_mode()


def scheme_of(p: str | os.PathLike) -> str:
    """``""`` for a local path, else the URI scheme in lower case (``s3``, ``gs``, ``file``...).

    ``file:/path`` (RFC 8089's short form, and what ``pathlib`` makes of ``file:///path``) is a file URI too,
    never a relative folder named ``file:``.
    """
    s = os.fspath(p)
    if "://" not in s:
        return "file" if s[:6].lower() == "file:/" else ""
    return s.split("://", 1)[0].lower()


def is_remote(p: str | os.PathLike) -> bool:
    """True for a URI that is not a local file (``s3://``, ``gs://``, ``hdfs://``, any fsspec scheme)."""
    return scheme_of(p) not in ("", "file", "local")


def local_path(p: str | os.PathLike) -> str | None:
    """The name of ``p`` on this machine's filesystem, or None for a store reached over the network.

    A plain path comes back as given (relative stays relative), a ``file://`` URI as its absolute path.
    For code that needs a real file or folder: libraries that write with ``open()``, a walk that follows
    symlinks. Everything else goes through the functions below, which work on both.
    """
    if is_remote(p):
        return None
    return _local_path(p) if scheme_of(p) else os.fspath(p)


def is_shared(p: str | os.PathLike) -> bool:
    """True when every node of a cluster reaches ``p`` as written (a URI of a remote store); a local path is
    this node's own (a shared mount cannot be told from a local disk)."""
    return is_remote(p)


def canonical(p: str | os.PathLike) -> str:
    """A path made absolute with symlinks resolved, or a URI with a trailing ``/`` dropped."""
    s = os.fspath(p)
    if is_remote(s):
        return s.rstrip("/")
    if scheme_of(s):  # file://
        s = _local_path(s)
    return os.path.realpath(os.path.expanduser(s))


def contains(parent: str, child: str) -> bool:
    """True when the :func:`canonical` name ``child`` is ``parent`` or lies below it."""
    if child == parent:
        return True
    sep = "/" if is_remote(parent) else os.sep
    return child.startswith(parent.rstrip(sep) + sep)


def _local_path(p: str | os.PathLike) -> str:
    s = os.fspath(p)
    if scheme_of(s) in ("file", "local"):
        s = urlsplit(s).path if s.lower().startswith("file:") else s.split("://", 1)[1]
    return os.path.abspath(os.path.expanduser(s))


def join(base: str | os.PathLike, *parts: str) -> str:
    """``base/part/...`` for a path or URI (URIs keep their scheme; no normalisation of ``..``)."""
    b = os.fspath(base)
    if not is_remote(b):
        return os.fspath(Path(_local_path(b) if scheme_of(b) else b, *parts))
    out = b.rstrip("/")
    for part in parts:
        part = str(part).strip("/")
        if part:
            out = f"{out}/{part}"
    return out


def display(p: str | os.PathLike) -> str:
    return os.fspath(p)


# ----------------------------------------------------------------------------------------------------
# filesystems


def storage_env() -> dict[str, str]:
    """The environment variables (present in this process) that configure remote storage."""
    return {k: os.environ[k] for k in ENV_VARS if os.environ.get(k)}


def _env_key() -> tuple:
    return tuple(sorted(storage_env().items()))


@functools.lru_cache(maxsize=32)
def _s3(env: tuple) -> pafs.FileSystem:
    e = dict(env)
    kwargs: dict[str, Any] = {}
    endpoint = e.get("AWS_ENDPOINT_URL_S3") or e.get("AWS_ENDPOINT_URL")
    region = e.get("AWS_REGION") or e.get("AWS_DEFAULT_REGION")
    if endpoint:
        u = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        kwargs["endpoint_override"] = u.netloc + u.path.rstrip("/")
        kwargs["scheme"] = u.scheme or "https"
        region = region or "us-east-1"  # an S3-compatible server needs none; avoid a metadata lookup
    if region:
        kwargs["region"] = region
    if e.get("AWS_ACCESS_KEY_ID") and e.get("AWS_SECRET_ACCESS_KEY"):
        kwargs["access_key"] = e["AWS_ACCESS_KEY_ID"]
        kwargs["secret_key"] = e["AWS_SECRET_ACCESS_KEY"]
        if e.get("AWS_SESSION_TOKEN"):
            kwargs["session_token"] = e["AWS_SESSION_TOKEN"]
    kwargs["connect_timeout"] = 10
    kwargs["request_timeout"] = 60
    kwargs["retry_strategy"] = pafs.AwsStandardS3RetryStrategy(max_attempts=3)
    return pafs.S3FileSystem(**kwargs)


@functools.lru_cache(maxsize=8)
def _gcs(env: tuple) -> pafs.FileSystem:
    e = dict(env)
    kwargs: dict[str, Any] = {}
    if e.get("STORAGE_EMULATOR_HOST"):
        u = urlsplit(e["STORAGE_EMULATOR_HOST"] if "://" in e["STORAGE_EMULATOR_HOST"]
                     else f"http://{e['STORAGE_EMULATOR_HOST']}")
        kwargs.update(endpoint_override=u.netloc, scheme=u.scheme, anonymous=True)
    return pafs.GcsFileSystem(**kwargs)


@functools.lru_cache(maxsize=8)
def _hdfs(netloc: str, env: tuple) -> pafs.FileSystem:
    host, _, port = netloc.partition(":")
    return pafs.HadoopFileSystem(host or "default", int(port) if port else 8020)


@functools.lru_cache(maxsize=8)
def _fsspec(scheme: str, env: tuple) -> pafs.FileSystem:
    try:
        import fsspec
    except ImportError as exc:  # pragma: no cover - fsspec comes with ray[data]
        raise StorageError(f"{scheme}://: no pyarrow filesystem for this scheme and fsspec is not installed") from exc
    try:
        fs = fsspec.filesystem(scheme)
    except (ImportError, ValueError) as exc:
        raise StorageError(f"{scheme}://: unsupported storage scheme ({_one_line(exc)})") from exc
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


_LOCAL = pafs.LocalFileSystem()
_SCHEMES_IN_USE: set[str] = set()


def schemes_in_use() -> set[str]:
    """The remote schemes this process has resolved: what its Ray tasks' storage environment must cover."""
    return set(_SCHEMES_IN_USE)


def resolve(p: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem of a path or URI and the path inside it."""
    s = os.fspath(p)
    scheme = scheme_of(s)
    if scheme in ("", "file", "local"):
        return _LOCAL, _local_path(s)
    _SCHEMES_IN_USE.add(scheme)
    rest = s.split("://", 1)[1]
    env = _env_key()
    if scheme in _S3:
        return _s3(env), rest.rstrip("/")
    if scheme in _GCS:
        return _gcs(env), rest.rstrip("/")
    if scheme in _HDFS:
        u = urlsplit(s)
        return _hdfs(u.netloc, env), (u.path or "/").rstrip("/") or "/"
    return _fsspec(scheme, env), rest.rstrip("/")


def _is_posix(fs: pafs.FileSystem) -> bool:
    return isinstance(fs, pafs.LocalFileSystem)


def _renames_atomically(fs: pafs.FileSystem) -> bool:
    return isinstance(fs, pafs.HadoopFileSystem)


# ----------------------------------------------------------------------------------------------------
# reading


def exists(p: str | os.PathLike) -> bool:
    fs, path = resolve(p)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_dir(p: str | os.PathLike) -> bool:
    fs, path = resolve(p)
    return fs.get_file_info(path).type == pafs.FileType.Directory


def size(p: str | os.PathLike) -> int:
    return stat(p)[0]


def stat(p: str | os.PathLike) -> tuple[int, float]:
    """(size in bytes, modification time in seconds; 0.0 where the store has none) of a file.

    Local names go to ``os.stat``, which takes any name, one that is not UTF-8 too (#19.14); anything that
    is not a regular file raises :class:`FileNotFoundError`.
    """
    lp = local_path(p)
    if lp is not None:
        st = os.stat(lp)
        if not _stat.S_ISREG(st.st_mode):
            raise FileNotFoundError(f"{display(p)}: not a file")
        return int(st.st_size), st.st_mtime
    fs, path = resolve(p)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        raise FileNotFoundError(f"{display(p)}: not a file")
    mtime = info.mtime.timestamp() if info.mtime is not None else 0.0
    return int(info.size), mtime


def open_input(p: str | os.PathLike) -> IO[bytes]:
    """A seekable binary file (random access, so byte ranges are read by seeking)."""
    fs, path = resolve(p)
    if _is_posix(fs):
        return open(path, "rb")  # noqa: SIM115 - the caller closes it
    return fs.open_input_file(path)


def read_bytes(p: str | os.PathLike) -> bytes:
    with open_input(p) as fh:
        return fh.read()


def read_json(p: str | os.PathLike) -> Any:
    return json.loads(read_bytes(p))


def list_files(p: str | os.PathLike, recursive: bool = True) -> list[str]:
    """Files under a folder (sorted, in the caller's spelling: paths for paths, URIs for URIs).

    For inputs only: a job's own intermediates are found through manifests, never through a listing.
    """
    s = os.fspath(p)
    fs, path = resolve(s)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=recursive, allow_not_found=True))
    base = path.rstrip("/")
    out = []
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        rel = info.path[len(base):].lstrip("/") if info.path.startswith(base) else info.path
        out.append(join(s, rel) if is_remote(s) else os.path.join(path, rel))
    return sorted(out)


def list_relative(p: str | os.PathLike, recursive: bool = True) -> list[str]:
    """The files under a folder as ``/``-separated names relative to it (sorted)."""
    fs, path = resolve(p)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=recursive, allow_not_found=True))
    base = path.rstrip("/")
    rels = (i.path[len(base):] if i.path.startswith(base) else i.path for i in infos if i.type == pafs.FileType.File)
    return sorted(r.replace(os.sep, "/").lstrip("/") for r in rels)


def read_arrow(p: str | os.PathLike) -> pa.Table:
    """A whole Arrow IPC file: memory-mapped where it is local, one read where it is remote."""
    lp = local_path(p)
    if lp is None:
        return ipc.open_file(pa.BufferReader(read_bytes(p))).read_all()
    with pa.memory_map(lp, "r") as source:
        return ipc.open_file(source).read_all()


def read_arrow_batch(p: str | os.PathLike, b: int) -> pa.RecordBatch:
    """Record batch ``b`` of an Arrow IPC file, reading only its bytes (memory map, or ranged reads)."""
    lp = local_path(p)
    if lp is None:
        fs, path = resolve(p)
        with fs.open_input_file(path) as f:
            return ipc.open_file(f).get_batch(b)
    with pa.memory_map(lp, "r") as source:
        return ipc.open_file(source).get_batch(b)


def load_npy(p: str | os.PathLike, mmap: bool = False) -> np.ndarray:
    """A ``.npy`` array (never a pickle); ``mmap`` memory-maps a local file (a remote one is read whole)."""
    lp = local_path(p)
    if lp is None:
        return np.load(io.BytesIO(read_bytes(p)), allow_pickle=False)
    return np.load(_local_path(lp), mmap_mode="r" if mmap else None, allow_pickle=False)


# ----------------------------------------------------------------------------------------------------
# writing


# Every temporary file slimpipe writes ends in this (``.<name>.<random>.slimpipe.tmp``), so that clean-up
# after a killed writer removes only slimpipe's own temporaries, never a user's ``.draft.tmp``.
TMP_SUFFIX = ".slimpipe.tmp"
# S3's CopyObject copies at most 5 GiB in one request: larger objects are uploaded under their final name.
_COPY_LIMIT = 5 << 30


def is_temporary(name: str) -> bool:
    """True for the name of a temporary file slimpipe writes before publishing a file (see :data:`TMP_SUFFIX`)."""
    return name.startswith(".") and name.endswith(TMP_SUFFIX)


@contextlib.contextmanager
def open_output(p: str | os.PathLike) -> Iterator[IO[bytes]]:
    """Write a file that appears whole when the ``with`` block exits cleanly, and never otherwise."""
    fs, path = resolve(p)
    if _is_posix(fs):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=TMP_SUFFIX,
                                   dir=os.path.dirname(path))
        os.fchmod(fd, _FILE_MODE)
        try:
            with os.fdopen(fd, "wb") as fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return
    if _renames_atomically(fs):
        parent = path.rsplit("/", 1)[0]
        tmp = f"{parent}/.{path.rsplit('/', 1)[-1]}.{uuid.uuid4().hex}{TMP_SUFFIX}"
        fs.create_dir(parent, recursive=True)
        try:
            with fs.open_output_stream(tmp, compression=None) as fh:
                yield fh
            fs.move(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                fs.delete_file(tmp)
            raise
        return
    # object store: spool locally, then upload it (published only once every byte is up, see upload)
    with tempfile.TemporaryFile(prefix="slimpipe-upload-") as spool:
        yield spool
        spool.flush()
        spool.seek(0)
        upload(spool, p)


def upload(src: IO[bytes], p: str | os.PathLike) -> int:
    """Copy a readable binary stream to ``p`` (a path or URI); the file appears only if the whole stream was
    read and written, never a truncated one under its final name. Returns the bytes written.

    On POSIX and HDFS through :func:`open_output` (temporary file, then rename). On object stores a stream
    left mid-way is still committed when it is closed (pyarrow's output streams complete the upload on
    close, even after an error), so the bytes go to a temporary object next to the target first and are
    copied to the final name in one server-side copy (atomic) only after the stream ended cleanly; the
    temporary object is deleted either way. Objects over 5 GiB (the limit of one S3 copy) are uploaded
    under their final name and deleted again if the upload fails.
    """
    fs, path = resolve(p)
    if not _is_object_store(fs) and (_is_posix(fs) or _renames_atomically(fs)):
        with open_output(p) as out:
            return _copy(src, out)
    size_hint = _remaining(src)
    if size_hint is not None and size_hint > _COPY_LIMIT:
        try:
            with fs.open_output_stream(path, compression=None) as out:
                return _copy(src, out)
        except BaseException:
            with contextlib.suppress(Exception):
                fs.delete_file(path)
            raise
    parent, _, name = path.rpartition("/")
    tmp = f"{parent}/.{name}.{uuid.uuid4().hex}{TMP_SUFFIX}"
    try:
        with fs.open_output_stream(tmp, compression=None) as out:
            n = _copy(src, out)
        fs.copy_file(tmp, path)
    finally:
        with contextlib.suppress(Exception):
            fs.delete_file(tmp)
    return n


def _copy(src: IO[bytes], out) -> int:
    n = 0
    while True:
        buf = src.read(_CHUNK)
        if not buf:
            return n
        out.write(buf)
        n += len(buf)


def _remaining(src: IO[bytes]) -> int | None:
    """Bytes left in a seekable stream, or None when it cannot tell."""
    try:
        here = src.tell()
        end = src.seek(0, os.SEEK_END)
        src.seek(here)
        return end - here
    except (AttributeError, OSError, ValueError):
        return None


def write_bytes_atomic(p: str | os.PathLike, data: bytes) -> None:
    with open_output(p) as fh:
        fh.write(data)


def dumps_json(obj: Any) -> bytes:
    """The one JSON layout of small metadata files (indented, UTF-8, trailing newline)."""
    text = json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n"
    try:
        return text.encode()
    except UnicodeEncodeError:  # a lone surrogate (a file name that is not UTF-8): escaped, json.loads gives it back
        return (json.dumps(obj, indent=2, ensure_ascii=True, sort_keys=False) + "\n").encode()


def write_json_atomic(p: str | os.PathLike, obj: Any) -> None:
    write_bytes_atomic(p, dumps_json(obj))


def write_arrow_atomic(p: str | os.PathLike, schema: pa.Schema, batches: Iterable[pa.RecordBatch]) -> None:
    """An Arrow IPC file published whole (through :func:`open_output`)."""
    with open_output(p) as fh, ipc.new_file(fh, schema) as w:
        for b in batches:
            w.write_batch(b)


def makedirs(p: str | os.PathLike) -> None:
    fs, path = resolve(p)
    if _is_posix(fs):
        os.makedirs(path, exist_ok=True)
    elif not _is_object_store(fs):
        fs.create_dir(path, recursive=True)


def _is_object_store(fs: pafs.FileSystem) -> bool:
    return isinstance(fs, (pafs.S3FileSystem, pafs.GcsFileSystem))


def delete_tree(p: str | os.PathLike) -> None:
    """Delete a folder (or file) and everything below it; a missing one is not an error."""
    fs, path = resolve(p)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif info.type == pafs.FileType.File:
        fs.delete_file(path)
    elif _is_object_store(fs):  # a prefix with objects but no directory marker
        with contextlib.suppress(FileNotFoundError):
            fs.delete_dir_contents(path, missing_dir_ok=True)


def remove_empty_dir(p: str | os.PathLike) -> None:
    """Remove a local folder that is empty (its real path); a store's folders are prefixes: nothing to do."""
    lp = local_path(p)
    if lp is not None:
        os.rmdir(canonical(lp))


def delete_file(p: str | os.PathLike) -> None:
    fs, path = resolve(p)
    with contextlib.suppress(FileNotFoundError):
        fs.delete_file(path)


# ----------------------------------------------------------------------------------------------------
# checks and caching


def _one_line(exc: BaseException) -> str:
    msg = " ".join(str(exc).split()) or type(exc).__name__
    return msg if len(msg) <= 300 else msg[:297] + "..."


def check_access(p: str | os.PathLike, write: bool = False) -> None:
    """Fail fast, with one line naming the URI and the cause, when ``p`` cannot be read (or written).

    Reading needs ``p`` to exist. Writing creates a small probe object under ``p`` and deletes it, which
    proves the endpoint is reachable, the credentials are accepted and the bucket exists.
    """
    s = display(p)
    try:
        fs, path = resolve(p)
    except StorageError:
        raise
    except Exception as exc:  # noqa: BLE001 - any construction failure is the user's configuration
        raise StorageError(f"{s}: cannot open storage ({_one_line(exc)})") from exc
    try:
        if write:
            probe = join(s, f".slimpipe-probe-{uuid.uuid4().hex}")
            write_bytes_atomic(probe, b"ok\n")
            delete_file(probe)
        elif fs.get_file_info(path).type == pafs.FileType.NotFound:
            raise StorageError(f"{s}: not found")
    except StorageError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise StorageError(f"{s}: cannot {'write' if write else 'read'} ({_one_line(exc)})") from exc


def check_store(p: str | os.PathLike, write: bool = False) -> None:
    """:func:`check_access` for a store reached over the network (endpoint, credentials, bucket: one line
    naming the URI, before any work); a local path passes here, its first use names what is wrong."""
    if is_remote(p):
        check_access(p, write=write)


def missing_local_dir(p: str | os.PathLike) -> bool:
    """True when ``p`` names a local folder that does not exist (a command-line check; a URI is checked
    when it is first read, with :func:`check_access`'s one line)."""
    lp = local_path(p)
    return lp is not None and not os.path.isdir(_local_path(lp))


def local_copy(p: str | os.PathLike, cache_dir: str | os.PathLike) -> Path:
    """A local path holding ``p``'s bytes: ``p`` itself when local, else a download cached by URI and size.

    Several processes may ask at once: each downloads to its own temporary name and renames it into
    place, so readers only ever see a whole file.
    """
    if not is_remote(p):
        return Path(_local_path(p))
    s = display(p)
    nbytes = size(s)
    digest = hashlib.sha256(s.encode()).hexdigest()[:16]
    dest = Path(cache_dir) / digest / s.rstrip("/").rsplit("/", 1)[-1]
    if dest.is_file() and dest.stat().st_size == nbytes:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open_input(s) as src, open_output(dest) as out:
        shutil.copyfileobj(src, out, _CHUNK)
    return dest


@contextlib.contextmanager
def staged_folder(dest: str | os.PathLike, download: bool = False, last: Iterable[str] = ()) -> Iterator[Path]:
    """A local folder for writers that want one (reports, plots, tokenizers, a training run): ``dest``
    itself when it is local; else a temporary folder (holding ``dest``'s files first when ``download``)
    that is uploaded to ``dest`` when the ``with`` block exits cleanly, each file atomically, the names in
    ``last`` last (a completion mark). A failed block uploads nothing. The folder exists in both cases."""
    lp = local_path(dest)
    if lp is not None:
        os.makedirs(lp, exist_ok=True)
        yield Path(lp)
        return
    with tempfile.TemporaryDirectory(prefix="slimpipe-out-") as tmp:
        if download:
            download_tree(dest, tmp)
        yield Path(tmp)
        upload_tree(tmp, dest, last=last)


def write_tree(dest: str | os.PathLike, render: Callable[[Path], Any]) -> None:
    """Have ``render(folder)`` write files into ``dest`` (see :func:`staged_folder`)."""
    with staged_folder(dest) as folder:
        render(folder)


def local_view(src: str | os.PathLike, dest: str | os.PathLike, recursive: bool = True) -> Path:
    """A local folder holding ``src``'s files: ``src`` itself when it is local, else a copy made in ``dest``
    (every file below it, or only its top-level files)."""
    lp = local_path(src)
    if lp is not None:
        return Path(lp)
    Path(dest).mkdir(parents=True, exist_ok=True)
    download_tree(src, dest, recursive=recursive)
    return Path(dest)


def upload_tree(local_dir: str | os.PathLike, dest: str | os.PathLike, last: Iterable[str] = ()) -> list[str]:
    """Copy every file under a local folder to ``dest`` (a path or URI), each committed atomically; the
    relative names in ``last`` go last, in that order (a completion mark, e.g. ``metrics.json``)."""
    root = Path(local_dir)
    late = list(last)
    files = [p.relative_to(root).as_posix() for p in sorted(root.rglob("*")) if p.is_file()]
    files = [f for f in files if f not in late] + [f for f in late if f in files]
    out = []
    for rel in files:
        target = join(dest, rel)
        with open(root / rel, "rb") as src:
            upload(src, target)
        out.append(target)
    return out


def download_tree(src: str | os.PathLike, local_dir: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Copy every file under ``src`` (a path or URI; only its top-level files unless ``recursive``) into a
    local folder; the inverse of :func:`upload_tree`."""
    root = Path(local_dir)
    out = []
    for rel in list_relative(src, recursive=recursive):
        target = root / rel
        with open_input(join(src, rel)) as fh, open_output(target) as dst:
            shutil.copyfileobj(fh, dst, _CHUNK)
        out.append(target)
    return out


def remove_temporaries(root: str | os.PathLike, names: Iterable[str]) -> int:
    """Delete the temporaries (:func:`is_temporary`) a killed writer left in ``root``: only those of the
    top-level ``names`` (``.<name>.*``) and those anywhere inside the folders ``names``; returns how many.
    Locally, symlinks are never followed nor deleted (what a link points to is not ours)."""
    names = list(names)
    lp = local_path(root)
    if lp is None:  # an upload killed midway leaves its temporary object (never the final one)
        found_uris = [f for f in list_files(root, recursive=False)
                      if any(f.rsplit("/", 1)[-1].startswith(f".{name}.") for name in names)]
        for name in names:
            found_uris += list_files(join(root, name))
        gone = [f for f in found_uris if is_temporary(f.rsplit("/", 1)[-1])]
        for f in gone:
            delete_file(f)
        return len(gone)
    base = Path(_local_path(lp))
    n = 0
    found = [p for p in base.glob(".*") if is_temporary(p.name)
             and any(p.name.startswith(f".{name}.") for name in names)]
    for name in names:
        top = base / name
        if top.is_dir() and not top.is_symlink():
            found += [p for p in top.rglob(f"*{TMP_SUFFIX}") if is_temporary(p.name)]
    for p in found:
        if p.is_file() and not p.is_symlink():
            p.unlink(missing_ok=True)
            n += 1
    return n


# ----------------------------------------------------------------------------------------------------
# one folder


class Folder:
    """One folder, local or remote, built once from a path or URI; files are named relative to it.

    Everything a step does with its files goes through here (or the functions above, for a path it was
    handed): it never asks whether the folder is remote. Writes are atomic (:func:`open_output`), reads of
    Arrow and ``.npy`` files memory-map where the folder is local and use ranged reads where it is not.
    A Folder pickles as its name only: the filesystem (and any credentials in it) is rebuilt from the
    environment of the process that uses it, never shipped with a task.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = join(path)  # a path (as given, normalised) or a URI without a trailing "/"

    def __fspath__(self) -> str:
        return self.path

    def __str__(self) -> str:
        return self.path

    def __repr__(self) -> str:
        return f"Folder({self.path!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Folder) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    def __getstate__(self) -> dict:
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.path = state["path"]

    # names ---------------------------------------------------------------------------------------

    def join(self, *parts: str) -> str:
        """The path or URI of ``parts`` below this folder."""
        return join(self.path, *parts)

    def folder(self, *parts: str) -> Folder:
        return Folder(self.join(*parts))

    @property
    def local_path(self) -> str | None:
        """The folder's name on this machine's filesystem, or None (see :func:`local_path`)."""
        return local_path(self.path)

    @property
    def shared(self) -> bool:
        """Every node of a cluster sees this folder as written (see :func:`is_shared`)."""
        return is_shared(self.path)

    @property
    def canonical(self) -> str:
        return canonical(self.path)

    # reading -------------------------------------------------------------------------------------

    def exists(self, rel: str = "") -> bool:
        return exists(self.join(rel) if rel else self.path)

    def is_dir(self, rel: str = "") -> bool:
        return is_dir(self.join(rel) if rel else self.path)

    def size(self, rel: str) -> int:
        return size(self.join(rel))

    def entries(self) -> list[str] | None:
        """The names directly inside the folder (files and folders, sorted), or None when it does not exist;
        :class:`NotADirectoryError` when the name is a file."""
        fs, path = resolve(self.path)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            return None
        if info.type != pafs.FileType.Directory:
            raise NotADirectoryError(f"{display(self.path)} is a file, not a folder")
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True))
        return sorted(i.base_name for i in infos)

    def list(self, rel: str = "", recursive: bool = True) -> list[str]:
        """Files below the folder (or below ``rel``) as ``/``-separated names relative to it, sorted."""
        sub = self.join(rel) if rel else self.path
        prefix = rel.strip("/") + "/" if rel else ""
        return [prefix + r for r in list_relative(sub, recursive=recursive)]

    def open(self, rel: str, mode: str = "rb") -> Any:
        """``"rb"``: a seekable binary file (the caller closes it); ``"wb"``: a context manager whose file
        is published whole when the ``with`` block exits cleanly (:func:`open_output`)."""
        if mode == "rb":
            return open_input(self.join(rel))
        if mode == "wb":
            return open_output(self.join(rel))
        raise ValueError(f"mode {mode!r}: 'rb' or 'wb'")

    def read_bytes(self, rel: str) -> bytes:
        return read_bytes(self.join(rel))

    def read_json(self, rel: str) -> Any:
        return read_json(self.join(rel))

    def read_arrow(self, rel: str) -> pa.Table:
        return read_arrow(self.join(rel))

    def read_arrow_batch(self, rel: str, b: int) -> pa.RecordBatch:
        return read_arrow_batch(self.join(rel), b)

    def load_npy(self, rel: str, mmap: bool = False) -> np.ndarray:
        return load_npy(self.join(rel), mmap=mmap)

    # writing (every write is atomic) -------------------------------------------------------------

    def write_bytes(self, rel: str, data: bytes) -> None:
        write_bytes_atomic(self.join(rel), data)

    def write_json(self, rel: str, obj: Any) -> None:
        write_json_atomic(self.join(rel), obj)

    def write_arrow(self, rel: str, schema: pa.Schema, batches: Iterable[pa.RecordBatch]) -> None:
        write_arrow_atomic(self.join(rel), schema, batches)

    def makedirs(self) -> None:
        makedirs(self.path)

    def delete(self, rel: str = "") -> None:
        """Delete ``rel`` (a file or folder), or the whole folder; a missing one is not an error."""
        delete_tree(self.join(rel) if rel else self.path)

    def delete_file(self, rel: str) -> None:
        delete_file(self.join(rel))

    def staged(self, download: bool = False, last: Iterable[str] = ()) -> contextlib.AbstractContextManager[Path]:
        """A local folder whose files land here (see :func:`staged_folder`)."""
        return staged_folder(self.path, download=download, last=last)

    def remove_temporaries(self, names: Iterable[str]) -> int:
        return remove_temporaries(self.path, names)

    def check(self, write: bool = False) -> None:
        """Fail fast, in one line, when a remote store cannot be reached (see :func:`check_store`)."""
        check_store(self.path, write=write)
