"""`lookalike duplicates` on a folder with planted copies: 3 byte-identical files and 3 trimmed,
re-encoded near-copies among 90 distinct drawings, found after one `lookalike run`."""

import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import run_cli
from PIL import Image, ImageDraw

EXACT_OF = (3, 10, 17)  # drawings copied byte for byte
NEAR_OF = (30, 41, 52)  # drawings copied with a 2-pixel trim and a JPEG re-encode
N_DRAWINGS = 90  # fewer than 100 vectors: the index is left unwhitened, as small collections are
SETTINGS = {
    "encoder.epochs": 1,
    "encoder.input_size": 16,
    "encoder.batch_size": 16,
    "embeddings.shard_size": 64,
    "embeddings.batch_size": 32,
    "evaluation.grid_queries": 2,
    "evaluation.grid_neighbours": 3,
    "evaluation.baselines": [],
    "promotion.min_gain_over_pixels": -1.0,
    "promotion.min_gain_over_init": -1.0,
    "tracking.mode": "offline",  # a real W&B run folder: the duplicates table is read back from it
}
# what selects the index (the run-only settings above change no stage key of the chain)
SETS = [arg for key, value in SETTINGS.items() for arg in ("--set", f"{key}={json.dumps(value)}")]


def drawing(seed: int, size: int = 64) -> Image.Image:
    """A distinct picture: 3-6 filled ellipses and rectangles of random colours on a random background."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 7))):
        x0, y0 = rng.integers(-8, size, 2)
        w, h = rng.integers(8, size // 2, 2)
        shape = (draw.ellipse, draw.rectangle)[int(rng.integers(0, 2))]
        shape([int(x0), int(y0), int(x0 + w), int(y0 + h)], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return image


def trimmed_jpeg(image: Image.Image, margin: int = 2, quality: int = 90) -> bytes:
    """A near-copy unlike the calibration's: a centred trim of `margin` pixels, bicubic resize, JPEG."""
    w, h = image.size
    out = image.crop((margin, margin, w - margin, h - margin)).resize((w, h), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    out.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def plant(folder: Path) -> dict[str, set[frozenset[str]]]:
    """Write the collection; return the expected groups as sets of file names."""

    def place(i: int) -> Path:
        return folder / ("odd" if i % 2 else "even")

    for i in range(N_DRAWINGS):
        place(i).mkdir(parents=True, exist_ok=True)
        drawing(i).save(place(i) / f"img{i:03d}.png")
    exact, near = set(), set()
    for j, i in enumerate(EXACT_OF):
        (place(i) / f"exact{j}.png").write_bytes((place(i) / f"img{i:03d}.png").read_bytes())
        exact.add(frozenset({f"img{i:03d}.png", f"exact{j}.png"}))
    for j, i in enumerate(NEAR_OF):
        (place(i) / f"near{j}.jpg").write_bytes(trimmed_jpeg(drawing(i)))
        near.add(frozenset({f"img{i:03d}.png", f"near{j}.jpg"}))
    return {"exact": exact, "near": near}


def lookalike(*args, home: Path):
    return run_cli(*args, home=home, cwd=home)


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    home = tmp_path_factory.mktemp("duplicates")
    images, root = home / "images", home / "artifacts"
    expected = plant(images)
    ran = lookalike("run", "--json", "--dataset", str(images), "--artifacts-root", str(root), *SETS, home=home)
    assert ran.returncode == 0, ran.stderr[-3000:]
    where = ["--dataset", str(images), "--artifacts-root", str(root), *SETS]
    return home, where, expected, last_json(ran.stdout)


def names(group: dict) -> frozenset[str]:
    return frozenset(Path(p).name for p in group["paths"])


def test_duplicates_json_reports_exactly_the_planted_groups(planted):
    home, where, expected, _ = planted
    found = lookalike("duplicates", "--json", *where, home=home)
    assert found.returncode == 0, found.stderr[-3000:]
    report = last_json(found.stdout)
    assert {names(g) for g in report["exact_groups"]} == expected["exact"]
    assert {names(g) for g in report["near_groups"]} == expected["near"]
    assert report["n_groups"] == 6 and report["n_images_in_groups"] == 12
    assert report["calibration"]["n_sample"] == N_DRAWINGS + 6 and report["threshold"] > 0
    assert report["threshold_why"].startswith(f"{report['threshold']:.4g}: ")
    assert "augmented copies of this collection's images lie within it" in report["threshold_why"]
    for group in report["near_groups"]:  # distances from the group's first row, within the threshold
        assert group["distances"][0] == 0.0 and 0 < group["distances"][1] <= report["threshold"]
        assert set(group["labels"]) <= {"odd", "even"} and len(set(group["labels"])) == 1
    assert Path(report["picture"]).is_file()
    with Image.open(report["picture"]) as picture:
        assert picture.height > 6 * 96  # one row per group


def test_a_threshold_of_zero_prints_a_table_of_only_the_byte_identical_groups(planted):
    home, where, _, _ = planted
    shown = lookalike("duplicates", "--threshold", "0", *where, home=home)
    assert shown.returncode == 0, shown.stderr[-3000:]
    text = " ".join(shown.stdout.split())
    assert "duplicate groups" in text and "3 groups (3 exact, 0 near) hold 6 of 96 images" in text, text
    assert "0: given (--threshold), not calibrated" in text


def test_the_run_records_the_same_groups_in_its_evaluation(planted):
    _, _, expected, summary = planted
    found = summary["duplicates"]
    assert (found["n_groups"], found["n_exact_groups"], found["n_near_groups"]) == (6, 3, 3)
    assert found["n_images_in_groups"] == 12 and found["n_images"] == N_DRAWINGS + 6
    record = json.loads(Path(summary["artifacts"]["duplicates"]).read_text())
    assert {names(g) for g in record["near_groups"]} == expected["near"]
    assert Path(summary["artifacts"]["duplicates_picture"]).is_file()


@pytest.mark.parametrize(
    ("mode", "n_dropped", "kind"),  # every planted group is a pair: one image of each is dropped
    [("exact", 3, "byte-identical"), ("near", 6, "byte-identical or near-duplicate")],
)
def test_index_dedupe_indexes_one_image_per_group(planted, mode, n_dropped, kind):
    """Through the index stage on the run's own embeddings (what `--set index.dedupe=...` runs after
    three cached stages), in process: a second CLI run per mode cost the suite 8 s each."""
    from lookalike.artifacts.shared_root import read_manifest
    from lookalike.core.settings import IndexSettings
    from lookalike.stages.index.stage import run_index_stage

    _, where, _, summary = planted
    root = Path(where[where.index("--artifacts-root") + 1])
    ran = read_manifest(root, "index", summary["stages"]["index"]["key"])
    embeddings = read_manifest(root, "embeddings", summary["stages"]["embeddings"]["key"])
    section = IndexSettings(**{**ran.settings, "dedupe": mode})
    result = run_index_stage(section, embeddings, root)
    assert result.status == "computed" and result.manifest.key != ran.key
    index = result.manifest
    assert index.stats["ntotal"] == N_DRAWINGS + 6 - n_dropped
    dedupe = index.stats["dedupe"]
    assert (dedupe["mode"], dedupe["n_groups"], dedupe["n_dropped"]) == (mode, n_dropped, n_dropped)
    assert dedupe["why"] == f"{dedupe['n_groups']} groups of {kind} images: each indexed once, as its lowest row id"
    assert index.stats["ntotal"] == len(pq.read_table(str(root / "index" / index.key / "metadata.parquet")))
    if mode == "near":  # the same threshold `lookalike duplicates` calibrates on this unwhitened flat index
        assert dedupe["threshold"] == summary["duplicates"]["threshold"]


def test_the_wandb_run_logs_every_image_of_every_group_with_its_thumbnail(planted):
    from wandb_offline import read_offline_run

    _, _, expected, summary = planted
    offline = read_offline_run(summary["artifacts"]["wandb_run_dir"])
    (artifact,) = [a for a in offline["artifacts"] if a["type"] == "run_table" and a["name"].endswith("-duplicates")]
    table = json.loads(Path(artifact["files"]["duplicates.table.json"]["local_path"]).read_text())
    assert table["columns"] == ["group", "kind", "row", "image", "label", "path", "distance"]
    by_group: dict[tuple[int, str], set[str]] = {}
    for group, kind, _, image, _, path, _ in table["data"]:
        by_group.setdefault((group, kind), set()).add(Path(path).name)
        assert image["_type"] == "image-file" and (image["width"], image["height"]) == (64, 64)
        assert Path(artifact["files"][image["path"]]["local_path"]).stat().st_size > 0
    for kind in ("exact", "near"):
        assert {frozenset(v) for (_, k), v in by_group.items() if k == kind} == expected[kind]
