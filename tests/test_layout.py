"""The layout ARCHITECTURE.md describes, checked: no import circles between files or between top-level
packages (imports inside functions count too), runtime/ slim, the tools apart from the product,
argument parsing in the command package (and the runtime's own command lines), a correct __all__
in every module, and the design card's top-level folders."""

from __future__ import annotations

import ast
import importlib
import sys
import tomllib
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIRS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
STDLIB = set(sys.stdlib_module_names)


def _modules() -> dict[str, Path]:
    """Every product module by its import name (neurosurgeon.compiler.build -> compiler/build.py)."""
    found = {}
    for package, folder in PACKAGE_DIRS.items():
        for path in sorted((ROOT / folder).glob("*.py")):
            name = package if path.name == "__init__.py" else f"{package}.{path.stem}"
            found[name] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, str]]:
    """(imported module, imported name or "") for every import statement anywhere in the file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, "") for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            module = (f"{base}.{node.module}" if node.module else base) if node.level else node.module
            found += [(module, alias.name) for alias in node.names]
    return found


def _product_target(module: str, imported: str) -> str | None:
    """The product module an import refers to (`from .x import y` may name a module y), or None."""
    for candidate in (f"{module}.{imported}", module):
        while candidate and candidate not in MODULES:
            candidate = candidate.rpartition(".")[0]
        if candidate:
            return candidate
    return None


def _graph() -> nx.DiGraph:
    graph = nx.DiGraph()
    for name, path in MODULES.items():
        graph.add_node(name)
        for module, imported in _imports(name, path):
            target = _product_target(module, imported)
            if target and target != name:
                graph.add_edge(name, target)
    return graph


def _top(name: str) -> str:
    """The top-level package a module belongs to: neurosurgeon.compiler, neurosurgeon.cli, ..."""
    return ".".join(name.split(".")[:2])


def test_no_import_circle_between_files():
    cycles = list(nx.simple_cycles(_graph()))
    assert not cycles, "import circles: " + "; ".join(" -> ".join(cycle) for cycle in cycles[:5])


def test_no_import_circle_between_top_level_packages():
    packages = nx.DiGraph((_top(a), _top(b)) for a, b in _graph().edges if _top(a) != _top(b))
    cycles = list(nx.simple_cycles(packages))
    assert not cycles, f"circles between packages: {cycles}"


def test_runtime_imports_only_numpy_the_standard_library_and_tvms_runtime():
    allowed = STDLIB | {"numpy", "tvm", "tvm_ffi"}
    forbidden = {"tvm.relax", "tvm.s_tir", "tvm.tirx", "tvm.target", "tvm.contrib"}
    for name, path in MODULES.items():
        if _top(name) != "neurosurgeon.runtime":
            continue
        for module, _ in _imports(name, path):
            if module.startswith("neurosurgeon.runtime"):
                continue
            assert module.split(".")[0] in allowed, f"{path.relative_to(ROOT)} imports {module}"
            assert not any(module == f or module.startswith(f + ".") for f in forbidden), \
                f"{path.relative_to(ROOT)} imports the compiler-side {module}"


def test_the_product_does_not_depend_on_the_tools():
    users = sorted({a for a, b in _graph().edges if _top(b) == "neurosurgeon.tools"
                    and _top(a) not in ("neurosurgeon.tools", "neurosurgeon.cli")})
    assert not users, f"product modules importing neurosurgeon.tools: {users}"


def test_argument_parsing_lives_in_the_command_package():
    own_parsers = {"neurosurgeon.runtime.commands"}  # run.py, profile.py, rpc-server: the runtime alone runs them
    parsing = sorted(name for name, path in MODULES.items()
                     if any(module == "argparse" for module, _ in _imports(name, path))
                     and _top(name) != "neurosurgeon.cli" and name not in own_parsers)
    assert not parsing, f"argument parsing outside neurosurgeon/cli: {parsing}"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if not n.endswith("__main__")))
def test_every_module_has_a_correct_all(name):
    module = importlib.import_module(name)
    public = getattr(module, "__all__", None)
    if MODULES[name].name == "__init__.py" and public is None:  # a package that only documents its folder
        assert not [n for n in vars(module) if not n.startswith("_") and n != "annotations"
                    and not isinstance(getattr(module, n), type(sys))], f"{name} defines names but no __all__"
        return
    assert public is not None, f"{name} has no __all__"
    assert len(public) == len(set(public)), f"{name}.__all__ lists a name twice"
    missing = [n for n in public if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names what it does not define: {missing}"


def test_names_other_modules_import_are_in_all():
    """A public name imported from another product module is part of that module's interface."""
    wrong = []
    for name, path in MODULES.items():
        for module, imported in _imports(name, path):
            if module not in MODULES or imported.startswith("_") or f"{module}.{imported}" in MODULES:
                continue
            public = getattr(importlib.import_module(module), "__all__", None)
            if public is not None and imported not in public:
                wrong.append(f"{name} imports {imported} from {module}")
    assert not wrong, "\n".join(wrong)


def test_the_design_cards_top_level_stays():
    for entry in ("pyproject.toml", "README.md", "ARCHITECTURE.md", "compiler", "runtime", "templates", "targets",
                  "cost_models", "tests"):
        assert (ROOT / entry).exists(), entry
