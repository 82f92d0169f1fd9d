"""The package's rooms and which way their imports point (DESIGN.md, "Dependencies point one way").

Every module of ``fieldguide/`` is read with ``ast`` (not imported): every ``import`` and
``from ... import`` counts, at module level or inside a function, relative ones resolved. From them
the module graph is built and these rules are checked:

1. no cycle among fieldguide modules;
2. no import points up. The rooms, lowest first:
   ``platform`` (with ``config``, ``errors``, ``names``, ``registry`` and the package ``__init__``)
   < ``models`` < ``curation`` < ``dashboards`` / ``plugins`` / ``loop`` / ``demo`` / ``suite`` < ``cli`` / ``api``;
   a module may import its own room or a lower one, and nothing imports ``fieldguide.cli``.
   ``api`` (the Python facade, ``fieldguide.open_project``) calls every step, like ``cli``; the one
   import that points up is the package ``__init__``'s lazy re-export of it (inside its module
   ``__getattr__``, so ``import fieldguide`` imports none of it);
3. ``fiftyone`` is imported only under ``fieldguide/platform/`` and ``fieldguide/plugins/``;
4. ``dashboards`` reads the warehouse only: of fieldguide it imports ``config``, ``errors``,
   ``platform.warehouse``, ``names`` (the signal, metric and curve names the writers use) and itself;
5. no module imports another module's private (``_name``) names: what two modules share is public
   and lives in a module named for it;
6. ``models``, ``curation``, ``loop`` and ``demo`` call no FiftyOne dataset method: they read the
   store with ``platform.samples.arrays`` and write it through ``platform.fields``.

Process boundaries are not imports: the FiftyOne plugin imports ``dashboards.server`` (same room,
allowed), and ``dashboards/server.py`` starts ``python -m fieldguide.cli dashboard`` in a
subprocess. That runs the CLI in another process, the way a user would from a shell; it does not
make ``dashboards`` depend on ``cli`` at import time, so it is allowed and not checked here.

Each failure lists the offending imports as ``file:line``.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "fieldguide"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

# Room of each top-level part of the package; the number is its height.
ROOMS: dict[str, int] = {
    "": 0,  # fieldguide/__init__.py
    "platform": 0,
    "config": 0,
    "errors": 0,
    "names": 0,  # signal, metric and curve names: what writers write and readers read
    "registry": 0,
    "models": 1,
    "curation": 2,
    "dashboards": 3,
    "plugins": 3,
    "loop": 3,
    "demo": 3,
    "suite": 3,  # the benchmark suite: runs platform, models and curation steps side by side, like demo
    "cli": 4,
    "api": 4,  # the Python facade: a method per CLI verb; the package __init__ re-exports it lazily
}
#: the one import allowed to point up: ``fieldguide/__init__.py``'s lazy ``__getattr__`` re-export
LAZY_REEXPORT = ("fieldguide", "fieldguide.api")
FIFTYONE_ROOMS = {"platform", "plugins"}


@dataclass(frozen=True)
class Import:
    source: str  # importing module, dotted
    target: str  # imported module, dotted (a fieldguide module when internal)
    where: str  # file:line
    name: str = ""  # the name taken by ``from target import name``, when not a module

    def __str__(self) -> str:
        return f"{self.where}: {self.source} -> {self.target}"


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules(root: Path = ROOT) -> dict[str, Path]:
    return {_module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(modules: dict[str, Path], root: Path = ROOT) -> list[Import]:
    """Every import of every module; internal targets resolved to the most specific module."""
    found: list[Import] = []
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        package = name if is_package else name.rpartition(".")[0]
        rel = path.relative_to(root.parent)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            where = f"{rel}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Import):
                for alias in node.names:
                    found.append(Import(name, alias.name, where))
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base_parts = package.split(".")
                    if node.level > 1:
                        base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                    base = ".".join(base_parts)
                    base = f"{base}.{node.module}" if node.module else base
                else:
                    base = node.module or ""
                for alias in node.names:
                    candidate = f"{base}.{alias.name}"
                    if candidate in modules:
                        found.append(Import(name, candidate, where))
                    else:
                        found.append(Import(name, base, where, alias.name))
    return found


def _internal(imports: list[Import], modules: dict[str, Path]) -> list[Import]:
    return [i for i in imports if i.target in modules]


def _cycles(edges: list[Import]) -> list[list[str]]:
    """Strongly connected components with more than one module, or a module importing itself."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.source, set()).add(e.target)
        graph.setdefault(e.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan; the graph is small, recursion is fine
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def test_the_walk_resolves_imports_and_finds_cycles(tmp_path):
    """The checks below can fail: on a tiny package with a relative import, an import inside a
    function, an import that points up and a cycle, the walk reports each of them."""
    pkg = tmp_path / PACKAGE
    for name, text in {
        "__init__.py": "",
        "cli.py": "",
        "platform/__init__.py": "",
        "platform/store.py": "from . import lock\n",
        "platform/lock.py": "def f():\n    from fieldguide.models import train\n",
        "models/__init__.py": "",
        "models/train.py": "from ..platform.store import x\nfrom fieldguide.cli import _main\n",
    }.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text)
    modules = _modules(pkg)
    edges = {(e.source, e.target, e.where, e.name) for e in _internal(_imports(modules, pkg), modules)}
    assert edges == {
        ("fieldguide.platform.store", "fieldguide.platform.lock", "fieldguide/platform/store.py:1", ""),
        ("fieldguide.platform.lock", "fieldguide.models.train", "fieldguide/platform/lock.py:2", ""),
        ("fieldguide.models.train", "fieldguide.platform.store", "fieldguide/models/train.py:1", "x"),
        ("fieldguide.models.train", "fieldguide.cli", "fieldguide/models/train.py:2", "_main"),
    }
    assert _cycles(_internal(_imports(modules, pkg), modules)) == [
        ["fieldguide.models.train", "fieldguide.platform.lock", "fieldguide.platform.store"]]


def test_the_walk_sees_the_package():
    modules = _modules()
    assert "fieldguide.cli" in modules and "fieldguide.platform.store" in modules
    edges = _internal(_imports(modules), modules)
    # imports inside functions count: cli (its verb modules) imports its steps lazily
    assert any(_room(e.source) == "cli" and e.target == "fieldguide.models.train" for e in edges)
    assert all(_room(m) in ROOMS for m in modules), sorted({_room(m) for m in modules} - set(ROOMS))


def test_no_import_cycle():
    modules = _modules()
    edges = _internal(_imports(modules), modules)
    cycles = _cycles(edges)
    lines = []
    for component in cycles:
        members = set(component)
        lines.append("cycle: " + ", ".join(component))
        lines += [f"  {e}" for e in edges if e.source in members and e.target in members]
    assert not cycles, "import cycles among fieldguide modules:\n" + "\n".join(lines)


def test_imports_point_down():
    modules = _modules()
    edges = _internal(_imports(modules), modules)
    up = [
        e
        for e in edges
        if e.target == "fieldguide.cli"
        or (ROOMS[_room(e.target)] > ROOMS[_room(e.source)] and (e.source, e.target) != LAZY_REEXPORT)
    ]
    assert not up, (
        "imports that point up (platform < models < curation < dashboards/plugins/loop/demo/suite < cli/api;"
        " nothing imports cli):\n" + "\n".join(f"  {e}" for e in up)
    )


def test_fiftyone_only_in_platform_and_plugins():
    modules = _modules()
    outside = [
        i
        for i in _imports(modules)
        if (i.target == "fiftyone" or i.target.startswith("fiftyone."))
        and _room(i.source) not in FIFTYONE_ROOMS
    ]
    assert not outside, "fiftyone imported outside platform/ and plugins/:\n" + "\n".join(
        f"  {i}" for i in outside
    )


DASHBOARDS_MAY_IMPORT = {"fieldguide.config", "fieldguide.errors", "fieldguide.names", "fieldguide.platform.warehouse"}


def test_dashboards_read_the_warehouse_only():
    modules = _modules()
    edges = _internal(_imports(modules), modules)
    other = [
        e
        for e in edges
        if _room(e.source) == "dashboards"
        and _room(e.target) != "dashboards"
        and e.target not in DASHBOARDS_MAY_IMPORT
    ]
    assert not other, "dashboards import more than the warehouse:\n" + "\n".join(f"  {e}" for e in other)


def test_no_private_names_across_modules():
    modules = _modules()
    private = [
        i
        for i in _internal(_imports(modules), modules)
        if i.name.startswith("_") and not i.name.startswith("__") and i.target != i.source
    ]
    assert not private, "private names imported from another module:\n" + "\n".join(
        f"  {i} ({i.name})" for i in private
    )


# ---- 6. models/, curation/, the loop and the demo read and write the store through platform/ --------
#: FiftyOne dataset / view methods; ``values`` and ``exists`` count only with an argument (a
#: dict's ``values()``, a path's ``exists()`` take none)
DATASET_METHODS = {
    "values", "exists", "match", "match_tags", "select", "select_by", "exclude", "limit", "sort_by",
    "tag_samples", "untag_samples", "count_sample_tags", "set_values", "set_field", "add_sample_field",
    "has_sample_field", "get_field_schema", "delete_sample_field", "add_samples", "delete_samples",
    "compute_metadata", "load_saved_view", "save_view", "has_saved_view", "list_saved_views",
    "count_values", "distinct", "aggregate", "iter_samples", "reload",
}
NEEDS_ARGUMENT = {"values", "exists"}
THROUGH_PLATFORM_ROOMS = {"models", "curation", "loop", "demo"}


def _dataset_method_calls(path: Path, rel: str) -> list[str]:
    """``file:line: receiver.method(...)`` for each call of a :data:`DATASET_METHODS` name on
    something other than an imported module (``re.match``, ``np.select`` and the like)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    modules = {(a.asname or a.name).split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
               for a in node.names}
    modules |= {a.asname or a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for a in node.names}
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        name, receiver = node.func.attr, node.func.value
        if name not in DATASET_METHODS or (isinstance(receiver, ast.Name) and receiver.id in modules):
            continue
        if name in NEEDS_ARGUMENT and not (node.args or node.keywords):
            continue
        found.append(f"{rel}:{node.lineno}: {ast.unparse(node.func)}(...)")
    return sorted(found)


def test_the_dataset_method_check_finds_calls_and_leaves_other_objects(tmp_path):
    path = tmp_path / "m.py"
    path.write_text(
        "import re\nimport numpy as np\nfrom fieldguide.platform import samples\n"
        "def f(ds, counts, p, df):\n"
        "    ids = ds.values('id')\n"
        "    ds.match_tags('train').select(ids).tag_samples('x')\n"
        "    store.dataset(p).set_values('f', {})\n"
        "    sum(counts.values()), p.exists(), df.values, re.match('a', 'b'), np.select([], [])\n"
        "    samples.arrays(ds, ['filepath'], tags='train')\n"
    )
    assert set(_dataset_method_calls(path, "m.py")) == {
        "m.py:5: ds.values(...)",
        "m.py:6: ds.match_tags('train').select(ids).tag_samples(...)",
        "m.py:6: ds.match_tags('train').select(...)",
        "m.py:6: ds.match_tags(...)",
        "m.py:7: store.dataset(p).set_values(...)",
    }


def test_models_and_curation_call_no_dataset_method():
    calls = [
        call
        for name, path in _modules().items()
        if _room(name) in THROUGH_PLATFORM_ROOMS
        for call in _dataset_method_calls(path, str(path.relative_to(ROOT.parent)))
    ]
    assert not calls, (
        "FiftyOne dataset methods called outside platform/ (read with platform.samples.arrays, write with "
        "platform.fields):\n" + "\n".join(f"  {c}" for c in calls)
    )
