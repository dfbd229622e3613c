import os
from pathlib import Path

import pytest
from helpers import make_png

from lookalike.core.settings import DatasetSettings
from lookalike.stages.dataset.content_hashes import hash_listing, memo_path
from lookalike.stages.dataset.listing import list_files, one_listing_per_run
from lookalike.stages.dataset.stage import dataset_key, open_snapshot, run_dataset_stage


def collection(folder: Path, n: int = 6) -> Path:
    for i in range(n):
        make_png(folder / ("cats" if i % 2 else "dogs") / f"{i}.png", i)
    return folder


def test_the_memo_rehashes_a_file_whose_size_or_mtime_changed_and_nothing_else(tmp_path):
    folder = collection(tmp_path / "imgs")
    memo = memo_path(tmp_path / "artifacts")
    first = hash_listing(list_files(folder), memo)
    assert (first.hashed, first.reused) == (6, 0)
    assert (hash_listing(list_files(folder), memo).hashed) == 0

    grown = folder / "cats" / "1.png"
    grown.write_bytes(grown.read_bytes() + b"\0")  # size moves
    touched = folder / "dogs" / "2.png"
    stat = touched.stat()
    os.utime(touched, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # mtime moves, bytes do not
    again = hash_listing(list_files(folder), memo)
    assert (again.hashed, again.reused) == (2, 4)
    changed = {f.rel: sha for f, sha in zip(again.files, again.hashes)}
    before = {f.rel: sha for f, sha in zip(first.files, first.hashes)}
    assert changed["cats/1.png"] != before["cats/1.png"] and changed["dogs/2.png"] == before["dogs/2.png"]


def test_verify_full_catches_an_edit_that_kept_size_and_mtime(tmp_path):
    folder = collection(tmp_path / "imgs")
    root = tmp_path / "artifacts"
    key = dataset_key(DatasetSettings(source=str(folder)), root)[0]
    edited = folder / "dogs" / "0.png"
    stat = edited.stat()
    data = bytearray(edited.read_bytes())
    data[-5] ^= 0xFF  # inside the PNG's IEND chunk CRC: same size, different bytes
    edited.write_bytes(bytes(data))
    os.utime(edited, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert dataset_key(DatasetSettings(source=str(folder)), root)[0] == key  # the memo trusts size + mtime
    assert dataset_key(DatasetSettings(source=str(folder), verify="full"), root)[0] != key
    # and the memo learnt the new content: the default now sees it too
    assert dataset_key(DatasetSettings(source=str(folder)), root)[0] != key


def test_a_file_that_vanishes_while_the_key_is_computed_is_left_out_and_counted(tmp_path):
    folder = collection(tmp_path / "imgs")
    section = DatasetSettings(source=str(folder))
    with one_listing_per_run():
        list_files(folder)
        (folder / "cats" / "3.png").unlink()  # a sync removes it between the listing and its hash
        with pytest.warns(UserWarning, match=r"1 file\(s\) of .* left out of the dataset key.*cats/3.png: vanished"):
            during = dataset_key(section, tmp_path / "artifacts")[0]
    assert during == dataset_key(section, tmp_path / "artifacts")[0]  # as if it had never been listed


def test_a_file_edited_between_the_key_and_its_snapshot_is_skipped_with_the_reason(tmp_path, root):
    folder = collection(tmp_path / "imgs")
    section = DatasetSettings(source=str(folder), max_unreadable_fraction=0.5)
    edited = folder / "dogs" / "4.png"
    with one_listing_per_run():  # as in a flow run: the task's cache key first, its body later
        dataset_key(section, root)
        make_png(edited, 99)
        result = run_dataset_stage(section, root)
    stats = result.manifest.stats
    assert stats["n_images"] == 5 and stats["skipped"][0]["path"] == str(edited)
    assert stats["skipped"][0]["reason"].startswith("changed after it was listed")
    assert len(open_snapshot(root, result.manifest)) == 5
