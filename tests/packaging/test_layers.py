"""The package's layers import one way: core <- training <- integrations <- command line.

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
TRAINING = {f"{PACKAGE}.{m}" for m in ("training.losses", "training.pretrain", "data.degradations",
                                       "data.datasets", "data.samples", "data.benchmark_datasets")}
INTEGRATIONS = f"{PACKAGE}.integrations"
# The command line, and the package's __init__, which installs the integrations' import hooks.
TOP = {f"{PACKAGE}.cli", f"{INTEGRATIONS}.basicsr.cli", PACKAGE}


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


def _layer(module: str) -> str:
    if module in TOP:
        return "top"
    if module == INTEGRATIONS or module.startswith(INTEGRATIONS + "."):
        return "integrations"
    if module in TRAINING:
        return "training"
    return "core"


def test_the_graph_sees_the_package():
    assert {f"{PACKAGE}.core.unet", f"{PACKAGE}.adapters", f"{INTEGRATIONS}.basicsr.registry",
            f"{INTEGRATIONS}.mmengine.scope", f"{PACKAGE}.data.datasets"} <= set(MODULES)
    assert any(target == f"{PACKAGE}.core.stages" for target, *_ in IMPORTS[f"{PACKAGE}.adapters"])


def test_only_the_integrations_and_the_command_line_import_the_integrations():
    bad = [f"{m} imports {t} (line {line})" for m, found in IMPORTS.items() for t, _, line, _ in found
           if _layer(m) in ("core", "training") and _layer(t) == "integrations"]
    assert not bad, bad


def test_core_imports_no_training_module():
    bad = [f"{m} imports {t} (line {line})" for m, found in IMPORTS.items() for t, _, line, _ in found
           if _layer(m) == "core" and _layer(t) == "training"]
    assert not bad, bad


def test_no_import_cycles_among_module_level_imports():
    graph: Dict[str, Set[str]] = {m: {t for t, _, _, top in found if top and t in MODULES and t != m}
                                  for m, found in IMPORTS.items()}
    state: Dict[str, int] = {}
    cycles: List[List[str]] = []

    def visit(node: str, stack: List[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, [" -> ".join(c) for c in cycles]


def test_no_module_imports_another_modules_private_names():
    bad = [f"{m} imports {t}.{n} (line {line})" for m, found in IMPORTS.items() for t, names, line, _ in found
           for n in names if t != m and n.startswith("_") and not n.startswith("__")]
    assert not bad, bad
