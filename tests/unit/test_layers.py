"""The layer guard: every module's imports, read from its syntax tree, keep to the layers.

- `herd/` is the core every process kind shares: it imports nothing from the packages beside it.
- `app/` (the API) and `workers/` (inference) never import each other.
- `stack/` (the `herd up` supervisor) imports only the core; `app/` and `workers/` import neither it nor
  `cli/`.
- No import cycle between modules. Imports under `if TYPE_CHECKING:` count too: a cycle that only type
  hints close is still two modules that cannot be read apart.
- `bench/` and `tests/` use only public names of the other packages (no leading underscore).

The checker is tried on small trees of its own first, so a guard that stopped seeing a crossing fails.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("herd", "app", "workers", "stack", "cli", "bench", "tests")

# importer's top package -> top packages it must never import
FORBIDDEN: dict[str, frozenset[str]] = {
    "herd": frozenset(PACKAGES) - {"herd"},
    "app": frozenset({"workers", "stack", "cli", "bench", "tests"}),
    "workers": frozenset({"app", "stack", "cli", "bench", "tests"}),
    "stack": frozenset({"app", "workers", "cli", "bench", "tests"}),
}
# Packages whose imports of other packages' private names are refused.
PUBLIC_ONLY = frozenset({"bench", "tests"})


@dataclass
class Module:
    name: str
    path: Path
    # imported module -> line, for every import (module level, inside a function, or for type checking)
    imports: dict[str, int] = field(default_factory=dict)
    # (module, private name, line) for `from module import _name`
    private_names: list[tuple[str, str, int]] = field(default_factory=list)


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name of a relative import's module."""
    if level == 0:
        return target or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, target] if target else base)


def read_modules(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, Module]:
    """Every module under the given top-level packages, with the project imports it makes."""
    found = {
        _module_name(root, path): path
        for package in packages
        if (root / package).is_dir()
        for path in sorted((root / package).rglob("*.py"))
    }
    modules: dict[str, Module] = {}
    for name, path in found.items():
        module = Module(name, path)
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] in packages:
                        module.imports.setdefault(alias.name, node.lineno)
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(name, is_package, node.level, node.module)
                if target.split(".")[0] not in packages:
                    continue
                for alias in node.names:
                    # `from pkg import submodule` imports the submodule itself.
                    sub = f"{target}.{alias.name}"
                    module.imports.setdefault(sub if sub in found else target, node.lineno)
                    if alias.name.startswith("_") and target.split(".")[0] != name.split(".")[0]:
                        module.private_names.append((target, alias.name, node.lineno))
        modules[name] = module
    return modules


def crossings(modules: dict[str, Module]) -> list[str]:
    """Imports that cross a layer the wrong way."""
    found = []
    for module in modules.values():
        banned = FORBIDDEN.get(module.name.split(".")[0], frozenset())
        for target, line in module.imports.items():
            if target.split(".")[0] in banned:
                found.append(f"{module.path}:{line}: {module.name} imports {target}")
    return found


def private_imports(modules: dict[str, Module]) -> list[str]:
    """Private names that bench/ and tests/ take from another package."""
    return [
        f"{m.path}:{line}: {m.name} imports {target}.{name}"
        for m in modules.values()
        if m.name.split(".")[0] in PUBLIC_ONLY
        for target, name, line in m.private_names
    ]


def cycles(modules: dict[str, Module]) -> list[list[str]]:
    """Import cycles between modules, each once (Tarjan's strongly connected components)."""
    graph = {name: sorted(t for t in m.imports if t in modules and t != name) for name, m in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        # Iterative, so a deep import chain cannot hit the recursion limit.
        work = [(node, iter(graph[node]))]
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        while work:
            current, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(graph[nxt])))
                    break
                if nxt in on_stack:
                    low[current] = min(low[current], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[current])
                if low[current] == index[current]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == current:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))

    for name in graph:
        if name not in index:
            visit(name)
    return found


# --- the guard on the project itself -----------------------------------------------------------------


@pytest.fixture(scope="module")
def project() -> dict[str, Module]:
    return read_modules(ROOT)


def test_the_layers_are_all_there(project: dict[str, Module]) -> None:
    tops = {name.split(".")[0] for name in project}
    assert {"herd", "app", "workers", "stack", "cli", "bench", "tests"} <= tops


def test_no_import_crosses_a_layer(project: dict[str, Module]) -> None:
    assert crossings(project) == []


def test_no_import_cycle(project: dict[str, Module]) -> None:
    assert cycles(project) == []


def test_bench_and_tests_use_only_public_names(project: dict[str, Module]) -> None:
    assert private_imports(project) == []


def test_the_api_never_imports_llama_cpp(project: dict[str, Module]) -> None:
    api = [m for m in project.values() if m.name.split(".")[0] in ("app", "herd", "stack")]
    offenders = []
    for module in api:
        tree = ast.parse(module.path.read_text())
        for node in ast.walk(tree):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            offenders += [f"{module.name}: {n}" for n in names if n.split(".")[0] == "llama_cpp"]
    assert offenders == []


# --- the guard on trees made to break it ---------------------------------------------------------------


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for package in PACKAGES:
        if (root / package).is_dir():
            (root / package / "__init__.py").touch()
    return root


def test_the_guard_sees_app_importing_workers_and_the_reverse(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "app/routes.py": "def f():\n    from workers.engine import Engine\n",
            "workers/engine.py": "import app.routes\nclass Engine: ...\n",
        },
    )
    found = crossings(read_modules(root))
    assert len(found) == 2
    assert any("app.routes imports workers.engine" in f for f in found)
    assert any("workers.engine imports app.routes" in f for f in found)


def test_the_guard_sees_the_core_importing_outside_itself(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"herd/names.py": "from stack import supervisor\n", "stack/supervisor.py": ""})
    assert [f.split(": ", 1)[1] for f in crossings(read_modules(root))] == [
        "herd.names imports stack.supervisor"
    ]


def test_the_guard_counts_imports_made_only_for_type_checking(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "app/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import workers.x\n",
            "workers/x.py": "",
            "herd/p.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from herd.q import Q\n",
            "herd/q.py": "from herd.p import P\n",
        },
    )
    modules = read_modules(root)
    assert [f.split(": ", 1)[1] for f in crossings(modules)] == ["app.a imports workers.x"]
    assert cycles(modules) == [["herd.p", "herd.q"]]


def test_the_guard_sees_a_cycle_through_relative_imports(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "app/admission.py": "from . import metrics\n",
            "app/metrics.py": "from app.services import Services\n",
            "app/services.py": "from .admission import Admission\n",
            "app/free.py": "from app import metrics\n",
        },
    )
    assert cycles(read_modules(root)) == [["app.admission", "app.metrics", "app.services"]]


def test_the_guard_sees_a_private_name_taken_by_bench(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "workers/engine.py": "_ROWS = 7\n",
            "bench/steps.py": "from workers.engine import _ROWS\n",
            "tests/support.py": "def _own(): ...\n",
            "tests/test_x.py": "from tests.support import _own\n",
        },
    )
    assert [f.split(": ", 1)[1] for f in private_imports(read_modules(root))] == [
        "bench.steps imports workers.engine._ROWS"
    ]
