"""The package's floors (DESIGN.md §2), checked on the source: one `lookalike` namespace, every
module importing only from its own floor or the floors below, no import cycles (imports inside
functions count too), and each heavy optional dependency owned by one adapter module."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# the package as laid out: a module's import name is its path under lib/ (flows/ and tasks/ are linked in)
PACKAGE = REPO / "lib" / "lookalike"
# floor -> the floors it may import from (itself included); the first matching prefix names a module's floor
FLOORS = {
    "lookalike.core": {"lookalike.core"},
    "lookalike.artifacts": {"lookalike.core", "lookalike.artifacts"},
    "lookalike.stages": {"lookalike.core", "lookalike.artifacts", "lookalike.stages", "lookalike.data"},
    "lookalike.reporting": {"lookalike.core", "lookalike.artifacts", "lookalike.stages", "lookalike.reporting"},
    "lookalike.serving": {
        "lookalike.core",
        "lookalike.artifacts",
        "lookalike.stages",
        "lookalike.reporting",
        "lookalike.serving",
    },
    "lookalike.tasks": {
        "lookalike.core",
        "lookalike.artifacts",
        "lookalike.stages",
        "lookalike.reporting",
        "lookalike.serving",
        "lookalike.tasks",
    },
    "lookalike.flows": {
        "lookalike.core",
        "lookalike.artifacts",
        "lookalike.stages",
        "lookalike.reporting",
        "lookalike.serving",
        "lookalike.tasks",
        "lookalike.flows",
    },
    # the server answers queries; it never runs the pipeline
    "lookalike.app": {
        "lookalike.core",
        "lookalike.artifacts",
        "lookalike.stages",
        "lookalike.reporting",
        "lookalike.serving",
        "lookalike.app",
    },
    "lookalike.cli": {"lookalike"},  # the top: anything
    "lookalike.data": set(),
}
# the Python API: a shell beside the CLI, over the same calls, never through it
FLOORS["lookalike.api"] = set(FLOORS) - {"lookalike.cli"}
# third-party packages a floor must never import, even lazily
BANNED = {
    "lookalike.core": {"torch", "torchvision", "faiss", "boto3", "botocore", "wandb", "prefect", "lightly", "datasets"},
    "lookalike.artifacts": {"torch", "faiss", "wandb", "prefect"},
    "lookalike.stages": {"prefect", "wandb"},
    "lookalike.reporting": {"prefect"},
    "lookalike.serving": {"prefect"},
    "lookalike.app": {"prefect"},
}
ADAPTERS = {
    "wandb": "lookalike.reporting.tracking",
    "boto3": "lookalike.artifacts.s3",
    "botocore": "lookalike.artifacts.s3",
    "gradio": "lookalike.app.ui",
    "lightning": "lookalike.stages.encoder.loop",
    "pytorch_lightning": "lookalike.stages.encoder.loop",
    "lightning_fabric": "lookalike.stages.encoder.loop",
}


def package_modules(package: Path = PACKAGE) -> dict[str, Path]:
    """{dotted module name: file} for every module the wheel installs, through the links to flows/ and tasks/."""
    modules = {}
    for folder, _, files in os.walk(package, followlinks=True):
        for path in (Path(folder) / file for file in files if file.endswith(".py")):
            parts = path.relative_to(package.parent).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return dict(sorted(modules.items()))


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> tuple[set[str], set[str]]:
    """(project modules `name` imports, third-party top-level packages it imports), anywhere in the file."""
    own, other = set(), set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    [*package.split(".")[: len(package.split(".")) - node.level + 1], *filter(None, [base])]
                )
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] == "lookalike":
                while target not in modules and "." in target:
                    target = target.rpartition(".")[0]
                own.add(target)
            else:
                other.add(target.split(".")[0])
    own.discard(name)
    return own, other


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    return {name: imports_of(name, path, modules)[0] for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def floor_of(module: str) -> str | None:
    return next(
        (floor for floor in sorted(FLOORS, key=len, reverse=True) if module == floor or module.startswith(floor + ".")),
        None,
    )


def floor_violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, targets in graph.items():
        floor = floor_of(module)
        for target in targets:
            if floor is None:  # the package root: core, and the Python API on first use
                allowed = floor_of(target) in ("lookalike.core", "lookalike.api")
            else:
                allowed = any(target == f or target.startswith(f + ".") for f in FLOORS[floor])
            if not allowed:
                bad.append(f"{module} -> {target}")
    return sorted(bad)


MODULES = package_modules()


def test_every_installed_module_is_in_the_lookalike_namespace_and_on_a_floor():
    assert MODULES and all(name.split(".")[0] == "lookalike" for name in MODULES)
    assert {"lookalike.cli.main", "lookalike.flows.retrieval", "lookalike.tasks.index"} <= MODULES.keys()
    unplaced = [name for name in MODULES if name != "lookalike" and floor_of(name) is None]
    assert unplaced == []


def test_no_import_cycles_among_the_package_modules():
    assert cycles(import_graph(MODULES)) == []


def test_each_module_imports_only_from_its_floor_or_below():
    assert floor_violations(import_graph(MODULES)) == []


@pytest.mark.parametrize("floor", sorted(BANNED))
def test_floors_keep_heavy_and_orchestration_packages_out(floor):
    offenders = {
        name: sorted(imports_of(name, path, MODULES)[1] & BANNED[floor])
        for name, path in MODULES.items()
        if floor_of(name) == floor
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_heavy_optional_dependencies_live_in_one_adapter_each():
    for package, owner in ADAPTERS.items():
        users = sorted(name for name, path in MODULES.items() if package in imports_of(name, path, MODULES)[1])
        assert users in ([], [owner]), f"{package} imported outside {owner}: {users}"


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_the_checks_find_a_cycle_through_a_lazy_import_and_an_upward_import(tmp_path):
    _write(
        tmp_path,
        {
            "lib/lookalike/__init__.py": "",
            "lib/lookalike/core/__init__.py": "",
            "lib/lookalike/core/settings.py": "def check():\n    from lookalike.stages.index import factory\n",
            "lib/lookalike/stages/__init__.py": "",
            "lib/lookalike/stages/index/__init__.py": "",
            "lib/lookalike/stages/index/factory.py": "from lookalike.core.settings import check\n",
            "tasks/__init__.py": "import prefect\n",
        },
    )
    (tmp_path / "lib" / "lookalike" / "tasks").symlink_to(Path("..", "..", "tasks"))
    modules = package_modules(tmp_path / "lib" / "lookalike")
    graph = import_graph(modules)
    assert cycles(graph) == [["lookalike.core.settings", "lookalike.stages.index.factory"]]
    assert floor_violations(graph) == ["lookalike.core.settings -> lookalike.stages.index.factory"]
    assert "prefect" in imports_of("lookalike.tasks", modules["lookalike.tasks"], modules)[1]
