"""The package's layers are its folders, and imports run one way: down, never in a circle.

The layers, bottom to top: the ground floor (the modules directly in ``constyle_plugin/``: errors,
files, runs, patches, ...), then the folders in :data:`ORDER` (``adapters/``, installed as
``constyle_plugin.adapters``, counts with the core), then the command line (``constyle_plugin/cli.py``
and the package's ``__init__``, which installs the integrations). A module's layer is the folder it
lives in, so a new module is checked where it is put, and a new folder must be given its place here.

Read from the source (``ast``), nothing imported: every ``import`` of a ``constyle_plugin`` module,
at module level or inside a function (``if TYPE_CHECKING:`` blocks are not imports at run time).
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set, Tuple

ROOT = Path(__file__).resolve().parents[next(i for i, p in enumerate(Path(__file__).resolve().parents)
                                             if (p / "setup.cfg").is_file())]
PACKAGE = "constyle_plugin"
ORDER = ("core", "archs", "data", "training", "tools", "integrations")  # the folders, bottom to top
GROUND, TOP = "ground floor", "command line"
RANK = {GROUND: 0, **{folder: i + 1 for i, folder in enumerate(ORDER)}, TOP: len(ORDER) + 1}
TOP_MODULES = {PACKAGE, f"{PACKAGE}.cli"}


def _modules() -> Dict[str, Path]:
    """Module name -> file, for the package and ``adapters/`` (installed as ``constyle_plugin.adapters``)."""
    found = {}
    for base, prefix in ((ROOT / PACKAGE, PACKAGE), (ROOT / "adapters", f"{PACKAGE}.adapters")):
        for path in base.rglob("*.py"):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([prefix, *parts])] = path
    return found


MODULES = _modules()


class _Imports(ast.NodeVisitor):
    """(imported module, names taken from it, line, at module level) of one module's source."""

    def __init__(self, module: str, is_package: bool) -> None:
        self.package = module if is_package else module.rpartition(".")[0]
        self.depth = 0
        self.found: List[Tuple[str, List[str], int, bool]] = []

    def _add(self, target: str, names: List[str], node: ast.AST) -> None:
        if target == PACKAGE or target.startswith(PACKAGE + "."):
            self.found.append((target, names, node.lineno, self.depth == 0))

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
                isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def _nested(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _nested

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, [], node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".")
            base = base[:len(base) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        names = [a.name for a in node.names]
        submodules = [n for n in names if f"{target}.{n}" in MODULES]
        for name in submodules:  # ``from . import archs``: the submodule itself
            self._add(f"{target}.{name}", [], node)
        rest = [n for n in names if n not in submodules]
        if rest or not submodules:
            self._add(target, rest, node)


def _imports() -> Dict[str, List[Tuple[str, List[str], int, bool]]]:
    result = {}
    for module, path in MODULES.items():
        visitor = _Imports(module, path.name == "__init__.py")
        visitor.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        result[module] = visitor.found
    return result


IMPORTS = _imports()


def _module_of(target: str) -> str:
    """The module an import names (``constyle_plugin.core.unet.wrap_unet`` -> ``constyle_plugin.core.unet``)."""
    while target not in MODULES and "." in target:
        target = target.rpartition(".")[0]
    return target


def _layer(module: str) -> str:
    if module in TOP_MODULES:
        return TOP
    parts = module.split(".")
    if len(parts) == 2 and not (ROOT / PACKAGE / parts[1]).is_dir() and parts[1] != "adapters":
        return GROUND
    return "core" if parts[1] == "adapters" else parts[1]


# module -> {imported module: [(line, at module level)]}, imports of the module itself left out
EDGES: Dict[str, Dict[str, List[Tuple[int, bool]]]] = {}
for _m, _found in IMPORTS.items():
    for _t, _, _line, _top in _found:
        _target = _module_of(_t)
        if _target != _m:
            EDGES.setdefault(_m, {}).setdefault(_target, []).append((_line, _top))


def test_the_graph_sees_the_package():
    assert {f"{PACKAGE}.core.unet", f"{PACKAGE}.adapters", f"{PACKAGE}.integrations.basicsr.registry",
            f"{PACKAGE}.integrations.mmengine.scope", f"{PACKAGE}.data.datasets", f"{PACKAGE}.errors"} <= set(MODULES)
    assert f"{PACKAGE}.core.stages" in EDGES[f"{PACKAGE}.adapters"]
    # function-level imports are seen too
    assert any(not top for found in EDGES.values() for lines in found.values() for _, top in lines)


def test_every_folder_of_the_package_is_a_layer_with_a_docstring_saying_what_it_may_import():
    folders = {p.name for p in (ROOT / PACKAGE).iterdir() if (p / "__init__.py").is_file()}
    assert folders == set(ORDER), f"folders without a place in ORDER (or gone): {sorted(folders ^ set(ORDER))}"
    for folder in ORDER:
        doc = ast.get_docstring(ast.parse((ROOT / PACKAGE / folder / "__init__.py").read_text(encoding="utf-8")))
        assert doc and "import" in doc, f"{PACKAGE}/{folder}/__init__.py: say what the layer holds and may import"


def test_no_import_goes_up_a_layer_at_any_level():
    bad = [f"{m} ({_layer(m)}) imports {t} ({_layer(t)}), line {line}{'' if top else ' (inside a function)'}"
           for m, targets in EDGES.items() for t, lines in targets.items() for line, top in lines
           if RANK[_layer(t)] > RANK[_layer(m)]]
    assert not bad, bad


def test_no_import_cycles_at_any_level():
    graph: Dict[str, Set[str]] = {m: set(EDGES.get(m, {})) & set(MODULES) for m in MODULES}
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    cycles: List[List[str]] = []

    def strongly_connected(node: str) -> None:  # Tarjan: every component of two or more modules is a loop
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                strongly_connected(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            strongly_connected(module)
    assert not cycles, [" <-> ".join(c) for c in cycles]


def test_no_module_imports_another_modules_private_names():
    bad = [f"{m} imports {t}.{n} (line {line})" for m, found in IMPORTS.items() for t, names, line, _ in found
           for n in names if t != m and n.startswith("_") and not n.startswith("__")]
    assert not bad, bad


def test_no_module_is_over_600_lines():
    long = {m: n for m, path in MODULES.items() if (n := len(path.read_text(encoding="utf-8").splitlines())) > 600}
    assert not long, f"split by concern: {long}"
