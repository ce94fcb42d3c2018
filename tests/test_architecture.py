"""The shape of the code: layers that point down, no import circles, modules and folders of a readable size.

The import graph is read from the source with ``ast`` (nothing is imported), and it
counts every import: at module level, inside functions, under ``if TYPE_CHECKING``.
An edge goes from a module to the module it names: ``from a.b import c`` is an edge
to ``a.b.c`` when that is a module, else to ``a.b``. The parent packages Python
initializes on the way (``a`` and ``a.b`` for ``import a.b.c``) are not edges: a
package's ``__init__`` is a module like the others, with the edges it writes.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: The installed packages checked: folder → dotted name (``kernels/`` is installed as ``deepres.kernels``).
PACKAGES: dict[str, str] = {"deepres": "deepres", "kernels": "deepres.kernels"}

#: The layers, bottom to top (docs/design.md, "Architecture"). A module imports only from its own
#: layer and the ones below it. Each entry names a module or a package (with everything in it);
#: the longest entry that names a module decides its layer.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("kernels", ("deepres.kernels",)),
    ("leaf modules", ("deepres._checks", "deepres.activations", "deepres.parameterization", "deepres.scaling")),
    ("engines", ("deepres.engines",)),
    ("functional API, modules, Mean ODE", ("deepres.functional", "deepres.modules", "deepres.meanode")),
    ("training, optimizers, studies, benchmark",
     ("deepres.training", "deepres.optim", "deepres.options", "deepres.demo", "deepres.study",
      "deepres.benchmark")),
    ("command line",
     ("deepres.cli", "deepres.study.cli", "deepres.study.__main__", "deepres.study.convergence.cli",
      "deepres.study.phase.cli", "deepres.study.shapes.cli", "deepres.benchmark.cli", "deepres.benchmark.__main__")),
)
#: The package ``deepres`` itself (its ``__init__``): the public names, gathered from the layers below.
TOP_PACKAGE_LAYER = "training, optimizers, studies, benchmark"

#: Known upward imports, each to be removed: (importer, imported). None today.
KNOWN_UPWARD: set[tuple[str, str]] = set()

MAX_LINES = 500
MAX_MODULES_PER_STUDY_FOLDER = 14


def _modules() -> dict[str, Path]:
    """Every module of the checked packages: dotted name → file."""
    modules = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([package, *parts])] = path
    return modules


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """``name``, or the nearest enclosing module of it that is one of ``modules``; None outside them."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of ``modules`` that ``module`` imports, anywhere in its source."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".") if is_package else module.split(".")[:-1]
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                     for alias in node.names]
        else:
            continue
        found.update(known for name in names if (known := _known(name, modules)) is not None)
    found.discard(module)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {module: _imports(module, path, modules) for module, path in modules.items()}


def _layer(module: str) -> int:
    """The index in :data:`LAYERS` of ``module``'s layer."""
    if module == "deepres":
        return [name for name, _ in LAYERS].index(TOP_PACKAGE_LAYER)
    best, rank = -1, None
    for index, (_, entries) in enumerate(LAYERS):
        for entry in entries:
            if (module == entry or module.startswith(entry + ".")) and len(entry) > best:
                best, rank = len(entry), index
    if rank is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS in tests/test_architecture.py")
    return rank


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_reader_sees_imports_inside_functions_and_relative_ones(tmp_path):
    modules = {"p": Path("p/__init__.py"), "p.a": Path("p/a.py"), "p.b": Path("p/b.py"), "p.c": Path("p/c.py")}
    path = tmp_path / "a.py"
    path.write_text("from . import b\n\ndef f():\n    from .c import thing\n    import p.a\n")
    assert _imports("p.a", path, modules) == {"p.b", "p.c"}
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circles():
    cycles = _cycles(_graph())
    assert cycles == [], f"modules that import each other, directly or around a circle: {cycles}"


def test_imports_point_down_the_layers():
    graph = _graph()
    upward = sorted(
        f"{module} ({LAYERS[_layer(module)][0]}) imports {target} ({LAYERS[_layer(target)][0]})"
        for module, targets in graph.items() for target in targets
        if _layer(target) > _layer(module) and (module, target) not in KNOWN_UPWARD
    )
    assert upward == [], "imports that point up the layers:\n" + "\n".join(upward)


@pytest.mark.parametrize("folder", sorted(PACKAGES))
def test_no_module_is_over_500_lines(folder):
    long = {str(path.relative_to(ROOT)): n for path in sorted((ROOT / folder).rglob("*.py"))
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}, f"modules over {MAX_LINES} lines: {long}"


def test_no_study_folder_holds_more_than_14_modules():
    study = ROOT / "deepres" / "study"
    folders = [study, *(p for p in sorted(study.rglob("*")) if p.is_dir() and p.name != "__pycache__")]
    crowded = {str(f.relative_to(ROOT)): n for f in folders
               if (n := len(list(f.glob("*.py")))) > MAX_MODULES_PER_STUDY_FOLDER}
    assert crowded == {}, f"folders of deepres/study with more than {MAX_MODULES_PER_STUDY_FOLDER} modules: {crowded}"
