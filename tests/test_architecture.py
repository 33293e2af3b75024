"""The architecture of slimpipe/, measured with ``ast`` (nothing is imported), against issue #22's rules:

1. no import cycle among slimpipe's modules, counting every ``import``/``from … import`` anywhere in a file
   (inside functions and under ``if TYPE_CHECKING:`` too: a deferred import is still an arrow);
2. no Ray task plumbing (``ray.remote/get/put/wait/cancel``, ``@ray.remote``, ``x.remote(…)``) outside
   ``slimpipe/runtime/`` and ``slimpipe/engine.py``;
3. no local-vs-remote branch outside ``slimpipe/storage`` (no ``is_remote`` anywhere else);
4. no library module imports a click ``command`` module (only ``*/command.py``, ``cli.py`` and
   ``options.py`` may).

Each rule has an allow-list below: the violations that remained when it was last measured (module names and
counts, no line numbers). A test fails on any violation not in its list AND on a listed one that is gone,
so the lists can only shrink: when you remove a violation, remove (or lower) its entry.

``python tests/test_architecture.py [ROOT]`` prints every rule's violations and the 10 biggest functions of
ROOT/slimpipe (default: this checkout), e.g. ``python tests/test_architecture.py /work/wt-base`` for the code
before the #22 refactor; ``--allow-lists`` prints the allow-lists as they would be written today.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------- remaining #22 work
# Import cycles: each group is a set of modules allowed to form (part of) one strongly connected component.
# A current cycle must lie inside one group; every module named here must still be in a cycle.
ALLOWED_CYCLES: list[set[str]] = [
]
# Ray task plumbing outside slimpipe.runtime and slimpipe.engine: module -> number of calls.
ALLOWED_RAY_CALLS: dict[str, int] = {
}
# Uses of is_remote outside slimpipe.storage: module -> number of uses.
ALLOWED_IS_REMOTE: dict[str, int] = {
}
# Imports of a click command module from a module that is not a command, cli or options module:
# module -> number of such imports.
ALLOWED_COMMAND_IMPORTS: dict[str, int] = {
    "slimpipe.demo": 4,  # the demo command runs the other commands' click commands in-process
    "slimpipe.sample": 1,  # the package re-exports its click command
}
# --------------------------------------------------------------------------- end of remaining #22 work

RAY_TASK_CALLS = {"remote", "get", "put", "wait", "cancel"}
RAY_HOMES = ("slimpipe.runtime", "slimpipe.engine")
STORAGE_HOME = "slimpipe.storage"
COMMAND_IMPORTERS_LAST = {"command", "cli", "options"}


@dataclass
class Module:
    name: str
    path: Path
    is_package: bool
    tree: ast.Module
    imports: list[str] = field(default_factory=list)  # resolved internal targets, one per import statement target


def _under(name: str, home: str) -> bool:
    return name == home or name.startswith(home + ".")


def load(root: Path) -> dict[str, Module]:
    """Every module of ROOT/slimpipe, parsed."""
    pkg = root / "slimpipe"
    mods: dict[str, Module] = {}
    for path in sorted(pkg.rglob("*.py")):
        rel = path.relative_to(root).with_suffix("")
        parts = list(rel.parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        name = ".".join(parts)
        mods[name] = Module(name, path, is_package, ast.parse(path.read_text(encoding="utf-8"), str(path)))
    for mod in mods.values():
        mod.imports = _imports(mod, mods)
    return mods


def _imports(mod: Module, mods: dict[str, Module]) -> list[str]:
    """The slimpipe modules ``mod`` imports, from every import statement in the file (any depth)."""
    out: list[str] = []
    package = mod.name if mod.is_package else mod.name.rpartition(".")[0]
    for node in ast.walk(mod.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "slimpipe":
                    out.append(_existing(alias.name, mods))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base.split(".")[0] != "slimpipe":
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.append(sub if sub in mods else _existing(base, mods))
    return [m for m in out if m and m != mod.name]


def _existing(name: str, mods: dict[str, Module]) -> str:
    """``name`` or its closest parent that is a module of the tree."""
    parts = name.split(".")
    while parts and ".".join(parts) not in mods:
        parts.pop()
    return ".".join(parts)


# --------------------------------------------------------------------------- rule 1: cycles
def cycles(mods: dict[str, Module]) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    graph = {m: sorted(set(mod.imports)) for m, mod in mods.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    comps: list[set[str]] = []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(graph[start]))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, it = work[-1]
            for nxt in it:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(graph.get(nxt, []))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = set()
                    while True:
                        x = stack.pop()
                        on_stack.discard(x)
                        comp.add(x)
                        if x == node:
                            break
                    if len(comp) > 1:
                        comps.append(comp)
    return sorted(comps, key=lambda c: sorted(c))


# --------------------------------------------------------------------------- rule 2: Ray calls
def ray_calls(mod: Module) -> int:
    """Ray task plumbing in one module: calls of ray.remote/get/put/wait/cancel (however ``ray`` or those
    names were imported), ``@ray.remote`` used bare as a decorator, and ``x.remote(…)`` submissions."""
    ray_names: set[str] = set()  # names bound to the ray module
    func_names: set[str] = set()  # names bound to ray.remote/get/put/wait/cancel
    for node in ast.walk(mod.tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "ray":
                    ray_names.add(a.asname or "ray")
        elif isinstance(node, ast.ImportFrom) and node.module == "ray" and not node.level:
            for a in node.names:
                if a.name in RAY_TASK_CALLS:
                    func_names.add(a.asname or a.name)

    def is_ray_func(expr: ast.AST) -> bool:
        if isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name):
            return expr.value.id in ray_names and expr.attr in RAY_TASK_CALLS
        return isinstance(expr, ast.Name) and expr.id in func_names

    n = 0
    for node in ast.walk(mod.tree):
        if isinstance(node, ast.Call):
            if is_ray_func(node.func):
                n += 1
            elif isinstance(node.func, ast.Attribute) and node.func.attr == "remote":
                n += 1  # f.remote(...), f.options(...).remote(...), actor.method.remote(...)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            n += sum(1 for d in node.decorator_list if is_ray_func(d))  # bare @ray.remote
    return n


# --------------------------------------------------------------------------- rule 3: is_remote
def is_remote_uses(mod: Module) -> int:
    """Uses of ``is_remote``: ``x.is_remote`` or a name bound to it (``from … import is_remote [as y]``)."""
    names = {"is_remote"}
    for node in ast.walk(mod.tree):
        if isinstance(node, ast.ImportFrom):
            names |= {a.asname for a in node.names if a.name == "is_remote" and a.asname}
    n = 0
    for node in ast.walk(mod.tree):
        if isinstance(node, ast.Attribute) and node.attr == "is_remote":
            n += 1
        elif isinstance(node, ast.Name) and node.id in names:
            n += 1
    return n


# --------------------------------------------------------------------------- rule 4: command imports
def command_imports(mod: Module) -> int:
    """Imports of a ``*.command`` module by a module that is not itself a command, cli or options module."""
    if mod.name.rsplit(".", 1)[-1] in COMMAND_IMPORTERS_LAST:
        return 0
    return sum(1 for target in mod.imports if target.rsplit(".", 1)[-1] == "command")


# --------------------------------------------------------------------------- measures
def measure(root: Path) -> dict:
    mods = load(root)
    ray = {m: c for m, mod in mods.items() if not any(_under(m, h) for h in RAY_HOMES) and (c := ray_calls(mod))}
    remote = {m: c for m, mod in mods.items() if not _under(m, STORAGE_HOME) and (c := is_remote_uses(mod))}
    commands = {m: c for m, mod in mods.items() if (c := command_imports(mod))}
    return {"modules": mods, "cycles": cycles(mods), "ray": ray, "is_remote": remote, "command_imports": commands}


def biggest_functions(mods: dict[str, Module], n: int = 10) -> list[tuple[int, str]]:
    """(lines, module:Qualified.name) of the n longest functions (def line to last line, nested ones too)."""
    out: list[tuple[int, str]] = []

    def visit(node: ast.AST, mod: str, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                q = f"{prefix}{child.name}"
                out.append((child.end_lineno - child.lineno + 1, f"{mod}:{q}"))
                visit(child, mod, q + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, mod, f"{prefix}{child.name}.")
            else:
                visit(child, mod, prefix)

    for name, mod in mods.items():
        visit(mod.tree, name, "")
    return sorted(out, key=lambda t: (-t[0], t[1]))[:n]


def _ratchet(current: dict[str, int], allowed: dict[str, int], what: str) -> list[str]:
    problems = []
    for m, c in sorted(current.items()):
        if c > allowed.get(m, 0):
            problems.append(f"NEW: {m} has {c} {what} (allowed {allowed.get(m, 0)})")
    for m, c in sorted(allowed.items()):
        if current.get(m, 0) < c:
            problems.append(f"GONE: {m} has {current.get(m, 0)} {what}, the allow-list says {c}: lower or "
                            f"remove its entry (the list can only shrink)")
    return problems


def _cycle_problems(found: list[set[str]], allowed: list[set[str]]) -> list[str]:
    problems = [f"NEW: import cycle {sorted(c)} is not inside one allowed group"
                for c in found if not any(c <= g for g in allowed)]
    in_cycle = set().union(*found) if found else set()
    for g in allowed:
        if gone := sorted(g - in_cycle):
            problems.append(f"GONE: {gone} no longer in any import cycle: remove from ALLOWED_CYCLES")
    return problems


# --------------------------------------------------------------------------- tests
_MEASURED: dict | None = None


def _measured() -> dict:
    global _MEASURED
    if _MEASURED is None:
        _MEASURED = measure(ROOT)
    return _MEASURED


def test_no_new_import_cycle() -> None:
    problems = _cycle_problems(_measured()["cycles"], ALLOWED_CYCLES)
    assert not problems, "\n".join(problems)


def test_no_new_ray_plumbing_outside_runtime() -> None:
    problems = _ratchet(_measured()["ray"], ALLOWED_RAY_CALLS, "Ray task calls outside slimpipe.runtime/engine")
    assert not problems, "\n".join(problems)


def test_no_new_is_remote_outside_storage() -> None:
    problems = _ratchet(_measured()["is_remote"], ALLOWED_IS_REMOTE, "uses of is_remote outside slimpipe.storage")
    assert not problems, "\n".join(problems)


def test_no_new_command_module_import_in_library_code() -> None:
    problems = _ratchet(_measured()["command_imports"], ALLOWED_COMMAND_IMPORTS, "imports of a command module")
    assert not problems, "\n".join(problems)


def test_the_measures_see_what_they_look_for(tmp_path: Path) -> None:
    """Each rule's measure finds a planted violation (so a clean result is not a blind one)."""
    pkg = tmp_path / "slimpipe"
    (pkg / "a").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "__init__.py").write_text("")
    (pkg / "a" / "command.py").write_text("def parse_count(x):\n    return x\n")
    (pkg / "a" / "lib.py").write_text(
        "import ray as r\nfrom ray import get as fetch\nfrom slimpipe.storage import is_remote as far\n"
        "@r.remote\ndef f():\n    from slimpipe.a.command import parse_count\n    return far('x')\n"
        "def g():\n    from . import other\n    return fetch(f.options(num_cpus=1).remote()), r.put(1)\n")
    (pkg / "a" / "other.py").write_text("def h():\n    from .lib import g\n    return g\n")
    (pkg / "storage.py").write_text("def is_remote(p):\n    return '://' in p\n")
    m = measure(tmp_path)
    assert m["cycles"] == [{"slimpipe.a.lib", "slimpipe.a.other"}]
    assert m["ray"] == {"slimpipe.a.lib": 4}  # @r.remote, fetch(...), .remote(), r.put(...)
    assert m["is_remote"] == {"slimpipe.a.lib": 1}
    assert m["command_imports"] == {"slimpipe.a.lib": 1}
    assert _ratchet({"x": 2}, {"x": 1}, "v") and _ratchet({}, {"x": 1}, "v") and not _ratchet({"x": 1}, {"x": 1}, "v")
    assert _cycle_problems([{"a", "b"}], []) and _cycle_problems([], [{"a", "b"}])
    assert _cycle_problems([{"a", "b"}], [{"a", "b", "c"}]) == [
        "GONE: ['c'] no longer in any import cycle: remove from ALLOWED_CYCLES"]


# --------------------------------------------------------------------------- CLI
def report(root: Path) -> str:
    m = measure(root)
    mods = m["modules"]
    lines = [f"slimpipe architecture of {root} ({len(mods)} modules, "
             f"{sum(len(x.path.read_text(encoding='utf-8').splitlines()) for x in mods.values())} lines)"]
    internal = deferred = 0
    for mod in mods.values():
        top = {id(n) for n in mod.tree.body if isinstance(n, (ast.Import, ast.ImportFrom))}
        for node in ast.walk(mod.tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and _imports_slimpipe(node):
                internal += 1
                deferred += id(node) not in top
    lines.append(f"internal import statements: {internal}, of which not at module top level: {deferred} "
                 f"({100 * deferred / max(internal, 1):.0f}%)")
    lines.append(f"\n1. import cycles (strongly connected components): {len(m['cycles'])}")
    lines += [f"   {len(c)} modules: {', '.join(sorted(c))}" for c in m["cycles"]]
    for key, title in (("ray", "2. Ray task calls outside slimpipe.runtime and slimpipe.engine"),
                       ("is_remote", "3. uses of is_remote outside slimpipe.storage"),
                       ("command_imports", "4. imports of a command module by library code")):
        lines.append(f"\n{title}: {sum(m[key].values())} in {len(m[key])} modules")
        lines += [f"   {c:4d}  {mod}" for mod, c in sorted(m[key].items(), key=lambda t: (-t[1], t[0]))]
    lines.append("\n5. the 10 biggest functions (lines)")
    lines += [f"   {n:4d}  {q}" for n, q in biggest_functions(mods)]
    return "\n".join(lines)


def _imports_slimpipe(node: ast.Import | ast.ImportFrom) -> bool:
    if isinstance(node, ast.Import):
        return any(a.name.split(".")[0] == "slimpipe" for a in node.names)
    return bool(node.level) or (node.module or "").split(".")[0] == "slimpipe"


def allow_lists(root: Path) -> str:
    """The allow-lists as they would be written for ROOT today (to paste above when the list shrinks)."""
    m = measure(root)
    cyc = "".join(f"    {sorted(c)!r},\n".replace("[", "{").replace("]", "}") for c in m["cycles"])
    out = [f"ALLOWED_CYCLES: list[set[str]] = [\n{cyc}]"]
    for key, name in (("ray", "ALLOWED_RAY_CALLS"), ("is_remote", "ALLOWED_IS_REMOTE"),
                      ("command_imports", "ALLOWED_COMMAND_IMPORTS")):
        body = "".join(f'    "{mod}": {c},\n' for mod, c in sorted(m[key].items()))
        out.append(f"{name}: dict[str, int] = {{\n{body}}}")
    return "\n".join(out)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--allow-lists"]
    where = Path(args[0]).resolve() if args else ROOT
    print(allow_lists(where) if "--allow-lists" in sys.argv else report(where))
