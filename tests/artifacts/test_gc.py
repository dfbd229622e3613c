"""`lookalike gc`: shared dataset parts no kept version uses are listed, and removed on request."""

import json
import os
import shutil

import pytest
from helpers import make_png
from typer.testing import CliRunner

from lookalike.artifacts.aliases import set_alias
from lookalike.artifacts.gc import collect
from lookalike.cli.main import app
from lookalike.core.manifest import write_manifest
from lookalike.core.settings import DatasetSettings
from lookalike.stages.dataset import parts
from lookalike.stages.dataset.stage import open_snapshot, run_dataset_stage


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Three dataset versions: one an alias names, one an encoder was built from, one nothing uses."""
    base = tmp_path_factory.mktemp("gc")
    root, folder = base / "artifacts", base / "photos"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(parts, "TARGET_ROWS", 4)
        for v in range(24):
            make_png(folder / f"{v:03d}.png", v)
        aliased = run_dataset_stage(DatasetSettings(source=str(folder)), root).manifest
        make_png(folder / "005b.png", 99)
        built_from = run_dataset_stage(DatasetSettings(source=str(folder)), root).manifest
        for v in range(3):
            make_png(base / "other" / f"{v}.png", 200 + v)
        unused = run_dataset_stage(DatasetSettings(source=str(base / "other")), root).manifest
    encoder = root / "encoder" / "00000000000000e1"
    encoder.mkdir(parents=True)
    write_manifest(
        encoder,
        stage="encoder",
        key=encoder.name,
        code_version=1,
        settings={},
        inputs={"dataset": built_from.key},
        files=[],
        stats={},
        timings={},
    )
    set_alias(root, "production", {"dataset": aliased.key})
    return root, {"aliased": aliased, "built_from": built_from, "unused": unused}


@pytest.fixture
def versions(built, root):
    """A copy of the built root, with an orphan part left by a version deleted by hand."""
    shutil.copytree(built[0], root)
    shared = root / "dataset" / "parts"
    orphan = shared / ("f" * 64 + ".arrow")
    orphan.write_bytes(b"x" * 123)
    (shared / ("f" * 64 + ".json")).write_text("{}")
    return {**built[1], "orphan": orphan}


def files(root):
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix != ".lock")


def test_a_dry_run_lists_the_orphan_part_and_removes_nothing(root, versions):
    before = files(root)
    found = collect(root, min_age=0)
    assert [r.path for r in found.parts] == [f"dataset/parts/{'f' * 64}.arrow", f"dataset/parts/{'f' * 64}.json"]
    assert found.versions == [] and found.kept_versions == 3 and found.bytes == 123 + 2
    assert files(root) == before

    assert collect(root).parts == []  # younger than the default 24 hours: a build may be about to list it


def test_delete_removes_the_orphan_and_every_version_still_opens(root, versions):
    found = collect(root, delete=True, min_age=0)
    assert found.deleted and len(found.parts) == 2 and not versions["orphan"].exists()
    for name in ("aliased", "built_from", "unused"):
        assert len(open_snapshot(root, versions[name])) > 0


def test_versions_removes_what_nothing_references_and_keeps_what_an_alias_or_a_stage_does(root, versions):
    unused = versions["unused"]
    unused_parts = {p["name"] for p in json.loads((root / "dataset" / unused.key / "parts.json").read_text())["parts"]}
    found = collect(root, delete=True, versions=True, min_age=0)
    assert [v.path for v in found.versions] == [f"dataset/{unused.key}"]
    assert not (root / "dataset" / unused.key).exists()
    assert {p.rsplit("/", 1)[1] for p in (r.path for r in found.parts) if p.endswith(".arrow")} == unused_parts | {
        "f" * 64 + ".arrow"
    }
    assert len(open_snapshot(root, versions["aliased"])) == 24  # the alias's
    assert len(open_snapshot(root, versions["built_from"])) == 25  # the encoder's, sharing most parts with it


def test_the_command_is_a_dry_run_unless_told_and_prints_json(root, versions):
    runner = CliRunner()
    dry = runner.invoke(app, ["gc", "--artifacts-root", str(root), "--min-age-hours", "0", "--json"])
    assert dry.exit_code == 0, dry.output
    listed = json.loads(dry.stdout)
    assert (listed["deleted"], len(listed["parts"]), listed["bytes"]) == (False, 2, 125)
    assert versions["orphan"].exists()
    human = runner.invoke(app, ["gc", "--artifacts-root", str(root), "--min-age-hours", "0", "--delete"])
    assert human.exit_code == 0, human.output
    assert "removed dataset/parts/" in human.stdout and not versions["orphan"].exists()
    assert os.listdir(root / "dataset" / "parts")  # the versions' parts stay


def test_nothing_is_removed_while_a_build_holds_its_lock(root, versions):
    import multiprocessing

    # flock is per open file, so the build that holds it is another process, as a running `lookalike run` is
    held, release = multiprocessing.Event(), multiprocessing.Event()
    builder = multiprocessing.get_context("fork").Process(target=hold_lock, args=(root, held, release))
    builder.start()
    try:
        assert held.wait(30)
        found = collect(root, delete=True, min_age=0)
        assert found.busy == ["dataset/0123456789abcdef"] and versions["orphan"].exists()
    finally:
        release.set()
        builder.join(30)
    assert collect(root, delete=True, min_age=0).busy == [] and not versions["orphan"].exists()


def hold_lock(root, held, release):
    from lookalike.artifacts.stage_runner import key_lock

    with key_lock(root, "dataset", "0123456789abcdef"):
        held.set()
        release.wait(30)
