"""Every path slimpipe reads or writes: a local path or a URI (``file://``, ``s3://``, ``gs://``, ``hdfs://``).

One module so that every stage, task and command goes through the same rules:

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
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import pyarrow.fs as pafs

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
    fs, path = resolve(p)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        raise FileNotFoundError(f"{display(p)}: not a file")
    return int(info.size)


def stat(p: str | os.PathLike) -> tuple[int, float]:
    """(size in bytes, modification time in seconds; 0.0 where the store has none)."""
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


def write_tree(dest: str | os.PathLike, render: Callable[[Path], Any]) -> None:
    """Have ``render(folder)`` write files into ``dest``: directly for a local path, else into a temporary
    folder that is then uploaded (reports and plots are written by libraries that want a local path)."""
    if not is_remote(dest):
        render(Path(resolve(dest)[1]))
        return
    with tempfile.TemporaryDirectory(prefix="slimpipe-out-") as tmp:
        render(Path(tmp))
        upload_tree(tmp, dest)


def upload_tree(local_dir: str | os.PathLike, dest: str | os.PathLike) -> list[str]:
    """Copy every file under a local folder to ``dest`` (a path or URI), each committed atomically."""
    root = Path(local_dir)
    out = []
    for p in sorted(root.rglob("*")):
        if p.is_file():
            target = join(dest, p.relative_to(root).as_posix())
            with open(p, "rb") as src:
                upload(src, target)
            out.append(target)
    return out


def download_tree(src: str | os.PathLike, local_dir: str | os.PathLike) -> list[Path]:
    """Copy every file under ``src`` (a path or URI) into a local folder; the inverse of :func:`upload_tree`."""
    base = join(src)
    root = Path(local_dir)
    out = []
    for f in list_files(src):
        target = root / f[len(base):].lstrip("/")
        with open_input(f) as fh, open_output(target) as dst:
            shutil.copyfileobj(fh, dst, _CHUNK)
        out.append(target)
    return out
