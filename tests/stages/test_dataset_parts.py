"""Dataset versions stored as content-addressed parts shared between versions."""

import shutil

import pytest
from helpers import make_png

from lookalike.core.manifest import IntegrityError, find_manifest, write_manifest
from lookalike.core.settings import DatasetSettings
from lookalike.stages.dataset.stage import open_snapshot, run_dataset_stage


@pytest.fixture
def small_parts(monkeypatch):
    from lookalike.stages.dataset import parts

    # ~4 rows a part, so a 40-image folder is ~10 parts (the default is ~1,000 rows a part)
    monkeypatch.setattr(parts, "TARGET_ROWS", 4)


def photos(folder, values):
    for v in values:
        make_png(folder / ("cats" if v % 2 else "dogs") / f"{v:03d}.png", v)
    return folder


def content(root, manifest):
    snapshot = open_snapshot(root, manifest)
    images = snapshot["image"]
    return {
        "row_id": snapshot["row_id"],
        "sha256": snapshot["sha256"],
        "label": snapshot["label"],
        "bytes": [i["bytes"] for i in images],
        "path": [i["path"] for i in images],
    }


def test_a_grown_collection_writes_only_the_parts_its_new_images_land_in(tmp_path, root, small_parts):
    folder = photos(tmp_path / "photos", range(60))  # 30 cats (odd), 30 dogs (even)
    first = run_dataset_stage(DatasetSettings(source=str(folder)), root).manifest
    assert first.stats["storage"]["parts_written"] == first.stats["storage"]["parts"] > 8
    full = first.stats["storage"]["bytes_written"]

    photos(folder, [61, 63])  # two new cats after the last one: the part they follow is reused whole
    make_png(folder / "dogs" / "025.png", 25)  # and one new dog between 024 and 026: its part is written again
    second = run_dataset_stage(DatasetSettings(source=str(folder)), root).manifest
    storage = second.stats["storage"]
    assert second.key != first.key and second.stats["n_images"] == 63
    assert 2 <= storage["parts_written"] <= 4
    assert storage["parts_reused"] == storage["parts"] - storage["parts_written"] >= first.stats["storage"]["parts"] - 2
    assert storage["bytes_written"] < 0.25 * full

    # and the grown version holds exactly what a first snapshot of the grown folder holds
    fresh = tmp_path / "fresh"
    alone = run_dataset_stage(DatasetSettings(source=str(folder)), fresh).manifest
    assert alone.stats["storage"]["parts_reused"] == 0
    assert content(root, second) == content(fresh, alone)


def test_a_version_written_as_parts_opens_like_one_written_as_images_arrow(tmp_path, root):
    from datasets.arrow_writer import ArrowWriter

    folder = photos(tmp_path / "photos", range(6))
    manifest = run_dataset_stage(DatasetSettings(source=str(folder)), root).manifest
    assert {f.path for f in manifest.files} == {"rows.arrow", "parts.json"}
    snapshot = open_snapshot(root, manifest)

    old = root / "dataset" / "0123456789abcdef"  # a folder as versions before parts wrote it
    old.mkdir(parents=True)
    writer = ArrowWriter(features=snapshot.features, path=str(old / "images.arrow"))
    writer.write_table(snapshot.data.table)
    writer.finalize()
    writer.close()
    legacy = write_manifest(
        old,
        stage="dataset",
        key=old.name,
        code_version=1,
        settings={},
        inputs={},
        files=["images.arrow"],
        stats={},
        timings={},
    )
    assert content(root, legacy) == content(root, manifest)
    assert open_snapshot(root, legacy).column_names == snapshot.column_names == ["row_id", "image", "sha256", "label"]


def test_a_missing_or_damaged_part_is_one_line_naming_what_to_delete(tmp_path, root):
    folder = photos(tmp_path / "photos", range(6))
    manifest = run_dataset_stage(DatasetSettings(source=str(folder)), root).manifest
    (part,) = (root / "dataset" / "parts").glob("*.arrow")
    version = root / "dataset" / manifest.key

    part.write_bytes(part.read_bytes()[:-10])
    with pytest.raises(IntegrityError) as damaged:
        open_snapshot(root, manifest)
    assert "\n" not in str(damaged.value) and f"{part} has" in str(damaged.value)
    assert f"delete {version} and re-run" in str(damaged.value)

    part.unlink()
    with pytest.raises(IntegrityError, match=f"{part} is missing.*delete {version} and re-run"):
        open_snapshot(root, manifest)

    shutil.rmtree(version)  # the fix the message gives writes the part again
    again = run_dataset_stage(DatasetSettings(source=str(folder)), root).manifest
    assert again.stats["storage"]["parts_written"] == 1 and len(open_snapshot(root, again)) == 6
    assert find_manifest(root, "dataset", again.key) is not None


def test_a_version_installed_in_another_root_is_grown_there_from_its_parts(tmp_path, root, small_parts):
    """As a fresh machine of a shared s3:// root gets a version: its parts come with their records, so the
    next version built there reuses them instead of reading and writing every image again."""
    from lookalike.core.manifest import MANIFEST, install_stage

    folder = photos(tmp_path / "photos", range(30))
    first = run_dataset_stage(DatasetSettings(source=str(folder)), root).manifest
    origin, other = root / "dataset" / first.key, tmp_path / "other"
    install_stage(
        other,
        (origin / MANIFEST).read_bytes(),
        lambda name, tmp: shutil.copyfile(origin / name, tmp),
        f"{origin}/",
        expect=("dataset", first.key),
        fetch_part=lambda name, tmp: shutil.copyfile(root / "dataset" / "parts" / name, tmp),
    )
    assert content(other, first) == content(root, first)

    photos(folder, [31, 33])
    grown = run_dataset_stage(DatasetSettings(source=str(folder)), other).manifest
    assert grown.stats["storage"]["parts_reused"] == first.stats["storage"]["parts"]
    assert grown.stats["storage"]["parts_written"] <= 2 and grown.stats["n_images"] == 32  # the two new images


def _cut_row_by_row(paths, shas, sizes):
    """Where the chunker's rules, applied one row at a time, end each part."""
    from lookalike.stages.dataset.parts import Candidate, closes_part, starts_part

    cuts, start, rows, size = [], 0, 0, 0
    for i, (path, sha, n) in enumerate(zip(paths, shas, sizes)):
        if rows and starts_part(Candidate(paths[i - 1], ""), Candidate(path, sha), rows):
            cuts.append((start, i))
            start, rows, size = i, 0, 0
        rows, size = rows + 1, size + n
        if closes_part(Candidate(path, sha), rows, size):
            cuts.append((start, i + 1))
            start, rows, size = i + 1, 0, 0
    return cuts + ([(start, len(paths))] if rows else [])


@pytest.mark.parametrize("target", [4, 6, 64])
def test_parts_cut_from_whole_columns_end_where_the_row_by_row_rules_end_them(monkeypatch, target):
    import hashlib
    import random

    from lookalike.stages.dataset import parts

    monkeypatch.setattr(parts, "TARGET_ROWS", target)
    monkeypatch.setattr(parts, "MAX_ROWS", 3 * target)
    monkeypatch.setattr(parts, "MAX_BYTES", 40_000)
    rng = random.Random(target)
    for trial in range(30):
        n = rng.randrange(0, 400)
        folders = sorted(rng.choice(["/c/a", "/c/b", "/c//a", "/d", "/c/a/x"]) for _ in range(n))
        paths = [None if rng.random() < 0.02 else f"{folder}/{i}.png" for i, folder in enumerate(folders)]
        shas = ["" if rng.random() < 0.02 else hashlib.sha256(b"%d %d" % (trial, i)).hexdigest() for i in range(n)]
        sizes = [rng.choice([0, 500, 9_000]) for _ in range(n)]
        cuts = parts.part_cuts(paths, shas, sizes)
        assert cuts == _cut_row_by_row(paths, shas, sizes)
        ids = parts.range_ids(paths, shas, cuts, 1000)
        assert ids == [parts.part_id([parts.Candidate(paths[i], shas[i]) for i in range(a, b)], 1000) for a, b in cuts]


def test_a_part_id_from_the_rows_buffer_is_the_one_part_id_gives_for_any_name():
    from lookalike.stages.dataset.parts import Candidate, part_id, range_ids

    paths = ["/a/é.png", '/a/"q".png', "/a/b\\c\n.png", "/a/\udce9.png", None, "/a/😀.png"]
    shas = [f"{i:064x}" for i in range(6)]
    cuts = [(0, 6), (1, 3), (3, 6), (2, 2)]
    assert range_ids(paths, shas, cuts, 7) == [
        part_id([Candidate(paths[i], shas[i]) for i in range(a, b)], 7) for a, b in cuts
    ]


def test_a_part_whose_image_changed_is_written_again_and_the_rest_taken_whole(tmp_path, root, small_parts):
    import os

    folder = photos(tmp_path / "photos", range(40))
    first = run_dataset_stage(DatasetSettings(source=str(folder)), root).manifest
    changed = folder / "dogs" / "010.png"
    make_png(changed, 99)  # new content under the same name
    os.utime(changed, ns=(1, 1))
    second = run_dataset_stage(DatasetSettings(source=str(folder)), root).manifest
    storage = second.stats["storage"]
    # its part (and the one after, where its new sha256 moved where that part ends) is written again
    assert second.key != first.key and 1 <= storage["parts_written"] <= 2
    assert storage["parts_reused"] >= first.stats["storage"]["parts"] - 2

    fresh = tmp_path / "fresh"
    alone = run_dataset_stage(DatasetSettings(source=str(folder)), fresh).manifest
    assert content(root, second) == content(fresh, alone)
    assert changed.read_bytes() in content(root, second)["bytes"]


def test_a_part_taken_whole_is_not_read_again(tmp_path, root, small_parts):
    """A part the root holds is found by the sha256 the key has for its images (the content-hash memo's): its
    images are not opened again, so the version holds what was checked when the part was written."""
    import os

    folder = photos(tmp_path / "photos", range(40))
    first = run_dataset_stage(DatasetSettings(source=str(folder)), root).manifest
    kept = folder / "cats" / "011.png"
    before, stat = kept.read_bytes(), kept.stat()
    kept.write_bytes(b"x" * len(before))  # same size and times: the memo keeps its hash (dataset.verify=full would not)
    os.utime(kept, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    photos(folder, [41])
    second = run_dataset_stage(DatasetSettings(source=str(folder)), root).manifest
    assert second.stats["n_images"] == 41 and second.stats["n_skipped"] == 0
    assert second.stats["storage"]["parts_reused"] >= first.stats["storage"]["parts"] - 1
    assert before in content(root, second)["bytes"]


def test_an_unreadable_image_in_a_part_taken_whole_is_skipped_again_with_its_reason(tmp_path, root, small_parts):
    folder = photos(tmp_path / "photos", range(30))
    (folder / "cats" / "015.png").write_bytes(b"not an image")
    first = run_dataset_stage(DatasetSettings(source=str(folder)), root).manifest
    photos(folder, [31])
    second = run_dataset_stage(DatasetSettings(source=str(folder)), root).manifest
    assert second.stats["storage"]["parts_reused"] >= first.stats["storage"]["parts"] - 1
    assert (first.stats["n_skipped"], second.stats["n_skipped"], second.stats["n_images"]) == (1, 1, 30)
    assert second.stats["skipped"] == first.stats["skipped"]
    assert second.stats["skipped"][0]["path"].endswith("015.png")


def test_shapes_are_counted_from_records_with_counts_and_from_records_listing_each_image():
    from lookalike.stages.dataset.parts import recorded_shapes

    counted = {"rows": 3, "shape_counts": [[28, 28, "L", 2], [30, 20, "RGB", 1]]}
    listed = {"rows": 2, "shapes": [[30, 20, "RGB"], [28, 28, "L"]]}  # as records were written before counts
    assert recorded_shapes([counted, listed]) == [(28, 28, "L", 3), (30, 20, "RGB", 2)]
    assert recorded_shapes([counted, {"rows": 2}]) is None  # a record without shapes: headers are read


def test_a_parted_snapshot_pickles_as_its_files_and_unpickles_to_the_same_rows(tmp_path, root, small_parts):
    # DataLoader workers receive the snapshot pickled: replaying each part's blocks took 335 s at 1M rows
    import copy
    import pickle

    from datasets.table import MemoryMappedTable

    manifest = run_dataset_stage(DatasetSettings(source=str(photos(tmp_path / "photos", range(40)))), root).manifest
    snapshot = open_snapshot(root, manifest)
    assert manifest.stats["storage"]["parts"] > 5

    replayed = []
    original = MemoryMappedTable.__setstate__
    MemoryMappedTable.__setstate__ = lambda self, state: (replayed.append(state["path"]), original(self, state))[1]
    try:
        again = pickle.loads(pickle.dumps(snapshot))
    finally:
        MemoryMappedTable.__setstate__ = original
    assert replayed == []  # assembled from its files, no block replayed
    assert again[:] == snapshot[:] and again.features == snapshot.features

    # a view `datasets` derived (its own table) and a format set in place travel as `datasets` pickles them
    view = snapshot.select([3, 1, 7])
    assert pickle.loads(pickle.dumps(view))[:] == view[:] == snapshot[[3, 1, 7]]
    snapshot.set_format("numpy", columns=["row_id"])
    formatted = pickle.loads(pickle.dumps(snapshot))
    assert formatted.format == snapshot.format and list(formatted["row_id"]) == list(snapshot["row_id"])
    assert copy.deepcopy(snapshot)[:5]["row_id"].tolist() == snapshot[:5]["row_id"].tolist()
