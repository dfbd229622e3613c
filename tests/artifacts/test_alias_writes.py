"""Aliases (lib/lookalike/artifacts/aliases.py) on a disk that fills up."""

from __future__ import annotations

import subprocess

import pytest

from lookalike.artifacts.aliases import read_alias, set_alias
from lookalike.artifacts.stage_runner import ArtifactStorageError


@pytest.fixture
def root_with_small_aliases_disk(tiny_chain, tmp_path):
    """A root whose stage folders are the tiny chain's (linked, read-only) and whose aliases folder
    is a 64 KiB file system of its own (tmpfs: needs the right to mount, as root in a container)."""
    root = tmp_path / "artifacts"
    root.mkdir()
    for stage in tiny_chain.iterdir():
        if stage.is_dir() and stage.name != "aliases":
            (root / stage.name).symlink_to(stage)
    aliases = root / "aliases"
    aliases.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(aliases)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small file system here: {mounted.stderr.decode().strip()}")
    try:
        yield root
    finally:
        subprocess.run(["umount", str(aliases)], check=True)


def test_moving_an_alias_on_a_full_disk_is_one_line_and_leaves_it_as_it_was(root_with_small_aliases_disk):
    """`lookalike promote` on a full disk printed a 45-line traceback."""
    root = root_with_small_aliases_disk
    stages = {stage: next((root / stage).glob("*/manifest.json")).parent.name for stage in ("encoder", "index")}
    set_alias(root, "production", stages, {"command": "before the disk filled"})
    before = {path.name: path.read_bytes() for path in (root / "aliases").iterdir()}
    filler = root / "aliases" / "filler"
    with open(filler, "wb", buffering=0) as fh, pytest.raises(OSError):  # fill it to its last block
        while True:
            fh.write(b"\0" * 4096)

    with pytest.raises(ArtifactStorageError) as caught:
        set_alias(root, "production", stages, {"command": "lookalike promote"})
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"cannot write the alias 'production' under {root}")
    assert "No space left on device" in message and "free disk space" in message
    filler.unlink()
    assert {path.name: path.read_bytes() for path in (root / "aliases").iterdir()} == before  # no temp files
    assert read_alias(root, "production").source == {"command": "before the disk filled"}

    set_alias(root, "production", stages, {"command": "lookalike promote"})  # space freed
    assert read_alias(root, "production").source == {"command": "lookalike promote"}
