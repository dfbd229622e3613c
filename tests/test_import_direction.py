"""DESIGN.md: flows -> tasks -> lib. lib never imports prefect, tasks, flows or the CLI."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "lib": {"prefect", "tasks", "flows", "cli", "app"},
    "tasks": {"flows", "cli", "app"},
    "flows": {"cli", "app"},
    "app": {"prefect", "tasks", "flows", "cli"},  # the server answers queries; it never runs the pipeline
}
ADAPTERS = {
    "wandb": "lib/reporting/tracking.py",
    "boto3": "lib/artifacts/s3.py",
    "botocore": "lib/artifacts/s3.py",
    "gradio": "app/ui.py",
    "lightning": "lib/stages/encoder/ddp.py",
    "pytorch_lightning": "lib/stages/encoder/ddp.py",
    "lightning_fabric": "lib/stages/encoder/ddp.py",
}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_packages_import_only_downwards(package):
    offenders = {
        str(path.relative_to(REPO)): sorted(imported_roots(path) & FORBIDDEN[package])
        for path in (REPO / package).rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_heavy_optional_dependencies_live_in_one_adapter_each():
    for module, owner in ADAPTERS.items():
        users = sorted(
            str(p.relative_to(REPO))
            for package in ("lib", "app")
            for p in (REPO / package).rglob("*.py")
            if module in imported_roots(p)
        )
        assert users in ([], [owner]), f"{module} imported outside {owner}: {users}"


def test_the_checker_sees_lazy_imports(tmp_path):
    sample = tmp_path / "m.py"
    sample.write_text("def f():\n    from prefect import flow\n    import tasks.x\n")
    assert {"prefect", "tasks"} <= imported_roots(sample)
