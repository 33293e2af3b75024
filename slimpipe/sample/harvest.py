"""Harvest real text from the running Python installation, so the sample needs no download.

Everything here is read, never generated: the standard library's ``.py`` files (code, and the
docstrings inside them), the ``pydoc_data`` help topics (the Language Reference prose that ``help()``
prints), a few prose text files that ship with the library (IDLE's history and help, the licence),
and, when ``ensurepip`` carries them, the pip/setuptools wheels (more code and docstrings).

Docstrings are found with a small scanner instead of :mod:`ast`: parsing 12 MB of source into AST
objects takes ~5 s, the scanner ~0.5 s, and every string it returns is checked with
:func:`ast.literal_eval`, so it returns the exact docstring value or nothing. Every list is sorted,
so the harvest depends only on the installation's contents, never on file-system order.
"""

from __future__ import annotations

import ast
import codecs
import functools
import html.parser
import inspect
import os
import re
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

# --------------------------------------------------------------------------------------------------
# data


@dataclass(frozen=True)
class DocItem:
    """One docstring: of the module itself, a class, or a function/method."""

    kind: str  # "module" | "class" | "def"
    qualname: str  # "" for the module docstring, else "Class.method"
    signature: str  # the header as written, whitespace collapsed: "def copy(src, dst, *, follow_symlinks=True):"
    doc: str  # inspect.cleandoc'ed docstring
    depth: int  # 0 for module and top-level defs, 1 for methods, ...


@dataclass(frozen=True)
class PyFile:
    """A Python source file and the docstrings in it (docstrings only for non-test files)."""

    project: str  # "cpython" | "pip" | "setuptools"
    version: str
    path: str  # inside its tree: "shutil.py", "email/message.py", "pip/_internal/cache.py"
    text: str
    items: tuple[DocItem, ...]
    is_test: bool

    @property
    def key(self) -> str:
        return f"{self.project}:{self.path}"

    @property
    def module(self) -> str:
        """Dotted module name: ``email/message.py`` -> ``email.message``; packages drop ``__init__``."""
        parts = self.path[:-3].split("/")
        if parts[-1] == "__init__":
            parts = parts[:-1]
        return ".".join(parts) or self.path

    @property
    def package(self) -> str:
        """The group a book is made of: a stdlib package, or a pip/setuptools subpackage (``pip/_vendor/rich``)."""
        parts = self.path.split("/")
        if self.project == "cpython":
            depth = 1
        else:
            depth = 3 if len(parts) > 3 and parts[1] == "_vendor" else 2
        return "/".join(parts[: min(depth, len(parts) - 1)]) if len(parts) > 1 else ""

    @property
    def doc_chars(self) -> int:
        return sum(len(i.doc) for i in self.items)


@dataclass(frozen=True)
class TextFile:
    """A prose file that ships with Python (or a help topic); ``title`` is a human heading."""

    key: str
    title: str
    text: str


@dataclass(frozen=True)
class Harvest:
    """All real text found, in sorted order. Built once per process (see :func:`harvest`)."""

    python_version: str
    stdlib: str
    code: tuple[PyFile, ...]  # files whose text is used as code (few docstrings, or tests)
    prose: tuple[PyFile, ...]  # files whose docstrings are used as prose (their code is never used)
    topics: tuple[TextFile, ...]  # pydoc_data help topics
    texts: tuple[TextFile, ...]  # other prose files (IDLE help, licence, READMEs)
    books: tuple[TextFile, ...]  # long prose files that make a book as they are (IDLE's history)


# A file becomes prose when its docstrings hold at least this many characters; the rest is code.
PROSE_MIN_DOC_CHARS = 400
_MAX_FILE_CHARS = 150_000  # code files above this are left out: keeps github docs realistic in size

# --------------------------------------------------------------------------------------------------
# docstring scanner

_HEADER = re.compile(r"^([ \t]*)(?:async[ \t]+)?(def|class)[ \t]+(\w+)", re.M)
_STRING_START = re.compile(r"[ \t]*([rRuU]?)(\"\"\"|'''|\"|')")
_BLANKS = re.compile(r"[ \t]*(?:#[^\n]*)?\n(?:[ \t]*(?:#[^\n]*)?\n)*")
_LEADING = re.compile(r"(?:[ \t]*(?:#[^\n]*)?\n)*")


def _literal_end(src: str, pos: int, quote: str) -> int:
    """Index just past the closing ``quote`` of a literal whose body starts at ``pos``; -1 if none."""
    i = pos
    while True:
        j = src.find(quote, i)
        if j < 0:
            return -1
        k, slashes = j - 1, 0
        while k >= pos and src[k] == "\\":
            slashes += 1
            k -= 1
        if slashes % 2 == 0:
            return j + len(quote)
        i = j + 1


def _string_at(src: str, pos: int) -> tuple[str, int] | None:
    """(value, end) of a plain string literal starting at ``pos`` (after optional blanks), else None."""
    m = _STRING_START.match(src, pos)
    if not m:
        return None
    quote = m.group(2)
    end = _literal_end(src, m.end(2), quote)
    if end < 0 or (len(quote) == 1 and "\n" in src[m.end(2) : end]):
        return None
    body = src[m.end(2) : end - len(quote)]
    if m.group(1) in ("r", "R") or "\\" not in body:
        return body, end  # no escapes to interpret: the body is the value
    try:
        value = ast.literal_eval(src[m.start(1) : end])
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None
    return (value, end) if isinstance(value, str) else None


def _header_end(src: str, pos: int) -> int:
    """Index after the ``:`` that ends a def/class header starting before ``pos``; -1 if unsure."""
    eol = src.find("\n", pos)
    line = src[pos : eol if eol >= 0 else len(src)]
    if not any(c in line for c in "\"'#\\") and line.count("(") == line.count(")") \
            and line.count("[") == line.count("]") and line.rstrip().endswith(":"):
        return pos + len(line.rstrip())  # the common one-line header, without a character loop
    depth, i, n = 0, pos, len(src)
    while i < n:
        c = src[i]
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == ":" and depth == 0:
            return i + 1
        elif c == "#":
            j = src.find("\n", i)
            i = n if j < 0 else j
            continue
        elif c in "\"'":
            quote = src[i : i + 3] if src[i : i + 3] in ('"""', "'''") else c
            end = _literal_end(src, i + len(quote), quote)
            if end < 0:
                return -1
            i = end
            continue
        elif c == "\n" and depth == 0 and src[i - 1] != "\\":
            return -1
        i += 1
    return -1


def extract_docstrings(src: str) -> list[DocItem]:
    """Module, class and function docstrings of ``src`` in source order (same result as ``ast``).

    Headers inside an earlier docstring (example code in a docstring) are skipped.
    """
    items: list[DocItem] = []
    found = _string_at(src, _LEADING.match(src).end())  # type: ignore[union-attr]
    inside_until = 0
    if found and found[0].strip():
        items.append(DocItem("module", "", "", inspect.cleandoc(found[0]), 0))
        inside_until = found[1]
    stack: list[tuple[int, str]] = []
    for m in _HEADER.finditer(src):
        if m.start() < inside_until:
            continue
        indent = len(m.group(1).expandtabs())
        while stack and stack[-1][0] >= indent:
            stack.pop()
        end = _header_end(src, m.end())
        if end < 0:
            continue
        qualname = ".".join([s[1] for s in stack] + [m.group(3)])
        depth = len(stack)
        stack.append((indent, m.group(3)))
        eol = src.find("\n", end)
        rest = src[end : eol if eol >= 0 else len(src)].strip()
        if rest and not rest.startswith("#"):
            found = _string_at(src, end)  # one-line body: def f(): "doc"
        else:
            b = _BLANKS.match(src, end)
            found = _string_at(src, b.end()) if b else None
        if found and found[0].strip():
            signature = " ".join(src[m.start(2) : end].split())
            items.append(DocItem(m.group(2), qualname, signature, inspect.cleandoc(found[0]), depth))
            inside_until = found[1]
    return items


# --------------------------------------------------------------------------------------------------
# file selection

_SKIP_PARTS = {"site-packages", "__pycache__", "tokenizedata", "encoded_modules"}
_SKIP_PREFIXES = ("config-", "lib2to3/tests/data/", "pydoc_data/", "test/test_lib2to3/data/", "_sysconfigdata")
_TEST_PARTS = {"test", "tests", "idle_test", "testing"}
_GENERATED = re.compile(r"auto-?generated|automatically generated|generated by|do not edit", re.I)


def _is_test(path: str) -> bool:
    parts = path.split("/")
    return any(p in _TEST_PARTS for p in parts[:-1]) or parts[-1].startswith("test_")


def _usable(path: str, text: str) -> bool:
    """Skip generated tables, deliberately broken test inputs, build-specific files and empties."""
    if any(p in _SKIP_PARTS for p in path.split("/")) or path.startswith(_SKIP_PREFIXES):
        return False
    if "badsyntax" in path or "bad_coding" in path or "bad_getattr" in path:
        return False
    if "\x00" in text or not (100 <= len(text.strip()) <= 1_000_000):
        return False
    head = text[:400]
    return "Character Mapping Codec" not in head and not _GENERATED.search(head)


def _decode(data: bytes) -> str | None:
    try:
        return data.decode("utf-8").replace("\r\n", "\n")
    except UnicodeDecodeError:
        return None


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")


def _make(project: str, version: str, path: str, text: str) -> PyFile:
    """Docstrings with control characters (escapes such as ``\\0`` evaluate to NUL) are left out."""
    test = _is_test(path)
    items = () if test else tuple(i for i in extract_docstrings(text) if not _CONTROL.search(i.doc))
    return PyFile(project, version, path, text, items, test)


def _stdlib_dir() -> Path:
    return Path(os.__file__).resolve().parent


def _stdlib_files(root: Path) -> list[PyFile]:
    version = ".".join(map(str, sys.version_info[:3]))
    rels = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root).replace(os.sep, "/")
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        dirnames[:] = [d for d in dirnames if d not in _SKIP_PARTS]
        rels.extend(rel_dir + f for f in filenames if f.endswith(".py"))
    out = []
    for rel in sorted(rels):
        with open(root / rel, "rb") as fh:
            text = _decode(fh.read())
        if text is not None and _usable(rel, text):
            out.append(_make("cpython", version, rel, text))
    return out


# wheel members that duplicate another tree (setuptools vendors what pip vendors; _distutils forks
# the stdlib's distutils; pkg_resources is vendored by pip too) are left out at the source.
_WHEEL_SKIP = ("setuptools/_vendor/", "setuptools/_distutils/", "pkg_resources/", "_distutils_hack/")


def _wheel_files(root: Path) -> list[PyFile]:
    out: list[PyFile] = []
    bundled = root / "ensurepip" / "_bundled"
    if not bundled.is_dir():
        return out
    for wheel in sorted(bundled.glob("*.whl")):
        project, version = wheel.name.split("-")[:2]
        with zipfile.ZipFile(wheel) as zf:
            for name in sorted(zf.namelist()):
                if not name.endswith(".py") or name.startswith(_WHEEL_SKIP) or ".dist-info/" in name:
                    continue
                text = _decode(zf.read(name))
                if text is not None and _usable(name, text):
                    out.append(_make(project, version, name, text))
    return out


class _HTMLText(html.parser.HTMLParser):
    """Visible text of an HTML page, one block element per line (enough for IDLE's help page)."""

    _BLOCK = {"p", "div", "li", "h1", "h2", "h3", "h4", "dt", "dd", "pre", "tr", "br", "section", "title"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in ("script", "style", "head"):
            self._skip += 1
        elif tag in self._BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "head"):
            self._skip = max(0, self._skip - 1)
        elif tag in self._BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)

    def text(self) -> str:
        lines = (" ".join(line.split()) for line in "".join(self.parts).split("\n"))
        return "\n".join(line for line in lines if line)


def _html_text(raw: str) -> str:
    parser = _HTMLText()
    parser.feed(raw)
    parser.close()
    return parser.text()


# prose files shipped with the library: path -> title (missing ones are skipped)
_PAGE_FILES = {
    "LICENSE.txt": "History and License",
    "idlelib/help.html": "IDLE — Python editor and shell",
    "idlelib/README.txt": "README.txt: an index to idlelib files and the IDLE menu",
    "idlelib/TODO.txt": "IDLE TODO list",
    "idlelib/CREDITS.txt": "IDLE Credits",
    "idlelib/extend.txt": "Writing an IDLE extension",
    "email/architecture.rst": "Architecture of the email package",
    "distutils/README": "distutils README",
    "ctypes/macholib/README.ctypes": "macholib README",
    "test/test_doctest.txt": "Doctest examples",
    "this.py": "The Zen of Python",
}
_BOOK_FILES = {  # one book made of these files, in this order
    "IDLE: A History of Python's Integrated Development Environment": (
        "idlelib/NEWS.txt",
        "idlelib/NEWS2x.txt",
        "idlelib/HISTORY.txt",
        "idlelib/ChangeLog",
    ),
}


def _read_text(root: Path, rel: str) -> str | None:
    p = root / rel
    if not p.is_file():
        return None
    text = _decode(p.read_bytes())
    if text is None:
        return None
    if rel.endswith(".html"):
        return _html_text(text)
    if rel == "this.py":  # the Zen of Python ships rot13-encoded
        m = re.search(r's = """(.*?)"""', text, re.S)
        return codecs.decode(m.group(1), "rot13") if m else None
    return text


@functools.lru_cache(maxsize=1)
def harvest() -> Harvest:
    """Read every text source once per process (about a second); the result is immutable."""
    root = _stdlib_dir()
    files = _stdlib_files(root) + _wheel_files(root)
    prose = tuple(f for f in files if not f.is_test and f.doc_chars >= PROSE_MIN_DOC_CHARS)
    prose_keys = {f.key for f in prose}
    code = tuple(f for f in files if f.key not in prose_keys and len(f.text) <= _MAX_FILE_CHARS)
    try:
        from pydoc_data.topics import topics as raw_topics
    except ImportError:  # some distributions strip pydoc_data
        raw_topics = {}
    topic_list = []
    for name in sorted(raw_topics):
        text = raw_topics[name].strip()
        if len(text) >= 200:
            title = text.split("\n", 1)[0].strip() or name
            topic_list.append(TextFile(f"topic:{name}", title, text))
    texts = []
    for rel in sorted(_PAGE_FILES):
        text = _read_text(root, rel)
        if text and len(text.strip()) >= 200:
            texts.append(TextFile(f"cpython:{rel}", _PAGE_FILES[rel], text.strip()))
    books = []
    for title, rels in sorted(_BOOK_FILES.items()):
        parts = [t.strip() for t in (_read_text(root, r) for r in rels) if t]
        if parts:
            books.append(TextFile("cpython:" + "+".join(rels), title, "\n\n\n".join(parts)))
    return Harvest(sys.version, str(root), code, prose, tuple(topic_list), tuple(texts), tuple(books))
