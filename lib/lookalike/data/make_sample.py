"""Build the bundled sample: a class-balanced subset of Fashion-MNIST in the HF image-parquet layout.

Source: Debian's `dataset-fashion-mnist` package (MIT licence, Zalando Research), which installs
the original IDX files under /usr/share/datasets/fashion-mnist. Run:

    apt-get install dataset-fashion-mnist
    python lib/lookalike/data/make_sample.py     # writes lib/lookalike/data/fashion-mnist-sample/

The output loads with `datasets.load_dataset("lib/lookalike/data/fashion-mnist-sample")` exactly like a hub
dataset: `image` (Image) and `label` (ClassLabel with names), splits `train` and `test`.
"""

from __future__ import annotations

import argparse
import gzip
import io
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, Features, Image
from PIL import Image as PILImage

NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def balanced(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    picks = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in range(len(NAMES))]
    return np.sort(np.concatenate(picks))


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    PILImage.fromarray(pixels, mode="L").save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "fashion-mnist-sample")
    parser.add_argument("--train-per-class", type=int, default=300)
    parser.add_argument("--test-per-class", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    features = Features({"image": Image(), "label": ClassLabel(names=NAMES)})
    for split, prefix, per_class in (("train", "train", args.train_per_class), ("test", "t10k", args.test_per_class)):
        images = read_idx(args.source / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(args.source / f"{prefix}-labels-idx1-ubyte.gz")
        rows = balanced(labels, per_class, args.seed)
        ds = Dataset.from_dict(
            {"image": [{"bytes": png(images[i]), "path": None} for i in rows], "label": labels[rows].tolist()},
            features=features,
        )
        out = args.out / "data" / f"{split}-00000-of-00001.parquet"
        out.parent.mkdir(parents=True, exist_ok=True)
        ds.to_parquet(out)
        print(f"{split}: {len(ds)} images -> {out} ({out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
