"""Build `camera-jpegs`: camera-sized JPEGs (1,600-4,000 px on the long side) made from the real photos
that `make_photo_copies.py` takes from pinned Debian packages, for decode-rate benchmarks (issue 40 (b)).

    .venv/bin/python benchmarks/make_camera_jpegs.py --cache /data/photo-copies-cache --out /data/camera-10k

1. Loads the photo-copies sources with `make_photo_copies.load_sources` (the same pinned, SHA256-checked
   `.deb` files and cache; `--cache` as there), each brought to at most 1,024 px on its longest side.
2. Image i is an edited copy of source i mod n (`make_photo_copies.augment`: random resized crop, rotation,
   flip, colour jitter), center-fitted up to a camera size drawn from common sensor formats (4:3, 3:2, 16:9;
   1,600 to 4,000 px long), with sensor-like grain (Gaussian, sigma 2 levels, the same on R, G and B) so the JPEG holds the detail
   a camera's does rather than an upscaled photo's smooth surfaces, saved at JPEG quality 90 with 4:2:0
   chroma (as cameras do). A quarter are portrait: half of those stored landscape with an EXIF orientation
   tag (6 or 8) as phones write them, half stored upright.
3. Writes `<out>/<source class>/cam<i>.jpg` (an imagefolder: the class is the source photo) and the hidden
   `<out>/.camera_jpegs.json` (sizes, parameters, sources). Each image is seeded by (seed, i), so the first
   N of a larger build are the same files, and a rerun skips the files already there (resume).

Run with the project's virtualenv. `--workers` processes build images in parallel.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_photo_copies as photos  # noqa: E402

# (width, height) of common camera and phone sensors, landscape
CAMERA_SIZES = [
    (1600, 1200),
    (2048, 1536),
    (2592, 1944),
    (3264, 2448),
    (4000, 3000),
    (2400, 1600),
    (3000, 2000),
    (3888, 2592),
    (1920, 1080),
    (2560, 1440),
    (3840, 2160),
    (4000, 2250),
]
SOURCE_SIDE = 1024  # the edits are made at this size (make_photo_copies.WORKING_SIDE), then fitted up
NOISE_SIDE = 4608  # a seeded field of grain, cut at a seeded offset for each image
NOISE_SIGMA = 2.0
QUALITY = 90
PORTRAIT = 0.25

_SOURCES: list[dict] = []
_NOISE: Image.Image | None = None


def _init(cache: Path) -> None:
    global _SOURCES, _NOISE
    photos.WORKING_SIDE = SOURCE_SIDE  # load_sources reads it at call time
    _SOURCES = photos.load_sources(cache)
    grain = np.random.default_rng(12345).normal(128, NOISE_SIGMA, (NOISE_SIDE, NOISE_SIDE))
    _NOISE = Image.fromarray(grain.round().clip(0, 255).astype(np.uint8), "L")


def make_one(i: int, seed: int, out: Path) -> dict:
    """Image i (seeded by (seed, i)): written to `out` unless it is already there; its record."""
    assert _NOISE is not None
    rng = np.random.default_rng([seed, i])
    source = _SOURCES[i % len(_SOURCES)]
    w, h = CAMERA_SIZES[int(rng.integers(len(CAMERA_SIZES)))]
    portrait = bool(rng.random() < PORTRAIT)
    exif_rotated = portrait and bool(rng.random() < 0.5)
    orientation = int(rng.choice([6, 8])) if exif_rotated else 1
    path = out / source["class"] / f"cam{i:05d}.jpg"
    if path.is_file():  # a rerun: made before, by the same draws
        with Image.open(path) as done:
            size, tag = done.size, done.getexif().get(0x0112, 1)
        return {
            "file": path.relative_to(out).as_posix(),
            "source": source["class"],
            "stored_size": list(size),
            "orientation": tag,
            "bytes": path.stat().st_size,
            "edit": None,
        }
    photos.LONGEST_SIDE = SOURCE_SIDE  # augment fits its copy to this: the edits stay at the source's size
    edited, _, params = photos.augment(source["image"], rng)
    # stored pixels: landscape for an EXIF-rotated portrait (the tag turns them), portrait when stored upright
    stored = (h, w) if portrait and not exif_rotated else (w, h)
    view = (h, w) if portrait else (w, h)  # what the photo shows once the tag is applied
    image = ImageOps.fit(edited, view, Image.Resampling.BILINEAR)
    if exif_rotated:  # the pixels a phone stores for a portrait: turned back to landscape
        image = image.transpose(Image.Transpose.ROTATE_90 if orientation == 6 else Image.Transpose.ROTATE_270)
    ox, oy = (int(v) for v in rng.integers(0, NOISE_SIDE - 4000 + 1, size=2))
    grain = _NOISE.crop((ox, oy, ox + image.width, oy + image.height))
    image = ImageChops.add(image, Image.merge("RGB", (grain, grain, grain)), offset=-128)
    assert image.size == stored
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation
    exif[0x010F] = "lookalike benchmark"  # Make
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    image.save(tmp, format="JPEG", quality=QUALITY, subsampling="4:2:0", exif=exif.tobytes())
    os.replace(tmp, path)
    return {
        "file": path.relative_to(out).as_posix(),
        "source": source["class"],
        "stored_size": list(stored),
        "orientation": orientation,
        "bytes": path.stat().st_size,
        "edit": {k: v for k, v in params.items() if k not in ("jpeg_quality", "size")},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=Path("/tmp/photo-copies-cache"), help="where the .deb files go")
    ap.add_argument("--out", type=Path, default=Path("/data/camera-10k"), help="the imagefolder to write")
    ap.add_argument("--count", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1, help="processes building images")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    photos.fetch_debs(args.cache)  # downloads once, in this process, before the workers read the cache
    records: list[dict] = []
    with ProcessPoolExecutor(args.workers, initializer=_init, initargs=(args.cache,)) as pool:
        for n, record in enumerate(
            pool.map(make_one, range(args.count), [args.seed] * args.count, [args.out] * args.count, chunksize=16), 1
        ):
            records.append(record)
            if n % 250 == 0 or n == args.count:
                gb = sum(r["bytes"] for r in records) / 1e9
                print(f"{n}/{args.count} images, {gb:.2f} GB, {time.perf_counter() - started:.0f} s", flush=True)
    summary = {
        "count": len(records),
        "seed": args.seed,
        "bytes": sum(r["bytes"] for r in records),
        "long_side": [min(max(r["stored_size"]) for r in records), max(max(r["stored_size"]) for r in records)],
        "quality": QUALITY,
        "seconds": round(time.perf_counter() - started, 1),
        "images": records,
    }
    (args.out / ".camera_jpegs.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "images"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
