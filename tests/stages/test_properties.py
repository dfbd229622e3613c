"""Property-based: whatever settings or small image sets come in, lookalike either works or
fails with one of its own error types (one clear line), never a raw traceback."""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from lookalike.core.errors import LookalikeError
from lookalike.core.settings import SettingsError, load_settings

FIELDS = {
    "encoder.epochs": st.one_of(st.integers(-3, 3), st.text(max_size=4)),
    "encoder.method": st.sampled_from(["dino", "simclr", "byol", "mae", "", "DINO"]),
    "encoder.input_size": st.one_of(st.integers(-8, 64), st.floats(allow_nan=True)),
    "encoder.lr": st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-1, 1)),
    "embeddings.shard_size": st.integers(-2, 5000),
    "index.type": st.sampled_from(["flat-l2", "hnsw", "IVF4,Flat", "ip:HNSW8", "nonsense", "xx:Flat", ""]),
    "dataset.max_unreadable_fraction": st.one_of(st.floats(-1, 2), st.just(float("nan"))),
    "tracking.mode": st.sampled_from(["auto", "offline", "online", "disabled", "cloud"]),
    "mirror.url": st.one_of(st.none(), st.sampled_from(["s3://b/p", "http://x", "s3://"])),
    "encoder.epochs_typo": st.integers(0, 2),
}


@settings(max_examples=150, deadline=None)
@given(st.fixed_dictionaries({}, optional=FIELDS))
def test_any_settings_either_load_or_fail_with_one_line_per_field(overrides):
    try:
        load_settings(overrides)
    except SettingsError as exc:
        lines = str(exc).splitlines()
        assert lines[0] == "invalid settings:"
        assert all(": " in line for line in lines[1:]) and len(lines) >= 2


MODES = ["RGB", "L", "RGBA", "P", "CMYK", "I;16", "1", "LA", "PA"]


@st.composite
def image_file(draw) -> tuple[bytes, str]:
    """(encoded bytes, file extension): odd sizes, modes and formats, sometimes truncated."""
    width = draw(st.sampled_from([1, 2, 3, 7, 16, 33, 200]))
    height = draw(st.sampled_from([1, 2, 5, 16, 40, 200]))
    mode = draw(st.sampled_from(MODES))
    fmt = draw(st.sampled_from(["PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP"]))
    ext = {"JPEG": "jpg"}.get(fmt, fmt.lower())
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8), "RGB")
    img = img.convert("I;16") if mode == "I;16" else img.convert(mode)
    data = None
    for fmt, ext in ((fmt, ext), ("PNG", "png"), ("TIFF", "tiff")):  # noqa: B007, B020 (the first format that holds this mode)
        buf = io.BytesIO()
        try:
            img.save(buf, fmt)
        except (OSError, ValueError, KeyError):
            continue
        data = buf.getvalue()
        break
    if data is None:
        buf, ext = io.BytesIO(), "png"
        img.convert("RGB").save(buf, "PNG")
        data = buf.getvalue()
    if draw(st.integers(0, 9)) == 0:  # now and then, damage it
        data = data[: draw(st.integers(0, len(data)))]
    return data, ext


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("props")


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(images=st.lists(image_file(), min_size=0, max_size=7))
def test_any_small_image_set_indexes_with_perfect_self_retrieval_or_fails_clearly(images, workdir):
    from lookalike.stages.dataset.stage import run_dataset_stage
    from lookalike.stages.embeddings.stage import run_embeddings_stage
    from lookalike.stages.encoder.stage import run_encoder_stage
    from lookalike.stages.index.stage import run_index_stage

    case = workdir / uuid.uuid4().hex[:8]
    folder = case / "images"
    folder.mkdir(parents=True)
    for i, (data, ext) in enumerate(images):
        (folder / f"{i}.{ext}").write_bytes(data)
    cfg = load_settings(
        {
            "dataset.source": str(folder),
            "dataset.max_unreadable_fraction": 1.0,
            "encoder.epochs": 0,
            "encoder.input_size": 16,
            "embeddings.shard_size": 3,
            "embeddings.batch_size": 2,
            "artifacts_root": str(case / "artifacts"),
        }
    )
    root = cfg.artifacts_root
    try:
        dataset = run_dataset_stage(cfg.dataset, root).manifest
        encoder = run_encoder_stage(cfg.encoder, dataset, root).manifest
        embeddings = run_embeddings_stage(cfg.embeddings, dataset, encoder, root).manifest
        index = run_index_stage(cfg.index, embeddings, root).manifest
    except LookalikeError as exc:
        assert "\n" not in str(exc) and str(exc)
        return
    assert index.stats["self_retrieval_at_1"] == 1.0
    assert index.stats["ntotal"] == dataset.stats["n_images"] == len(images) - dataset.stats["n_skipped"]
