"""Integrity holes of issue 27 in what the artifacts root holds: the alias history, alias values
and CLI keys, and manifests edited after they were written. Everything through `lookalike`."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import run_cli

HISTORY = Path("aliases") / "history.jsonl"


@pytest.fixture(scope="module")
def two_indexes(tiny_chain, tmp_path_factory) -> tuple[Path, str, str]:
    """A copy of the TINY chain with a second (flat-ip) index over the same embeddings:
    (root, the first index key, the second)."""
    from lookalike.artifacts.shared_root import read_manifest
    from lookalike.core.settings import IndexSettings
    from lookalike.stages.index.stage import run_index_stage

    root = tmp_path_factory.mktemp("hardening") / "artifacts"
    shutil.copytree(tiny_chain, root)
    first = next(p.name for p in (root / "index").iterdir() if p.is_dir())
    embeddings = read_manifest(root, "embeddings", read_manifest(root, "index", first).inputs["embeddings"])
    second = run_index_stage(IndexSettings(type="flat-ip"), embeddings, root).manifest.key
    return root, first, second


@pytest.fixture
def root(two_indexes, tmp_path) -> tuple[Path, str, str]:
    """A private copy of `two_indexes` (tests edit and move what is in it)."""
    built, first, second = two_indexes
    shutil.copytree(built, tmp_path / "artifacts")
    return tmp_path / "artifacts", first, second


def lookalike(root: Path, *args: str) -> subprocess.CompletedProcess:
    return run_cli(*args, "--artifacts-root", str(root), home=root.parent, timeout=300)


def succeeded(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    return proc.stderr


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    """The command failed and said why in one `error:` line, without a traceback."""
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0]


def production(root: Path) -> dict:
    return json.loads((root / "aliases" / "production.json").read_text())


# --- row 3: a torn line in aliases/history.jsonl ------------------------------------------------


def test_a_torn_last_history_line_is_skipped_and_reported_and_later_moves_stay_readable(root):
    root, first, second = root
    succeeded(lookalike(root, "promote", first))
    history = root / HISTORY
    # what a crash in the middle of an append leaves: half a line, no newline
    history.write_bytes(history.read_bytes() + b'{"name": "production", "stages": {"dataset": "3f2a')

    reported = succeeded(lookalike(root, "promote", second))
    assert f"{history}" in reported and "torn" in reported
    assert production(root)["stages"]["index"] == second
    # the move made after the torn line is one the rollback depends on
    moved_back = succeeded(lookalike(root, "rollback"))
    assert f"was {second}" in moved_back
    assert production(root)["stages"]["index"] == first
    for line in history.read_text().splitlines():  # every line on disk is whole again
        json.loads(line)


# --- row 4: alias values, history entries and CLI keys are stage keys -----------------------------


def test_promote_refuses_a_key_that_is_not_a_stage_key_naming_it(root):
    root, first, _ = root
    for bad in ("../../etc", "/etc", first.upper(), first[:15], f"{first}/.."):
        line = one_line_error(lookalike(root, "promote", bad))
        assert repr(bad) in line and "16 lowercase hex" in line
    assert not (root / "aliases" / "production.json").exists()


def test_promote_copies_an_index_folder_from_another_root_and_stores_only_stage_keys(root, tmp_path):
    from lookalike.serving.refs import alias_chain

    other, first, _ = root
    here = tmp_path / "here"
    succeeded(lookalike(here, "promote", str(other / "index" / first)))
    stages = production(here)["stages"]
    assert stages["index"] == first and all(len(k) == 16 and "/" not in k for k in stages.values())
    assert alias_chain(here, "production").index.key == first  # read from `here`, not from `other`
    assert (here / "index" / first / "manifest.json").is_file()
    shutil.rmtree(other)  # nothing here depends on the other root
    assert alias_chain(here, "production").dataset.key == stages["dataset"]


def test_an_alias_value_that_is_a_path_is_refused_before_anything_is_read(root, tmp_path):
    root, first, _ = root
    other = tmp_path / "other"
    shutil.copytree(root, other)
    succeeded(lookalike(root, "promote", first))
    alias = production(root)
    alias["stages"]["index"] = str(other / "index" / first)  # a finished index, outside the root
    (root / "aliases" / "production.json").write_text(json.dumps(alias))
    line = one_line_error(lookalike(root, "query", "--index", "production", "--row", "0"))
    assert "production.json" in line and str(other) in line and "16 lowercase hex" in line


def test_rollback_skips_a_history_entry_whose_value_is_a_path(root, tmp_path):
    root, first, second = root
    succeeded(lookalike(root, "promote", first))
    succeeded(lookalike(root, "promote", second))
    history = root / HISTORY
    evil = json.loads(history.read_text().splitlines()[0])
    evil["stages"]["index"] = "../../../../../../etc"  # the newest entry: what a rollback would pick
    history.write_text(history.read_text() + json.dumps(evil) + "\n")
    reported = succeeded(lookalike(root, "rollback"))
    assert f"{history}:3" in reported and "'../../../../../../etc' is not a stage key" in reported
    assert production(root)["stages"]["index"] == first


# --- row 6: manifests are protected by a hash chain ---------------------------------------------


def edit_stats(folder: Path, **stats) -> Path:
    """Change a manifest's stats by hand, leaving every file hash in it as it was."""
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["stats"].update(stats)
    path.write_text(json.dumps(manifest, indent=2))
    return path


def test_an_upstream_manifest_edited_by_hand_is_refused_naming_it(root):
    root, first, _ = root
    embeddings = json.loads((root / "index" / first / "manifest.json").read_text())["inputs"]["embeddings"]
    edited = edit_stats(root / "embeddings" / embeddings, n_vectors=999)
    line = one_line_error(lookalike(root, "promote", first))
    assert str(edited) in line and "sha256" in line
    assert not (root / "aliases" / "production.json").exists()


def test_a_manifest_an_alias_names_edited_by_hand_is_refused_naming_it(root):
    root, first, _ = root
    succeeded(lookalike(root, "promote", first))
    edited = edit_stats(root / "index" / first, ntotal=999)
    line = one_line_error(lookalike(root, "query", "--index", "production", "--row", "0"))
    assert str(edited) in line and "production" in line and "sha256" in line


def test_folders_and_aliases_written_before_the_hash_chain_still_load(root):
    from lookalike.serving.refs import alias_chain

    root, first, _ = root
    for path in root.glob("*/*/manifest.json"):  # as an older lookalike wrote them
        manifest = json.loads(path.read_text())
        manifest.pop("input_sha256", None)
        path.write_text(json.dumps(manifest, indent=2))
    succeeded(lookalike(root, "promote", first))
    alias = production(root)
    alias.pop("manifest_sha256", None)
    (root / "aliases" / "production.json").write_text(json.dumps(alias))
    assert alias_chain(root, "production").index.key == first
