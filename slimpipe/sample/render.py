"""Turn harvested text into RedPajama-1T records, one builder per source.

The *prose and code are real* (docstrings, help topics, library files); the *wrappers are
synthetic*: a doc-site title/breadcrumb/footer around CommonCrawl and C4 pages, ``Q:``/``A:`` framing for
StackExchange, a LaTeX section structure for ArXiv (``\\section{}``, ``\\subsection{}``, ``verbatim``),
chapter headings for books. Wrappers are kept short so that documents differ by their real text, not by
templates. Record shapes follow REFERENCE.md (RedPajama-1T formats), key order included; ids, URLs,
dates and scores are synthetic and drawn from the seeded RNG, never from the clock.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from .harvest import DocItem, PyFile, TextFile
from .textsim import clean

# --------------------------------------------------------------------------------------------------
# documents


@dataclass
class Doc:
    """One output record before shuffling; ``origin`` says where its text came from."""

    file: str
    record: dict
    origin: str
    extra: dict = field(default_factory=dict)  # builder facts the planter may use (url, footer, ...)

    @property
    def text(self) -> str:
        return self.record["text"]

    @functools.cached_property
    def cleaned(self) -> str:
        """The text as SlimPajama hashes it (records are never changed after they are built)."""
        return clean(self.record["text"])


# --------------------------------------------------------------------------------------------------
# text helpers

_PARA_SPLIT = re.compile(r"\n[ \t]*\n")
_NOT_PROSE_START = (">>>", "...", "-", "*", "+", "|", ":", "#", "$", "%")


def paragraphs(text: str) -> list[str]:
    return [p.strip("\n") for p in _PARA_SPLIT.split(text) if p.strip()]


def is_prose(par: str) -> bool:
    """A paragraph of running text (not a doctest, table, list or indented block)."""
    lines = par.split("\n")
    return len(par.split()) >= 3 and all(
        line and not line[0].isspace() and not line.startswith(_NOT_PROSE_START) for line in lines
    )


def flow(par: str) -> str:
    """Prose paragraphs become one line, as web-text extraction and wiki dumps give them."""
    return " ".join(par.split()) if is_prose(par) else par


def sentence_like(par: str) -> bool:
    """C4's line rule, roughly: running text that ends with terminal punctuation and has no braces."""
    return is_prose(par) and par.rstrip().endswith((".", "!", "?", '"')) and "{" not in par and len(par.split()) >= 5


def short_signature(item: DocItem, module: str = "") -> str:
    sig = item.signature[:-1] if item.signature.endswith(":") else item.signature
    sig = re.sub(r"^(async\s+)?(def|class)\s+", "", sig)
    if module:
        head = item.qualname.rsplit(".", 1)[0] + "." if "." in item.qualname else ""
        sig = f"{module}.{head}{sig}"
    return sig


def chunk_items(items: Sequence[DocItem], max_chars: int) -> list[list[DocItem]]:
    """Consecutive items in groups of at most ``max_chars`` of docstring (an item is never split)."""
    out: list[list[DocItem]] = []
    cur: list[DocItem] = []
    size = 0
    for it in items:
        n = len(it.doc) + len(it.signature)
        if cur and size + n > max_chars:
            out.append(cur)
            cur, size = [], 0
        cur.append(it)
        size += n
    if cur:
        out.append(cur)
    return out


def summary(f: PyFile) -> str:
    """First line of the module docstring, when it reads like a title."""
    for it in f.items:
        if it.kind == "module":
            first = it.doc.split("\n", 1)[0].strip().rstrip(".")
            return first if 3 <= len(first) <= 90 else ""
    return ""


def page_name(key: str) -> str:
    """URL stem for a text unit: ``cpython:idlelib/help.html`` -> ``idlelib/help``, ``topic:try`` -> ``try``."""
    name = key.split(":", 1)[1]
    head, _, last = name.rpartition("/")
    stem = last.rsplit(".", 1)[0] if "." in last else last
    return f"{head}/{stem}" if head else stem


def _latex_escape(s: str) -> str:
    rep = {"\\": r"\textbackslash{}", "{": r"\{", "}": r"\}", "$": r"\$", "&": r"\&", "#": r"\#",
           "^": r"\^{}", "_": r"\_", "%": r"\%", "~": r"\~{}"}
    return "".join(rep.get(c, c) for c in s)


def _roman(n: int) -> str:
    vals = [(1000, "M"), (900, "CM"), (500, "D"), (400, "CD"), (100, "C"), (90, "XC"), (50, "L"),
            (40, "XL"), (10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I")]
    out = ""
    for v, s in vals:
        while n >= v:
            out += s
            n -= v
    return out


# --------------------------------------------------------------------------------------------------
# per-project facts (where the text really comes from)

_PROJECT = {
    "cpython": ("python/cpython", "Lib/", "psf-2.0", "docs.python.org", "the Python Software Foundation"),
    "pip": ("pypa/pip", "src/", "mit", "pip.pypa.io", "the pip developers"),
    "setuptools": ("pypa/setuptools", "", "mit", "setuptools.pypa.io", "the setuptools developers"),
}


def _project(f: PyFile) -> tuple[str, str, str, str, str]:
    return _PROJECT.get(f.project, (f"pypi/{f.project}", "", "unknown", f"{f.project}.readthedocs.io",
                                    f"the {f.project} developers"))


SNAPSHOT_DATES = {"2019-30": dt.date(2019, 7, 15), "2020-05": dt.date(2020, 1, 20)}
MIRRORS = ("docs.python-guide.org", "mirror.python-docs.net", "pydocs.mirror.org", "docs.pythonlibrary.org")


class Renderer:
    """Builds records for every source; all variability comes from one seeded RNG."""

    def __init__(self, rng: random.Random, python_version: tuple[int, int, int]) -> None:
        self.rng = rng
        self.py = ".".join(map(str, python_version))
        self.py_short = ".".join(map(str, python_version[:2]))
        self._ids: set[str] = set()

    # ---- small random facts ------------------------------------------------------------------
    def date(self, start: dt.date, end: dt.date) -> dt.date:
        return start + dt.timedelta(days=self.rng.randrange((end - start).days + 1))

    def clock(self) -> str:
        return f"{self.rng.randrange(24):02d}:{self.rng.randrange(60):02d}:{self.rng.randrange(60):02d}"

    def unique(self, make: Callable[[], str]) -> str:
        for _ in range(1000):
            value = make()
            if value not in self._ids:
                self._ids.add(value)
                return value
        raise RuntimeError("could not draw a unique id")

    # ---- common crawl -----------------------------------------------------------------------------
    def cc_record(self, text: str, source: str) -> dict:
        """CCNet-style record: no meta; ``wiki_prob`` is a deterministic stand-in from the text's hash."""
        wiki_prob = round(0.25 + 0.75 * int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 2**32, 4)
        label = "__label__wiki" if wiki_prob >= 0.5 else "__label__cc"
        return {"text": text, "pred_label": label, "pred_label_prob": round(max(wiki_prob, 1 - wiki_prob), 4),
                "wiki_prob": wiki_prob, "source": source}

    def footer(self, snapshot: str, owner: str, after: dt.date | None = None) -> tuple[str, dt.date]:
        """Doc-site footer dated before the crawl (and after ``after``: a re-crawl sees a newer page)."""
        end = SNAPSHOT_DATES[snapshot]
        start = end - dt.timedelta(days=700)
        if after is not None:
            start = max(start, after + dt.timedelta(days=1))
        day = self.date(start, end)
        return f"© Copyright {day.year}, {owner}.\nLast updated on {day:%b %d, %Y}.", day

    def _page(self, file: str, snapshot: str, title: str, crumbs: str, body: str, host: str, path: str,
              owner: str, origin: str) -> Doc:
        foot, day = self.footer(snapshot, owner)
        text = f"{title}\n{crumbs}\n{body}\n{foot}"
        source = f"cc/{snapshot}/{host}/{path}"
        return Doc(file, self.cc_record(text, source), origin, {"url": f"https://{host}/{path}", "footer": foot,
                                                                  "footer_date": day, "owner": owner, "host": host,
                                                                  "path": path})

    def cc_doc_pages(self, file: str, snapshot: str, f: PyFile, max_chars: int) -> list[Doc]:
        """Library reference pages of one module (long modules become several pages)."""
        _, _, _, host, owner = _project(f)
        name = f.module
        title = f"{name} — {summary(f)}" if summary(f) else name
        version = self.py if f.project == "cpython" else f.version
        crumbs = (f"Python » {version} Documentation » The Python Standard Library » {name}"
                  if f.project == "cpython" else f"{f.project} {version} documentation » API reference » {name}")
        docs = []
        for k, chunk in enumerate(chunk_items(f.items, max_chars)):
            parts = []
            for it in chunk:
                if it.kind != "module":
                    parts.append(short_signature(it, name if it.depth == 0 else ""))
                parts.extend(flow(p) for p in paragraphs(it.doc))
            base = f"{self.py_short}/library" if f.project == "cpython" else f"en/{version}/reference"
            path = f"{base}/{name}.html" if k == 0 else f"{base}/{name}-{k + 1}.html"
            docs.append(self._page(file, snapshot, title if k == 0 else f"{title} (part {k + 1})", crumbs,
                                   "\n".join(parts), host, path, owner, f"{f.key}#docs{k}"))
        return docs

    def cc_topic_page(self, file: str, snapshot: str, t: TextFile) -> Doc:
        body_pars = paragraphs(t.text)
        body = "\n".join(flow(p) for p in body_pars[1:]) if len(body_pars) > 1 else t.text
        name = page_name(t.key)
        return self._page(file, snapshot, f"{t.title} — Python {self.py} documentation",
                          f"Python » {self.py} Documentation » The Python Language Reference »", body,
                          "docs.python.org", f"{self.py_short}/reference/{name}.html",
                          "the Python Software Foundation", t.key)

    def cc_text_page(self, file: str, snapshot: str, t: TextFile) -> Doc:
        name = page_name(t.key)
        body = "\n".join(flow(p) for p in paragraphs(t.text))
        return self._page(file, snapshot, t.title, f"Python » {self.py} Documentation »", body,
                          "docs.python.org", f"{self.py_short}/_static/{name}.html",
                          "the Python Software Foundation", t.key)

    def cc_code_page(self, file: str, snapshot: str, f: PyFile) -> Doc:
        """A Sphinx "viewcode" page: the module's source as the web shows it."""
        _, _, _, host, owner = _project(f)
        version = self.py if f.project == "cpython" else f.version
        path = f"{self.py_short if f.project == 'cpython' else 'en/' + version}/_modules/{f.path[:-3]}.html"
        return self._page(file, snapshot, f"{f.module} — {f.project} {version} documentation",
                          f"Source code for {f.module}", f.text.rstrip("\n"), host, path, owner, f"{f.key}#code")

    # ---- c4 ------------------------------------------------------------------------------------
    def c4_record(self, text: str, url: str) -> dict:
        day = self.date(dt.date(2019, 4, 18), dt.date(2019, 4, 26))
        return {"text": text, "meta": {"timestamp": f"{day:%Y-%m-%d}T{self.clock()}Z", "url": url,
                                       "language": "en", "source": "c4"}}

    def c4_pages(self, file: str, key: str, url: str, pars: Iterable[str], max_chars: int) -> list[Doc]:
        """C4 keeps only sentence-like lines of a page; long pages are cut into several pages."""
        keep = [flow(p) for p in pars if sentence_like(p)]
        docs, cur, size = [], [], 0
        for p in keep:
            if cur and size + len(p) > max_chars:
                docs.append(cur)
                cur, size = [], 0
            cur.append(p)
            size += len(p) + 1
        if cur:
            docs.append(cur)
        out = []
        for k, chunk in enumerate(docs):
            u = url if k == 0 else url.replace(".html", f"-{k + 1}.html")
            out.append(Doc(file, self.c4_record("\n".join(chunk), u), f"{key}#c4-{k}", {"url": u}))
        return out

    def c4_module_pages(self, file: str, f: PyFile, max_chars: int) -> list[Doc]:
        _, _, _, host, _ = _project(f)
        version = self.py_short if f.project == "cpython" else f"en/{f.version}"
        url = f"https://{host}/{version}/library/{f.module}.html"
        return self.c4_pages(file, f.key, url, (p for it in f.items for p in paragraphs(it.doc)), max_chars)

    def c4_text_pages(self, file: str, t: TextFile, max_chars: int) -> list[Doc]:
        section = "reference" if t.key.startswith("topic:") else "_static"
        url = f"https://docs.python.org/{self.py_short}/{section}/{page_name(t.key)}.html"
        return self.c4_pages(file, t.key, url, paragraphs(t.text), max_chars)

    # ---- wikipedia ------------------------------------------------------------------------------
    def wiki_record(self, title: str, text: str) -> dict:
        day = self.date(dt.date(2022, 1, 1), dt.date(2023, 3, 20))
        return {"text": text, "meta": {"title": title, "url": "https://en.wikipedia.org/wiki/" + title.replace(" ", "_"),
                                       "language": "en", "timestamp": f"{day:%Y%m%d}"}}

    def wiki_articles(self, file: str, f: PyFile, max_chars: int) -> list[Doc]:
        """An encyclopedia-style article per module: lead from the module docstring, a section per class."""
        docs = []
        for k, chunk in enumerate(chunk_items([i for i in f.items if i.depth <= 1], max_chars)):
            parts = []
            for it in chunk:
                if it.kind != "module":
                    parts.append(it.qualname)
                parts.extend(flow(p) for p in paragraphs(it.doc))
            title = f"{f.module} (Python module)" if k == 0 else f"{f.module}.{chunk[0].qualname}"
            docs.append(Doc(file, self.wiki_record(title, "\n\n".join(parts)), f"{f.key}#wiki{k}"))
        return docs

    # ---- stackexchange -------------------------------------------------------------------------
    def se_record(self, question: str, answers: list[str]) -> dict:
        text = "Q: " + question + "".join("\nA: " + a for a in answers)
        qid = self.unique(lambda: str(self.rng.randrange(100_000, 76_000_000)))
        day = self.date(dt.date(2009, 1, 1), dt.date(2023, 3, 1))
        score = max(-3, int(self.rng.paretovariate(1.2)) - 1)
        return {"text": text, "meta": {"language": "en", "url": f"https://stackoverflow.com/questions/{qid}",
                                       "timestamp": f"{day:%Y-%m-%d}", "source": "stackexchange",
                                       "question_score": str(score)}}

    def se_topic_thread(self, file: str, t: TextFile) -> Doc:
        """A help topic as a thread: heading and opening paragraph ask, the rest answers (1-3 posts)."""
        pars = [flow(p) for p in paragraphs(t.text)]
        head = [p for p in pars[1:] if not set(p) <= set("*=-~ ")]
        question = t.title + " " + (head[0] if head else "")
        rest = head[1:]
        n = min(len(rest), self.rng.randint(1, 3))
        answers = ["\n".join(rest[i * len(rest) // n : (i + 1) * len(rest) // n]) for i in range(n)] if n else []
        return Doc(file, self.se_record(question, answers), t.key)

    def se_module_threads(self, file: str, f: PyFile, max_chars: int) -> list[Doc]:
        """A thread per top-level class/function: signature + first paragraph ask, the rest answers."""
        groups: list[list[DocItem]] = []
        for it in f.items:
            if it.kind == "module":
                continue
            if it.depth == 0 or not groups:
                groups.append([it])
            else:
                groups[-1].append(it)
        docs = []
        for g in groups:
            for k, chunk in enumerate(chunk_items(g, max_chars)):
                first = chunk[0]
                pars = [flow(p) for p in paragraphs(first.doc)]
                question = short_signature(first, f.module) + " " + pars[0]
                answers = ["\n".join(pars[1:])] if len(pars) > 1 else []
                answers += [short_signature(it) + "\n" + "\n".join(flow(p) for p in paragraphs(it.doc)) for it in chunk[1:]]
                docs.append(Doc(file, self.se_record(question, answers), f"{f.key}#{first.qualname}#se{k}"))
        return docs

    # ---- arxiv ---------------------------------------------------------------------------------
    def arxiv_record(self, text: str) -> dict:
        day = self.date(dt.date(2007, 4, 1), dt.date(2023, 2, 28))
        yymm = f"{day:%y%m}"
        digits = 4 if day < dt.date(2015, 1, 1) else 5
        arxiv_id = self.unique(lambda: f"{yymm}.{self.rng.randrange(1, 10**digits):0{digits}d}")
        return {"text": text, "meta": {"timestamp": f"{day:%Y-%m-%d}T{self.clock()}", "yymm": yymm,
                                       "arxiv_id": arxiv_id, "language": "en",
                                       "url": f"https://arxiv.org/abs/{arxiv_id}", "source": "arxiv"}}

    def _latex_pars(self, doc: str) -> list[str]:
        out = []
        for p in paragraphs(doc):
            if is_prose(p):
                out.append(_latex_escape(" ".join(p.split())))
            else:
                out.append("\\begin{verbatim}\n" + p + "\n\\end{verbatim}")
        return out

    def arxiv_papers(self, file: str, f: PyFile, max_chars: int) -> list[Doc]:
        """The module's docstrings as a LaTeX body, the way RedPajama keeps arXiv text (from the first section)."""
        docs = []
        for k, chunk in enumerate(chunk_items(f.items, max_chars)):
            parts = []
            intro = [it for it in chunk if it.kind == "module"]
            if intro or k == 0:
                parts.append("\\section{Introduction}\\label{sec:intro}")
                for it in intro:
                    parts.extend(self._latex_pars(it.doc))
            for it in chunk:
                if it.kind == "module":
                    continue
                name = _latex_escape(it.qualname)
                level = "section" if it.depth == 0 else "subsection"
                label = re.sub(r"[^a-z0-9]+", "-", it.qualname.lower())
                parts.append(f"\\{level}{{\\texttt{{{name}}}}}\\label{{sec:{label}}}")
                parts.append("\\begin{verbatim}\n" + it.signature + "\n\\end{verbatim}")
                parts.extend(self._latex_pars(it.doc))
            docs.append(Doc(file, self.arxiv_record("\n\n".join(parts) + "\n"), f"{f.key}#arxiv{k}"))
        return docs

    # ---- book ----------------------------------------------------------------------------------
    def book_record(self, text: str, title: str, url: str) -> dict:
        return {"text": text, "meta": {"short_book_title": title, "publication_date": self.rng.randint(1991, 2023),
                                       "url": url}}

    def package_book(self, file: str, package: str, files: Sequence[PyFile], max_chars: int) -> tuple[Doc, list[PyFile]]:
        """A manual made of a package's docstrings, one chapter per module; returns the files it used."""
        repo, prefix, _, _, owner = _project(files[0])
        title = f"The {package.replace('/', '.')} Package"
        used, chapters, size = [], [], 0
        for f in files:
            body = []
            for it in f.items:
                if it.kind != "module":
                    body.append(short_signature(it, f.module if it.depth == 0 else ""))
                body.append(it.doc)
            text = "\n\n".join(body)
            if chapters and size + len(text) > max_chars:
                break
            chapters.append((f.module, text))
            used.append(f)
            size += len(text)
        contents = "\n".join(f"{_roman(i + 1)}. {name}" for i, (name, _) in enumerate(chapters))
        chapter_text = "\n\n\n".join(f"CHAPTER {_roman(i + 1)}. {name}\n\n{body}" for i, (name, body) in enumerate(chapters))
        text = f"{title.upper()}\n\nA Reader's Manual\n\nCONTENTS\n\n{contents}\n\n\n{chapter_text}\n"
        version = self.py if files[0].project == "cpython" else files[0].version
        url = f"https://github.com/{repo}/tree/v{version}/{prefix}{package}"
        return Doc(file, self.book_record(text, f"{title} by {owner}", url), f"book:{files[0].project}:{package}"), used

    def text_book(self, file: str, t: TextFile) -> Doc:
        url = f"https://github.com/python/cpython/tree/v{self.py}/Lib/idlelib"
        return Doc(file, self.book_record(t.text + "\n", f"{t.title} by the IDLE developers", url), t.key)

    # ---- github --------------------------------------------------------------------------------
    def github_record(self, f: PyFile, repo: str | None = None, text: str | None = None) -> dict:
        """RedPajama v1 github fields; the statistics are computed as its ``get_filecontent_stats`` does."""
        text = f.text if text is None else text
        default_repo, prefix, license_, _, _ = _project(f)
        lengths = [len(line) for line in text.splitlines()]
        return {"text": text, "meta": {
            "content_hash": hashlib.md5(text.encode("utf-8")).hexdigest(), "timestamp": "", "source": "github",
            "line_count": len(lengths), "max_line_length": max(lengths, default=0),
            "avg_line_length": sum(lengths) / len(lengths) if lengths else 0,
            "alnum_prop": sum(c.isalnum() for c in text) / len(text) if text else 0,
            "repo_name": repo or default_repo, "path": prefix + f.path, "license": license_}}

    def github_file(self, file: str, f: PyFile) -> Doc:
        return Doc(file, self.github_record(f), f"{f.key}#code", {"pyfile": f})
