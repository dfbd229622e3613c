"""Broken and hostile inputs through `lookalike` itself: clear errors, nothing lost, nothing executed."""

from __future__ import annotations

import io
import json
import os
import resource
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY, make_png, run_cli
from PIL import Image

from lookalike.core.manifest import find_manifest, sha256_file

SETS = [arg for key, value in TINY.items() if key != "dataset.limit" for arg in ("--set", f"{key}={value}")]


SERVER: dict[str, str] = {}


@pytest.fixture(scope="module", autouse=True)
def shared_server(prefect_api_url):
    """The session's Prefect server: these runs are about inputs, not about the temporary server
    `lookalike` starts on its own (test_cli and test_resume cover that), which would add ~8 s each."""
    SERVER["api_url"] = prefect_api_url
    yield
    SERVER.clear()


def lookalike(*args, home: Path, env_extra=None, faults=None):
    return run_cli(*args, home=home, api_url=SERVER["api_url"], faults=faults, env_extra=env_extra)


def one_line_error(proc, code: int = 1) -> str:
    """The run failed with `code` and said why in one `error:` line, without a traceback."""
    assert proc.returncode == code, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0]


def summary_of(proc) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- images -----------------------------------------------------------------------------------


def jpeg_bytes(mode="RGB", size=(24, 16), **save) -> bytes:
    rng = np.random.default_rng(size[0] * 31 + size[1])
    img = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8), "RGB").convert(mode)
    buf = io.BytesIO()
    img.save(buf, "JPEG", **save)
    return buf.getvalue()


def bomb_png(side: int = 100_000) -> bytes:
    """A valid PNG header declaring side x side pixels (30 GB decoded) with almost no data."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def odd_but_valid(folder: Path) -> list[str]:
    """Images that must be decoded, not skipped."""
    (folder / "cmyk.jpg").write_bytes(jpeg_bytes("CMYK"))
    Image.fromarray(np.arange(400, dtype=np.uint16).reshape(20, 20) * 150).save(folder / "gray16.png")
    palette = Image.new("P", (20, 20))
    palette.putpalette([i % 256 for i in range(768)])
    palette.info["transparency"] = 0
    palette.save(folder / "palette-alpha.png", transparency=0)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees
    (folder / "exif-rotated.jpg").write_bytes(jpeg_bytes("RGB", exif=exif.tobytes()))
    return ["cmyk.jpg", "gray16.png", "palette-alpha.png", "exif-rotated.jpg"]


def broken(folder: Path) -> dict[str, str]:
    """name -> a word the skip reason must contain."""
    good_jpeg = jpeg_bytes()
    files = {
        "truncated-1.jpg": (good_jpeg[: len(good_jpeg) // 2], "decode"),
        "truncated-2.jpg": (good_jpeg[:200], "decode"),
        "zero-1.jpg": (b"", "empty"),
        "zero-2.png": (b"", "empty"),
        "text-1.jpg": (b"this is not an image\n" * 20, "not a recognised image"),
        "text-2.jpg": (b"<html><body>404</body></html>", "not a recognised image"),
        "bomb-1.png": (bomb_png(), "decompression bomb"),
        "bomb-2.png": (bomb_png(60_000), "decompression bomb"),
        "noise.png": (os.urandom(2048), "not a recognised image"),
        "png-header-only.png": (b"\x89PNG\r\n\x1a\n", "not a recognised image"),
    }
    for name, (data, _) in files.items():
        (folder / name).write_bytes(data)
    return {name: word for name, (_, word) in files.items()}


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    """100 good images (4 of them odd but valid) and 10 broken ones, run once through the CLI."""
    home = tmp_path_factory.mktemp("messy")
    folder = home / "photos"
    folder.mkdir()
    valid = odd_but_valid(folder)
    for i in range(100 - len(valid)):
        make_png(folder / f"good-{i:03d}.png", i, size=20 + i % 7)
    expected = broken(folder)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = lookalike(
        "run", "--json", "--dataset", str(folder), "--artifacts-root", str(home / "artifacts"), *SETS, home=home
    )
    peak_kib = max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return home, proc, expected, peak_kib


def test_a_messy_folder_completes_and_reports_exactly_the_broken_images(messy):
    home, proc, expected, _ = messy
    summary = summary_of(proc)
    assert summary["metrics"]["n_skipped"] == 10
    assert summary["metrics"]["n_images"] == 100
    assert summary["metrics"]["self_retrieval_at_1"] == 1.0
    listed = {Path(s["path"]).name: s["reason"] for s in summary["skipped"]}
    assert set(listed) == set(expected)
    for name, word in expected.items():
        assert word in listed[name], (name, listed[name])
    manifest = find_manifest(home / "artifacts", "dataset", summary["stages"]["dataset"]["key"])
    assert {Path(s["path"]).name: s["reason"] for s in manifest.stats["skipped"]} == listed
    assert "skipped 10 unreadable" not in proc.stdout  # --json prints only the JSON line


def test_skipped_images_are_listed_in_the_wandb_run(messy):
    home, proc, expected, _ = messy
    run_dir = Path(summary_of(proc)["artifacts"]["wandb_run_dir"])
    tables = list(run_dir.rglob("*skipped*.table.json"))
    assert tables, sorted(p.name for p in run_dir.rglob("*"))
    table = json.loads(tables[0].read_text())
    assert table["columns"] == ["row_id", "path", "reason"]
    assert {Path(row[1]).name for row in table["data"]} == set(expected)


def test_decompression_bombs_cost_no_memory(messy):
    _, proc, _, peak_kib = messy
    summary_of(proc)
    assert peak_kib < 4 * 1024 * 1024, f"peak RSS {peak_kib / 1024:.0f} MiB"  # decoding one bomb needs 30 GB


def test_human_output_lists_the_skipped_files(messy, tmp_path):
    home, _, _, _ = messy
    again = lookalike(
        "run", "--dataset", str(home / "photos"), "--artifacts-root", str(home / "artifacts"), *SETS, home=home
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert "skipped 10 unreadable image(s)" in again.stdout
    assert "bomb-1.png: decompression bomb" in again.stdout


def test_too_many_unreadable_images_stop_early_naming_the_fraction_and_examples(tmp_path):
    folder = tmp_path / "photos"
    for i in range(8):
        make_png(folder / f"ok-{i}.png", i)
    for i in range(4):
        (folder / f"bad-{i}.jpg").write_bytes(b"nope")
    line = one_line_error(
        lookalike("run", "--dataset", str(folder), "--artifacts-root", str(tmp_path / "a"), *SETS, home=tmp_path)
    )
    assert "more than 10% of 12 images are unreadable" in line and "bad-0.jpg" in line
    assert "max_unreadable_fraction" in line.replace("MAX_UNREADABLE_FRACTION", "max_unreadable_fraction")
    assert not list((tmp_path / "a").glob("dataset/*/manifest.json"))


def test_empty_folder_names_the_minimum(tmp_path):
    (tmp_path / "empty").mkdir()
    line = one_line_error(
        lookalike(
            "run", "--dataset", str(tmp_path / "empty"), "--artifacts-root", str(tmp_path / "a"), *SETS, home=tmp_path
        )
    )
    assert "contains no image files" in line and "at least 1 readable image" in line
    assert not (tmp_path / "a").exists(), "found before anything ran: nothing is created"


def test_a_table_without_the_image_column_names_its_columns(tmp_path):
    (tmp_path / "catalogue.csv").write_text("file,kind\nimgs/0.png,cat\n")
    line = one_line_error(
        lookalike(
            "run", "--dataset", str(tmp_path / "catalogue.csv"), "--artifacts-root", str(tmp_path / "a"), home=tmp_path
        )
    )
    assert "has no image column 'image'; its columns are: file, kind (use --set dataset.image_column=NAME" in line
    assert not (tmp_path / "a").exists(), "found before anything ran: nothing is created"


def test_too_few_images_for_an_ivf_index_names_the_minimum(tmp_path):
    line = one_line_error(
        lookalike(
            "run",
            "--index",
            "IVF64,Flat",
            "--set",
            "dataset.limit=48",
            "--artifacts-root",
            str(tmp_path / "a"),
            *SETS,
            home=tmp_path,
        )
    )
    assert "cannot be trained on 48 vectors" in line and "at least as large as number of clusters (64)" in line


def test_hub_dataset_while_offline_says_how_to_use_local_data(tmp_path):
    line = one_line_error(
        lookalike(
            "run",
            "--dataset",
            "someone/photos",
            "--artifacts-root",
            str(tmp_path / "a"),
            *SETS,
            home=tmp_path,
            env_extra={"HF_HUB_OFFLINE": "1"},
        )
    )
    assert "hub" in line and "local image folder" in line


def test_invalid_settings_are_one_line_each_exit_2_and_start_nothing(tmp_path):
    proc = lookalike(
        "run",
        "--epochs",
        "-1",
        "--set",
        "encoder.method=mae",
        "--index",
        "NoSuchIndex",
        "--artifacts-root",
        str(tmp_path / "a"),
        home=tmp_path,
        env_extra={"LOOKALIKE_ENCODR__EPOCHS": "2"},
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    text = proc.stderr
    for needle in ("encoder.epochs", "encoder.method", "index.type", "LOOKALIKE_ENCODR__EPOCHS"):
        assert sum(needle in line for line in text.splitlines()) == 1, (needle, text)
    assert not (tmp_path / "a").exists() and not (tmp_path / "prefect").exists()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    home = tmp_path_factory.mktemp("built")
    root = home / "artifacts"
    summary = summary_of(
        lookalike("run", "--json", "--set", "dataset.limit=48", "--artifacts-root", str(root), *SETS, home=home)
    )
    return home, root, summary


def copy_of(built, tmp_path) -> tuple[Path, Path, dict]:
    home, root, summary = built
    shutil.copytree(root, tmp_path / "artifacts", ignore=shutil.ignore_patterns("wandb", "cache", ".*.lock"))
    return tmp_path, tmp_path / "artifacts", summary


@pytest.mark.parametrize(
    "stage,name,command",
    [
        ("encoder", "encoder.pt", "run"),
        ("index", "index.faiss", "query"),
    ],
)
def test_a_tampered_stage_file_is_refused_before_loading(built, tmp_path, stage, name, command):
    home, root, summary = copy_of(built, tmp_path)
    if command == "run":  # make the run need the encoder: its downstream stages are gone
        for downstream in ("embeddings", "index", "evaluation"):
            shutil.rmtree(root / downstream)
    path = root / stage / summary["stages"][stage]["key"] / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    args = ["--set", "dataset.limit=48", "--artifacts-root", str(root), *SETS]
    args = ["run", *args] if command == "run" else ["query", "--row", "0", *args]
    line = one_line_error(lookalike(*args, home=home))
    assert name in line and "sha256" in line and "delete" in line


def forge_hash_chain(root: Path, summary: dict, from_stage: str) -> None:
    """Rewrite the sha256 every stage after `from_stage` recorded of its inputs' manifests, as a forger
    with write access to the whole root would, so that only the checks below the hash chain remain."""
    from lookalike.core.manifest import manifest_sha256

    stages = list(summary["stages"])
    for stage in stages[stages.index(from_stage) + 1 :]:
        path = root / stage / summary["stages"][stage]["key"] / "manifest.json"
        manifest = json.loads(path.read_text())
        for name, key in manifest["inputs"].items():
            if name in manifest.get("input_sha256", {}):
                upstream = "dataset" if name == "queries" else name
                manifest["input_sha256"][name] = manifest_sha256(root, upstream, key)
        path.write_text(json.dumps(manifest))


def test_a_pickle_in_place_of_a_checkpoint_is_never_executed(built, tmp_path):
    """Even with the manifest rewritten to match, torch.load(weights_only=True) refuses it."""
    home, root, summary = copy_of(built, tmp_path)
    folder = root / "encoder" / summary["stages"]["encoder"]["key"]
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    import torch

    torch.save({"spec": {}, "state_dict": Payload()}, folder / "encoder.pt", _use_new_zipfile_serialization=True)
    manifest = json.loads((folder / "manifest.json").read_text())
    for entry in manifest["files"]:
        if entry["path"] == "encoder.pt":
            entry["sha256"], entry["bytes"] = sha256_file(folder / "encoder.pt"), (folder / "encoder.pt").stat().st_size
    (folder / "manifest.json").write_text(json.dumps(manifest))
    forge_hash_chain(root, summary, from_stage="encoder")  # a forger who rewrites every recorded sha256 too
    query_image = make_png(tmp_path / "query.png", 99)  # a query image needs the encoder loaded
    line = one_line_error(
        lookalike(
            "query", str(query_image), "--set", "dataset.limit=48", "--artifacts-root", str(root), *SETS, home=home
        )
    )
    assert "weights-only" in line and "refusing" in line
    assert not marker.exists()  # the pickle's os.system call never ran


def test_duplicate_images_are_all_indexed_and_each_finds_itself(tmp_path):
    folder = tmp_path / "photos"
    for i in range(6):
        make_png(folder / f"img-{i}.png", i)
    for i in range(3):
        (folder / f"copy-{i}.png").write_bytes((folder / f"img-{i}.png").read_bytes())
    summary = summary_of(
        lookalike(
            "run", "--json", "--dataset", str(folder), "--artifacts-root", str(tmp_path / "a"), *SETS, home=tmp_path
        )
    )
    assert summary["metrics"]["n_images"] == 9 and summary["metrics"]["n_skipped"] == 0
    assert summary["metrics"]["self_retrieval_at_1"] == 1.0


def test_secrets_in_the_environment_never_reach_any_output(tmp_path, s3_endpoint):
    from lookalike.artifacts.s3 import s3_client

    secrets = {"WANDB_API_KEY": "wandb-secret-" + "7" * 28, "AWS_SECRET_ACCESS_KEY": "aws-secret-Kq9ZpXw3vT"}
    s3_client(s3_endpoint).create_bucket(Bucket="secrets")
    proc = lookalike(
        "run",
        "--json",
        "--set",
        "dataset.limit=48",
        "--set",
        "tracking.mode=offline",
        "--mirror",
        "s3://secrets/x",
        "--set",
        f"mirror.endpoint_url={s3_endpoint}",
        "--artifacts-root",
        str(tmp_path / "a"),
        *SETS,
        home=tmp_path,
        env_extra=secrets,
    )
    summary = summary_of(proc)
    assert summary["artifacts"]["mirror"][0]["uploaded"] >= 1  # the AWS secret was really used
    for value in secrets.values():
        assert value not in proc.stdout and value not in proc.stderr
        for path in tmp_path.rglob("*"):  # artifacts (manifests, W&B run), Prefect DB and results
            if path.is_file():
                assert value.encode() not in path.read_bytes(), path


def test_disk_full_while_embedding_is_one_line_and_the_next_run_resumes(built, tmp_path):
    home, root, summary = copy_of(built, tmp_path)
    for stage in ("embeddings", "index", "evaluation"):
        shutil.rmtree(root / stage)
    args = ["run", "--json", "--set", "dataset.limit=48", "--artifacts-root", str(root), *SETS]
    line = one_line_error(lookalike(*args, home=home, faults={"disk_full_at_shard": 1}))
    assert "No space left on device" in line and "free disk space" in line
    assert not list(root.glob("embeddings/*/manifest.json"))
    again = summary_of(lookalike(*args, home=home))
    assert again["stages"]["embeddings"]["status"] == "resumed"
    assert again["stages"]["index"]["key"] == summary["stages"]["index"]["key"]


def test_read_only_artifacts_root_is_one_line(tmp_path):
    line = one_line_error(
        lookalike(
            "run",
            "--set",
            "dataset.limit=48",
            "--artifacts-root",
            str(tmp_path / "a"),
            *SETS,
            home=tmp_path,
            faults={"read_only_root": True},
        )
    )
    assert "Read-only file system" in line and "writable folder" in line
