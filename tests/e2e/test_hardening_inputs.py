"""Hardening (issue 27, rows 1, 2, 5, 7, 8): odd names, odd numbers and odd roots through `lookalike`
itself and a real `lookalike serve`: each is indexed, refused or reported in one line, never lost."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import LOOKALIKE, TINY, cli_env, make_png
from lookalike.core.manifest import find_manifest

SETS = [arg for key, value in TINY.items() if key != "dataset.limit" for arg in ("--set", f"{key}={value}")]
SAMPLE = ["--set", "dataset.limit=48", *SETS]
SERVER: dict[str, str] = {}


@pytest.fixture(scope="module", autouse=True)
def shared_server(prefect_api_url):
    """The session's Prefect server, so runs skip the ~8 s temporary one (the kill test below is
    the exception: it is about that server)."""
    SERVER["api_url"] = prefect_api_url
    yield
    SERVER.clear()


def lookalike(*args, home: Path, env_extra=None, faults=None, temporary_server: bool = False):
    return subprocess.run(
        [LOOKALIKE, *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=cli_env(home, api_url=None if temporary_server else SERVER["api_url"], faults=faults, extra=env_extra),
    )


def summary_of(proc) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def error_lines(proc, code: int) -> list[str]:
    """The lines of a failure that exited with `code` without a traceback."""
    assert proc.returncode == code, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    return proc.stderr.strip().splitlines()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One finished TINY chain of the bundled sample, promoted to production."""
    home = tmp_path_factory.mktemp("built")
    root = home / "artifacts"
    return home, root, summary_of(lookalike("run", "--json", "--artifacts-root", str(root), *SAMPLE, home=home))


# --- row 1: file names are bytes, not text -----------------------------------------------------


def test_file_names_with_a_newline_or_undecodable_bytes_are_indexed_or_skipped_never_lost(tmp_path):
    from datasets import Dataset

    folder = tmp_path / "photos"
    for i in range(12):
        make_png(folder / f"good-{i:02d}.png", i)
    make_png(folder / "new\nline.png", 50)
    make_png(Path(os.fsdecode(os.fsencode(folder) + b"/latin-\xe9.png")), 51)  # not UTF-8: a byte, not text
    (folder / "broken\nname.jpg").write_bytes(b"this is not an image")
    root = tmp_path / "artifacts"
    summary = summary_of(
        lookalike("run", "--json", "--dataset", str(folder), "--artifacts-root", str(root), *SETS, home=tmp_path)
    )

    assert (summary["metrics"]["n_images"], summary["metrics"]["n_skipped"]) == (14, 1)  # 15 files in, 15 accounted for
    [skipped] = summary["skipped"]
    assert skipped["path"] == str(folder / "broken\nname.jpg") and "not a recognised image" in skipped["reason"]
    manifest = find_manifest(root, "dataset", summary["stages"]["dataset"]["key"])
    assert manifest.stats["skipped"] == summary["skipped"]
    paths = {
        Path(image["path"]).name
        for image in Dataset.from_file(str(root / "dataset" / manifest.key / "images.arrow"))["image"]
    }
    assert {"new\nline.png", "latin-\\xe9.png"} <= paths and len(paths) == 14  # undecodable bytes as \xNN
    table = json.loads(next(Path(summary["artifacts"]["wandb_run_dir"]).rglob("*skipped*.table.json")).read_text())
    assert [row[1] for row in table["data"]] == [skipped["path"]]

    human = lookalike("run", "--dataset", str(folder), "--artifacts-root", str(root), *SETS, home=tmp_path)
    assert human.returncode == 0, human.stderr[-3000:]
    assert "broken\\nname.jpg: not a recognised image" in human.stdout  # the list stays one line per file
