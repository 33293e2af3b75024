"""Command-line options defined once: as fields of an options dataclass, with the ranges they take.

**Options from dataclasses.** A command's options are the fields of one frozen dataclass; each field
carries its flags, help, click type/range, ``is_flag``, ``multiple``, ``envvar`` in its metadata
(:func:`option`, :func:`argument`), and its default is the dataclass default, written once. A field
made with :func:`group` embeds another options dataclass, so options shared by several commands are
written once (``slimpajama`` embeds ``dedup``'s :class:`~slimpipe.dedup.command.DedupOptions` and
``evalset``'s draw options). :func:`command_options` turns the dataclass into click parameters (in field
order, groups inline) and hands the command one instance::

    @dataclass(frozen=True, kw_only=True)
    class SampleOptions:
        output: str = option("-o", "--output", required=True, help="Folder to write.")
        seed: int = option("--seed", default=0, show_default=True, type=int, help="Same seed, same bytes.")

    @click.command("sample")
    @command_options(SampleOptions)
    def sample_command(opts: SampleOptions) -> None: ...

Library code never sees these classes (they live in the ``command.py`` modules); a command converts its
options to the library's own dataclass (``DedupParams``, ``PipelineOptions``, ``EvalSetOptions``...).

**Ranges.** A value out of range is a click usage error: one line naming the option and its range, exit
code 2, before any work (no input listed, no OUT claimed, no Ray started). Every numeric option of
``dedup``, ``slimpajama``, ``evalset`` and ``mix`` uses one of these (tests/test_option_validation.py
checks that none is a bare ``int`` or ``float``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import click

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

_KEY = "slimpipe.cli"  # the field metadata key: ("option" | "argument", decls, click keywords) or ("group", cls)


def option(*decls: str, default: Any = dataclasses.MISSING, help: str | None = None,
           type: Any = None, is_flag: bool = False, multiple: bool = False, envvar: str | None = None,
           **click_kw: Any) -> Any:
    """A dataclass field that is the click option ``decls`` (the parameter name is the field's name).

    ``default`` is both the dataclass default and click's; a required option (``required=True``) has none.
    Other keywords (``required``, ``show_default``, ``callback``...) go to :func:`click.option` as given.
    """
    kw = dict(click_kw)
    for name, value, unset in (("help", help, None), ("type", type, None), ("is_flag", is_flag, False),
                               ("multiple", multiple, False), ("envvar", envvar, None)):
        if value is not unset:
            kw[name] = value
    if default is not dataclasses.MISSING:
        kw["default"] = default
    elif is_flag:
        default = False
    elif multiple:
        default = ()
    elif not kw.get("required"):
        default = None
    return dataclasses.field(default=default, metadata={_KEY: ("option", decls, kw)})


def argument(**click_kw: Any) -> Any:
    """A dataclass field that is a click argument (``nargs``, ``required``, ``type``, ``callback``...)."""
    kw = dict(click_kw)
    default: Any = dataclasses.MISSING if kw.get("required", True) else kw.get("default")
    return dataclasses.field(default=default, metadata={_KEY: ("argument", (), kw)})


def group(cls: type) -> Any:
    """A dataclass field holding another options dataclass whose options are inlined here."""
    return dataclasses.field(default=dataclasses.MISSING, metadata={_KEY: ("group", cls)})


def _fields(cls: type) -> Iterator[dataclasses.Field]:
    for f in dataclasses.fields(cls):
        if _KEY in f.metadata:
            yield f


def click_params(cls: type) -> list[click.Parameter]:
    """The click parameters of ``cls``'s fields, in field order, groups inlined."""
    out: list[click.Parameter] = []
    for f in _fields(cls):
        kind, *spec = f.metadata[_KEY]
        if kind == "group":
            out += click_params(spec[0])
        elif kind == "option":
            decls, kw = spec
            out.append(click.Option([*decls, f.name], **kw))
        else:
            out.append(click.Argument([f.name], **spec[1]))
    return out


def from_values(cls: type[T], values: dict[str, Any]) -> T:
    """Build ``cls`` (and its groups) from click's parsed values, consuming the ones it uses."""
    kw: dict[str, Any] = {}
    for f in _fields(cls):
        kind, *spec = f.metadata[_KEY]
        kw[f.name] = from_values(spec[0], values) if kind == "group" else values.pop(f.name)
    return cls(**kw)


def values_of(opts: Any) -> dict[str, Any]:
    """The options of ``opts`` as one flat dict (groups inlined), the way click named them."""
    out: dict[str, Any] = {}
    for f in _fields(type(opts)):
        value = getattr(opts, f.name)
        if f.metadata[_KEY][0] == "group":
            out.update(values_of(value))
        else:
            out[f.name] = value
    return out


def command_options(cls: type, name: str = "opts") -> Callable[[F], F]:
    """Decorator: add ``cls``'s options to a click command and pass it one ``cls`` instance as ``name``.

    Apply it below ``@click.command``; parameters declared by other decorators are kept (after these).
    """

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(**values: Any) -> Any:
            values[name] = from_values(cls, values)
            return fn(**values)

        below = getattr(fn, "__click_params__", [])  # click keeps them last first, and reverses at @command
        params = click_params(cls)
        seen: set[str | None] = set()
        for p in [*params, *below]:  # a group embedded twice, or two groups sharing a name, would silently share a value
            if p.name in seen:
                raise TypeError(f"{cls.__name__}: option name {p.name!r} defined twice")
            seen.add(p.name)
        wrapper.__click_params__ = [*below, *reversed(params)]  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate


class FiniteFloatRange(click.FloatRange):
    """A float range that also refuses ``nan`` and ``inf`` (which compare false with any bound)."""

    def convert(self, value, param, ctx) -> float:
        out = super().convert(value, param, ctx)
        if not math.isfinite(out):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return out


#: A count of things that must exist: permutations, bands, rows, partitions, chunks, records...
POSITIVE_INT = click.IntRange(min=1)
#: A floor or cap where 0 means "none": --min-chars, --max-edges-in-memory.
NON_NEGATIVE_INT = click.IntRange(min=0)
#: A seed: xxhash and numpy take 0 .. 2**64 - 1.
SEED = click.IntRange(min=0, max=2**64 - 1)
#: A Jaccard threshold or a share that can be neither 0 nor 1.
OPEN_FRACTION = FiniteFloatRange(min=0.0, max=1.0, min_open=True, max_open=True)
#: A share that may be 0 but not 1 (--holdout-fraction 0: no holdout).
FRACTION_BELOW_ONE = FiniteFloatRange(min=0.0, max=1.0, max_open=True)


def megabytes(min_mb: float = 1 / 1024) -> FiniteFloatRange:
    """A size in MiB, at least ``min_mb`` (1 KiB by default: a size of 0 bytes would divide by zero)."""
    return FiniteFloatRange(min=min_mb)
