"""What duplicates the sample plants, and how a near-copy is made.

A dedup tool is only testable against duplicates whose truth is known. The plan mirrors what
SlimPajama found in RedPajama: exact copies inside a source (GitHub forks, re-crawled pages), near
copies at graded word-edit rates, and copies *across* sources (Wikipedia pages inside CommonCrawl,
CommonCrawl pages inside C4, the same page in two CommonCrawl snapshots).
"""

from __future__ import annotations

import random
import re
import string
from dataclasses import dataclass

EDIT_RATES: tuple[float, ...] = (0.01, 0.05, 0.10, 0.30)

ARXIV, BOOK, C4, CC19, CC20, GITHUB, SE, WIKI = (
    "arxiv_sample.jsonl.zst", "book_sample.jsonl.zst", "c4_sample.jsonl.zst", "cc_2019-30_sample.jsonl.zst",
    "cc_2020-05_sample.jsonl.zst", "github_sample.jsonl.zst", "stackexchange_sample.jsonl.zst",
    "wikipedia_sample.jsonl.zst",
)


@dataclass(frozen=True)
class Plan:
    """``count`` originals drawn from ``src``, each copied ``copies`` times into ``dst``."""

    kind: str  # "exact" | "near" | "cross_source"
    variant: str  # exact: "copy"; near: "words"; cross_source: "whole" | "embedded" | "verbatim" | "recrawl"
    src: str
    dst: str
    count: int
    rate: float | None = None
    copies: int = 1


def default_plan() -> list[Plan]:
    """Counts at ``size=1.0``; :func:`scaled` keeps at least one of each line at any size."""
    plan = [
        Plan("exact", "copy", CC19, CC19, 2, copies=2), Plan("exact", "copy", CC19, CC19, 2),
        Plan("exact", "copy", CC20, CC20, 3), Plan("exact", "copy", C4, C4, 3),
        Plan("exact", "copy", GITHUB, GITHUB, 2, copies=2), Plan("exact", "copy", GITHUB, GITHUB, 2),
        Plan("exact", "copy", WIKI, WIKI, 2), Plan("exact", "copy", SE, SE, 2), Plan("exact", "copy", ARXIV, ARXIV, 1),
    ]
    per_rate = {CC19: 2, CC20: 1, C4: 2, GITHUB: 2, WIKI: 1, SE: 1}
    for rate in EDIT_RATES:
        plan += [Plan("near", "words", f, f, n, rate=rate) for f, n in per_rate.items()]
    plan += [Plan("near", "words", BOOK, BOOK, 1, rate=0.01),  # another edition of a book
             Plan("near", "words", ARXIV, ARXIV, 1, rate=0.05)]  # a revised arXiv version
    plan += [
        Plan("cross_source", "whole", WIKI, CC19, 1), Plan("cross_source", "whole", WIKI, CC20, 1),
        Plan("cross_source", "embedded", WIKI, CC19, 2), Plan("cross_source", "embedded", WIKI, CC20, 1),
        Plan("cross_source", "verbatim", CC20, C4, 5), Plan("cross_source", "verbatim", CC19, C4, 2),
        Plan("cross_source", "verbatim", CC19, CC20, 3), Plan("cross_source", "recrawl", CC19, CC20, 3),
    ]
    return plan


def scaled(plan: list[Plan], size: float) -> list[Plan]:
    return [Plan(p.kind, p.variant, p.src, p.dst, max(1, round(p.count * size)), p.rate, p.copies) for p in plan]


# --------------------------------------------------------------------------------------------------
# word edits

_TOKENS = re.compile(r"(\s+)")
_PUNCT = str.maketrans("", "", string.punctuation)


def _norm(word: str) -> str:
    return word.lower().translate(_PUNCT)


# StackExchange's "Q:"/"A:" post markers are structure, not words: a near-copy keeps them
_PROTECTED = frozenset({"Q:", "A:"})


def edit_words(text: str, rate: float, rng: random.Random) -> tuple[str, int, int]:
    """Edit ``round(rate * words)`` distinct word positions: substitute (1/2), delete (1/4), insert (1/4).

    Replacement and inserted words are other words of the same document, so the copy stays real
    text. Returns (new text, edits made, words in the original); the realised rate is their ratio.
    """
    tokens = _TOKENS.split(text)
    positions = [i for i in range(0, len(tokens), 2) if tokens[i]]
    n = len(positions)
    if n == 0:
        return text, 0, 0
    k = max(1, round(rate * n))
    editable = [i for i in positions if tokens[i] not in _PROTECTED]
    vocab = [tokens[i] for i in editable]
    edits = 0
    for i in sorted(rng.sample(editable, min(k, len(editable)))):
        op = rng.choices(("sub", "del", "ins"), weights=(2, 1, 1))[0]
        word = tokens[i]
        other = next((w for w in (rng.choice(vocab) for _ in range(20)) if _norm(w) != _norm(word)), None)
        if op == "del":
            tokens[i] = ""
            if i + 1 < len(tokens) and tokens[i + 1] == " ":
                tokens[i + 1] = ""
        elif other is None:
            continue
        elif op == "sub":
            tokens[i] = other
        else:
            tokens[i] = word + " " + other
        edits += 1
    return "".join(tokens), edits, n


# --------------------------------------------------------------------------------------------------
# cross-source wrappers (synthetic boilerplate of the kind mirror sites add around a Wikipedia page)

def embed_wiki(text: str, title: str, day: str) -> str:
    """A Wikipedia article as a mirror site serves it: navigation above, licence and links below."""
    slug = title.replace(" ", "_")
    head = f"{title}\nFrom Wikipedia, the free encyclopedia\nJump to navigation\nJump to search\n"
    foot = (f'\nRetrieved from "https://en.wikipedia.org/w/index.php?title={slug}"\n'
            f"This page was last edited on {day}.\n"
            "Text is available under the Creative Commons Attribution-ShareAlike License; "
            "additional terms may apply.\nPrivacy policy\nAbout Wikipedia\nDisclaimers\nContact Wikipedia\n"
            "Mobile view")
    return head + text + foot
