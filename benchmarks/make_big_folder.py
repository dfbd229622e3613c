"""A folder of N small images (up to millions) for measuring lookalike at scale.

Fashion-MNIST's 70,000 images (Debian's `dataset-fashion-mnist`, as make_fashion_mnist.py) and
shifted / mirrored copies of them, one 28x28 grayscale PNG per file (~0.4-1 KB), one folder per
class, the `imagefolder` layout a user would point lookalike at:

    <out>/<class>/<n>.png

Copy c of image i is image i shifted by a seeded (dx, dy) in [-3, 3] and mirrored when c is odd;
copy 0 is the original. The files are byte-identical across runs for the same N and seed, so a
benchmark can rebuild a collection and compare keys. `--add M` writes M more images after the
first N (the "weekly growth" case) without touching the existing files.

Usage:
    .venv/bin/python benchmarks/make_big_folder.py --out /tmp/fm-100k --n 100000
    .venv/bin/python benchmarks/make_big_folder.py --out /tmp/fm-100k --n 100000 --add 1000
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib" / "lookalike" / "data"))
from make_sample import NAMES, read_idx  # noqa: E402

FOLDER_NAMES = [name.replace("/", "-") for name in NAMES]
SOURCE = Path("/usr/share/datasets/fashion-mnist")


def _load() -> tuple[np.ndarray, np.ndarray]:
    images = np.concatenate(
        [read_idx(SOURCE / "train-images-idx3-ubyte.gz"), read_idx(SOURCE / "t10k-images-idx3-ubyte.gz")]
    )
    labels = np.concatenate(
        [read_idx(SOURCE / "train-labels-idx1-ubyte.gz"), read_idx(SOURCE / "t10k-labels-idx1-ubyte.gz")]
    )
    return images, labels


def _image(images: np.ndarray, n: int, seed: int) -> np.ndarray:
    base, copy = n % len(images), n // len(images)
    pixels = images[base]
    if copy == 0:
        return pixels
    dx, dy = np.random.default_rng([seed, n]).integers(-3, 4, size=2)
    pixels = np.roll(np.roll(pixels, int(dy), axis=0), int(dx), axis=1)
    return pixels[:, ::-1] if copy % 2 else pixels


def _write_range(out: str, start: int, stop: int, seed: int) -> int:
    images, labels = _load()
    for n in range(start, stop):
        label = FOLDER_NAMES[labels[n % len(images)]]
        folder = Path(out) / label
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(_image(images, n, seed)), mode="L").save(folder / f"{n:07d}.png")
    return stop - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n", type=int, required=True, help="images in the collection (the first N)")
    parser.add_argument("--add", type=int, default=0, help="write only images N .. N+ADD-1 (growth)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    start, stop = (args.n, args.n + args.add) if args.add else (0, args.n)
    t0 = time.perf_counter()
    chunk = max(1000, (stop - start) // (args.workers * 8))
    ranges = [(s, min(s + chunk, stop)) for s in range(start, stop, chunk)]
    with ProcessPoolExecutor(args.workers) as pool:
        written = sum(pool.map(_write_range, [str(args.out)] * len(ranges), *zip(*ranges), [args.seed] * len(ranges)))
    print(f"wrote {written} images ({start}..{stop - 1}) to {args.out} in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
