"""Fashion-MNIST as the image folders a user would point lookalike at: one PNG per image, one folder per class.

Source: Debian's `dataset-fashion-mnist` package (`apt-get install dataset-fashion-mnist`), which
installs the original IDX files under /usr/share/datasets/fashion-mnist. Writes

    <out>/test/<class>/<index>.png     the 10,000 test images   (the "10k test split" collection)
    <out>/train/<class>/<index>.png    the 60,000 train images  (with --train)

so `lookalike run --dataset <out>/test` indexes the test split and scores it leave-one-out.
The PNGs are 28x28 grayscale, byte-identical across runs (no timestamps).

Usage:
    .venv/bin/python benchmarks/make_fashion_mnist.py --out /tmp/fashion-mnist [--train]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib" / "lookalike" / "data"))
from make_sample import NAMES, read_idx  # noqa: E402

FOLDER_NAMES = [name.replace("/", "-") for name in NAMES]  # T-shirt/top is not a folder name


def write_split(source: Path, prefix: str, out: Path) -> int:
    images = read_idx(source / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(source / f"{prefix}-labels-idx1-ubyte.gz")
    for name in FOLDER_NAMES:
        (out / name).mkdir(parents=True, exist_ok=True)
    for i, (pixels, label) in enumerate(zip(images, labels)):
        Image.fromarray(pixels, mode="L").save(out / FOLDER_NAMES[label] / f"{i:05d}.png", optimize=True)
    return len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--train", action="store_true", help="also write the 60,000 train images")
    args = parser.parse_args()
    splits = [("test", "t10k")] + ([("train", "train")] if args.train else [])
    for split, prefix in splits:
        n = write_split(args.source, prefix, args.out / split)
        print(f"{split}: {n} images -> {args.out / split}")


if __name__ == "__main__":
    main()
