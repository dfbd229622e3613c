"""What the embedding benchmarks share: the 70k Fashion-MNIST source and the stages before `embeddings`.

Fashion-MNIST (train + test, 70,000 images) is read from Debian's `dataset-fashion-mnist`
package, as `lib/lookalike/data/make_sample.py` reads it, and written once as one parquet file in the HF
image layout (`image` PNG bytes, `label` ClassLabel) under `<work dir>/cache/`. The real
`dataset` stage ingests that file like any user's parquet; its snapshot and a random-init
encoder (`encoder.epochs=0`: throughput and memory do not depend on the weights) live under
`<work dir>/artifacts/`, where later runs find them cached.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SOURCE = Path("/usr/share/datasets/fashion-mnist")
WORK_DIR = Path(tempfile.gettempdir()) / "lookalike-benchmarks" / "embedding"


def fashion_mnist_parquet(work_dir: Path, source: Path = SOURCE) -> Path:
    """The 70k-image parquet under `work_dir/cache/`, written on first use (PNG, as the sample is)."""
    out = work_dir / "cache" / "fashion-mnist-70k.parquet"
    if out.is_file():
        return out
    if not (source / "train-images-idx3-ubyte.gz").is_file():
        sys.exit(f"error: no Fashion-MNIST under {source}: apt-get install dataset-fashion-mnist, or pass --source")
    import datasets
    from datasets import ClassLabel, Dataset, Features, Image

    sys.path.insert(0, str(REPO / "lib" / "lookalike" / "data"))
    from make_sample import NAMES, png, read_idx  # the sample's own reader and encoding

    print(f"writing {out} (70,000 PNGs, once) ...", file=sys.stderr)
    images = np.concatenate(
        [read_idx(source / "train-images-idx3-ubyte.gz"), read_idx(source / "t10k-images-idx3-ubyte.gz")]
    )
    labels = np.concatenate(
        [read_idx(source / "train-labels-idx1-ubyte.gz"), read_idx(source / "t10k-labels-idx1-ubyte.gz")]
    )

    features = Features({"image": Image(), "label": ClassLabel(names=NAMES)})
    datasets.disable_progress_bars()
    ds = Dataset.from_dict(
        {"image": [{"bytes": png(p), "path": None} for p in images], "label": labels.tolist()}, features=features
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    ds.to_parquet(tmp)
    os.replace(tmp, out)
    return out


def dataset_source(name: str, work_dir: Path, source: Path = SOURCE) -> str:
    """`dataset.source` for a benchmark dataset name: the bundled sample or the 70k parquet."""
    return "sample" if name == "sample" else str(fashion_mnist_parquet(work_dir, source))


def prepare_stages(root: Path, overrides: dict[str, Any]):
    """(settings, dataset manifest, encoder manifest): the current defaults plus `overrides`
    (None values are dropped), with a random-init encoder; both stages are cached in `root`."""
    from lookalike.core.settings import load_settings
    from lookalike.stages.dataset.stage import run_dataset_stage
    from lookalike.stages.encoder.stage import run_encoder_stage

    settings = load_settings({**overrides, "artifacts_root": str(root), "encoder.epochs": 0, "embeddings.reuse": False})
    dataset = run_dataset_stage(settings.dataset, root).manifest
    encoder = run_encoder_stage(settings.encoder, dataset, root).manifest
    return settings, dataset, encoder


def describe_model(encoder) -> dict[str, Any]:
    """The encoder as recorded: architecture, width (when the spec has one), input size, feature dim."""
    spec = dict(encoder.stats["spec"])
    keep = ("architecture", "width", "input_size", "feature_dim", "method")
    return {k: spec[k] for k in keep if k in spec}


def add_stage_arguments(parser, work_dir_note: str) -> None:
    """The options both embedding benchmarks take: the stage's and encoder's settings, the source, the scratch dir."""
    parser.add_argument("--batch-size", type=int, help="embeddings.batch_size (default: the setting's)")
    parser.add_argument("--num-workers", type=int, help="embeddings.num_workers (default: the setting's)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads in the measured process (default: torch's)")
    parser.add_argument("--backbone", help="encoder.backbone (default: the setting's)")
    parser.add_argument("--width", type=float, help="encoder.width (default: the setting's)")
    parser.add_argument("--input-size", type=int, help="encoder.input_size (default: the setting's)")
    parser.add_argument("--source", type=Path, default=SOURCE, help="Fashion-MNIST IDX files")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=WORK_DIR,
        help=f"scratch: the 70k parquet, dataset and encoder stages (kept between runs); {work_dir_note}",
    )
