"""Opening an image collection through Hugging Face `datasets`, and keying it by content.

Six kinds of source, one code path: a hub dataset name (`food101`), a local folder
(the HF parquet layout, like the bundled sample, or an `imagefolder` with class
subfolders or a flat folder of images), a `.parquet` file, a `save_to_disk` folder, an
`s3://bucket/prefix` read as an image folder (its keys the relative paths), and a manifest
table naming its images by path or s3:// URL (`lookalike.stages.dataset.tables`).
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lookalike.artifacts.s3 import MirrorError, collection_has_objects
from lookalike.core.errors import path_text
from lookalike.core.settings import DatasetSettings
from lookalike.stages.dataset.content_hashes import HashedListing, hash_listing, memo_path
from lookalike.stages.dataset.errors import MINIMUM, DatasetError
from lookalike.stages.dataset.folders import ImageFolder, read_image_folder
from lookalike.stages.dataset.listing import is_bucket_url, list_files, once_per_run
from lookalike.stages.dataset.tables import (
    check_table,
    hash_table,
    is_manifest,
    open_table,
    table_digest,
    table_format,
)

# Package data of `lookalike.data`: the same folder in a checkout and in an installed wheel.
SAMPLE_DIR = Path(str(importlib.resources.files("lookalike.data").joinpath("fashion-mnist-sample")))
_COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class Source:
    kind: Literal["hub", "folder", "parquet", "disk", "bucket", "table"]
    location: str
    revision: str | None = None  # hub only: the commit sha the key was made from

    def describe(self) -> str:
        return f"{self.kind}:{self.location}"


def resolve_source(section: DatasetSettings) -> Source:
    """Decide what kind of source `section.source` names. Local paths win over hub names."""
    if section.source == "sample":
        return Source("folder", str(SAMPLE_DIR))
    if is_bucket_url(section.source):
        if table_format(Path(section.source)) is not None:  # a catalogue exported to the bucket
            return Source("table", section.source)
        return Source("bucket", section.source.rstrip("/"))
    path = Path(section.source).expanduser()
    if path.is_file():
        if is_manifest(path, section.image_column):
            return Source("table", str(path.resolve()))
        if path.suffix != ".parquet":
            raise DatasetError(
                f"{path} is a file but not a table (.csv, .tsv, .jsonl, .json, .parquet); point --dataset at a "
                "folder of images, a table, a save_to_disk folder or a hub dataset name"
            )
        return Source("parquet", str(path.resolve()))
    if path.is_dir():
        saved = (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()
        return Source("disk" if saved else "folder", str(path.resolve()))
    if section.source.startswith((".", "/", "~")) or os.sep + os.sep in section.source or table_format(path):
        raise DatasetError(f"no such file or folder: {path}")
    return Source("hub", section.source)


def check_source(section: DatasetSettings) -> Source:
    """What can be known about the source without loading it, raised as DatasetError: the path
    exists, a folder holds at least one file, a hub name resolves to a commit (cached per process).

    The CLI calls this before it starts a Prefect server or imports torch, so these mistakes cost
    well under a second; the dataset task meets the same checks when a deployment runs.
    """
    source = resolve_source(section)
    if source.kind == "hub":
        resolve_hub_revision(source.location, section.revision)
    elif source.kind == "bucket":
        if not _bucket_call(collection_has_objects, source.location):
            raise DatasetError(f"{source.describe()} contains no image files; {MINIMUM}")
    elif source.kind == "table":
        check_table(source.location, section)
    elif source.kind == "folder" and not any(p.is_file() for p in Path(source.location).rglob("*")):
        raise DatasetError(f"{source.describe()} contains no image files; {MINIMUM}")
    return source


def pin_source(source: Source, section: DatasetSettings, root: Path | str | None = None) -> tuple[Source, str]:
    """(source pinned to what was keyed, content key): file hashes locally, the commit sha on the hub.

    `datasets`' own fingerprint is path/mtime based, so it is not used here. A hub source is
    pinned to the resolved commit so the data loaded is the data that was keyed, even if the
    branch moves during the run. Local files are listed once per run and hashed only where the
    content-hash memo of the artifacts root `root` has no hash for their (path, size, mtime,
    inode) (`dataset.verify=full`: every file).
    """
    if source.kind == "hub":
        sha = resolve_hub_revision(source.location, section.revision)
        return Source(source.kind, source.location, sha), "hub@" + sha
    hashed = hash_source(source, section, root)
    if source.kind == "table":
        return source, "sha256@" + table_digest(source.location, section, hashed)
    return source, "sha256@" + _tree_digest(hashed, source.kind == "parquet")


def hash_source(source: Source, section: DatasetSettings, root: Path | str | None) -> HashedListing:
    """The files a local, bucket or table source is keyed by, with their sha256 (once per run)."""
    full = section.verify == "full"
    if source.kind == "table":
        return hash_table(source.location, section, memo_path(root) if root is not None else None, full=full)
    return _bucket_call(hash_collection, source.location, root, full=full)


def _image_folder(location: str) -> ImageFolder | None:
    """The collection's splits and labels (`read_image_folder`), worked out once per run."""
    return once_per_run("image-folder", location, lambda: read_image_folder(_bucket_call(list_files, location)))


def _bucket_call(call, *args, **kwargs):
    """`call(...)`, with a bucket that cannot be listed or read reported as the dataset's one line."""
    try:
        return call(*args, **kwargs)
    except MirrorError as exc:
        raise DatasetError(f"dataset: {exc}") from None


def hash_collection(location: str, root: Path | str | None, *, full: bool = False) -> HashedListing:
    """The collection's listing with a sha256 per file (once per run), files that could not be
    read left out with a warning that counts them."""
    memo = memo_path(root) if root is not None else None

    def compute() -> HashedListing:
        hashed = hash_listing(list_files(location), memo, full=full)
        hashed.warn_left_out(f"of {location}", lambda f: f.rel)
        return hashed

    return once_per_run("sha256-full" if full else "sha256", location, compute)


@lru_cache(maxsize=64)  # one network round trip per process, however often the key is computed
def resolve_hub_revision(name: str, revision: str | None) -> str:
    """The commit sha a hub dataset revision points at (a full sha needs no network)."""
    if revision and _COMMIT_SHA.match(revision):
        return revision
    try:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(name, revision=revision, timeout=10).sha
    except Exception as exc:  # connection, offline mode, missing repo: one message for users
        reason = type(exc).__name__
        if "RepositoryNotFound" in reason or "404" in str(exc):
            raise DatasetError(f"{name!r} is neither a local path nor a dataset on the Hugging Face hub") from None
        raise DatasetError(
            f"cannot reach the Hugging Face hub to resolve dataset {name!r} ({reason}); "
            "when offline, point --dataset at a local image folder, a .parquet file or a "
            "save_to_disk folder, or pin --set dataset.revision=<full commit sha> already in your HF cache"
        ) from None


def _tree_digest(hashed: HashedListing, single_file: bool) -> str:
    """sha256 over (relative name, content sha256) of every file, in path order."""
    digest = hashlib.sha256()
    for start in range(0, len(hashed.files), _DIGEST_BATCH):  # one encode per batch, not per file
        files, hashes = hashed.files[start : start + _DIGEST_BATCH], hashed.hashes[start : start + _DIGEST_BATCH]
        rels = [file.rel if not single_file else Path(file.path).name for file in files]
        # names are bytes: one that is not UTF-8 hashes as its bytes (a UTF-8 name as before)
        digest.update(os.fsencode("".join(f"{rel}\0{sha}\n" for rel, sha in zip(rels, hashes))))
    return digest.hexdigest()


_DIGEST_BATCH = 65_536


def open_source(source: Source, section: DatasetSettings, cache_dir: Path):
    """Open the split as a `datasets.Dataset` with undecoded images.

    Returns:
        (dataset, row_ids): the (possibly subset) dataset and each row's position in the
        full split, which is its stable row id.
    """
    import datasets

    datasets.disable_progress_bars()
    try:
        if source.kind == "disk":
            loaded = datasets.load_from_disk(source.location)
            if isinstance(loaded, datasets.DatasetDict):
                loaded = _pick_split(loaded, section.split, source)
        elif source.kind == "parquet":
            loaded = datasets.load_dataset(
                "parquet", data_files=source.location, split="train", cache_dir=str(cache_dir)
            )
        elif source.kind == "table":
            loaded = open_table(source.location, section)
        elif source.kind in ("folder", "bucket"):
            loaded = _open_folder(source, section, cache_dir)
        else:
            loaded = datasets.load_dataset(
                source.location,
                name=section.config_name,
                revision=source.revision,
                cache_dir=str(cache_dir),
            )
            loaded = _pick_split(loaded, section.split, source)
    except DatasetError:
        raise
    except FileNotFoundError as exc:
        if "doesn't contain any data files" in str(exc):
            raise DatasetError(f"{source.describe()} contains no image files; {MINIMUM}") from None
        raise DatasetError(f"cannot load {source.describe()}: {exc}") from None
    except ValueError as exc:
        raise DatasetError(f"cannot load {source.describe()}: {str(exc).splitlines()[0]}") from None

    loaded = _with_undecoded_images(loaded, section.image_column, source)
    row_ids = np.arange(len(loaded), dtype=np.int64)
    if section.limit is not None and section.limit < len(loaded):
        rng = np.random.default_rng(section.seed)
        row_ids = np.sort(rng.choice(len(loaded), size=section.limit, replace=False))
        loaded = loaded.select(row_ids, keep_in_memory=True)
    return loaded, row_ids


def _open_folder(source: Source, section: DatasetSettings, cache_dir: Path):
    """A local folder's split, with the files `datasets` cannot take by name added back.

    `datasets` lists a folder's files itself, and drops a name with a newline without a word
    (its extension filter is a regex whose `.` stops at a newline) and fails on a name that is
    not UTF-8 (Arrow stores text). Such files are left out of its listing and appended after
    the rows it loads, read here, so each is indexed or skipped with a reason like any other.
    A folder without such names loads exactly as `datasets` loads it.
    """
    folder = _image_folder(source.location)
    if folder is not None and section.config_name is None:
        return _image_folder_split(folder, section, source)
    if source.kind == "bucket":
        raise DatasetError(
            f"{source.describe()} is read as a folder of images (class prefixes become labels); "
            "tables, metadata files and dataset cards in a bucket are not supported: copy it to a local folder"
        )
    import datasets
    from datasets.data_files import DataFilesDict, get_data_patterns

    listed = DataFilesDict.from_patterns(get_data_patterns(source.location), base_path=source.location)
    odd = {str(split): [f for f in files if not _storable_name(f)] for split, files in listed.items()}
    if not any(odd.values()):
        loaded = datasets.load_dataset(
            source.location, name=section.config_name, revision=source.revision, cache_dir=str(cache_dir)
        )
        return _pick_split(loaded, section.split, source)
    plain = {str(split): [f for f in files if _storable_name(f)] for split, files in listed.items()}
    loaded = datasets.load_dataset(
        source.location,
        data_files={split: files for split, files in plain.items() if files},
        cache_dir=str(cache_dir),
    )
    return _append_files(_pick_split(loaded, section.split, source), odd.get(section.split, []), section.image_column)


def _image_folder_split(folder: ImageFolder, section: DatasetSettings, source: Source):
    """The split as the `datasets.Dataset` `imagefolder` would build, made from the listing."""
    from datasets import ClassLabel, Dataset, Features, Image

    if section.split not in folder.splits:
        raise DatasetError(
            f"{source.describe()} has no split {section.split!r}; splits are: {', '.join(folder.splits)} (set --split)"
        )
    import pyarrow as pa
    from datasets import DatasetInfo
    from datasets.table import InMemoryTable

    files = folder.splits[section.split]
    paths = [f.path for f in files]
    joined = "\0".join(paths)
    if joined.isascii() and "\n" not in joined:  # every name storable as it is: nothing read now
        images = pa.StructArray.from_arrays(
            [pa.nulls(len(paths), pa.binary()), pa.array(paths, pa.string())], names=["bytes", "path"]
        )
    else:
        listed = [_listed_image(path) for path in paths]
        images = pa.StructArray.from_arrays(
            [pa.array([i["bytes"] for i in listed], pa.binary()), pa.array([i["path"] for i in listed], pa.string())],
            names=["bytes", "path"],
        )
    # Arrow columns built whole: `Dataset.from_dict` encodes row by row (1.5 s for 100k files, 10x this)
    columns = {"image": images}
    features = Features({"image": Image(decode=False)})
    if folder.label_names:
        index = {name: i for i, name in enumerate(folder.label_names)}
        columns["label"] = pa.array([index.get(label) for label in folder.labels_of(files)], pa.int64())  # type: ignore[arg-type]
        features["label"] = ClassLabel(names=folder.label_names)
    table = pa.table(columns).cast(features.arrow_schema)
    return Dataset(InMemoryTable(table), info=DatasetInfo(features=features))


def _listed_image(path: str) -> dict[str, Any]:
    """An undecoded image by path; a name that is not UTF-8 cannot travel as text, so its bytes are read now."""
    if _storable_name(path) or is_bucket_url(path):
        return {"bytes": None, "path": path}
    try:
        data = Path(path).read_bytes()
    except OSError:
        data = None  # the snapshot reads it again and records why it failed
    return {"bytes": data, "path": path_text(path)}


def _storable_name(path: str) -> bool:
    """Whether `datasets` can list and store this file name (see `_open_folder`)."""
    return "\n" not in path and path_text(path) == path


def _append_files(loaded, paths: list[str], column: str):
    """`loaded` with one row per file in `paths`: the image read now (its name may not be
    storable text), the label from its class folder as `imagefolder` assigns it, other columns empty."""
    from datasets import ClassLabel, Dataset, concatenate_datasets

    rows: dict[str, list] = {name: [] for name in loaded.column_names}
    for path in paths:  # each is a name datasets cannot store, so `_listed_image` reads its bytes now
        for name in rows:
            rows[name].append(None)
        rows[column][-1] = _listed_image(path)
        for name, feature in loaded.features.items():
            folder = Path(path).parent.name
            if isinstance(feature, ClassLabel) and folder in feature.names:
                rows[name][-1] = feature.str2int(folder)
    return concatenate_datasets([loaded, Dataset.from_dict(rows, features=loaded.features)])


def _pick_split(loaded: Any, split: str, source: Source):
    if split not in loaded:
        raise DatasetError(f"{source.describe()} has no split {split!r}; splits are: {', '.join(loaded)} (set --split)")
    return loaded[split]


def list_splits(section: DatasetSettings, cache_dir: Path) -> list[str]:
    """The named splits the source offers, read from its layout or metadata, not its data.

    [] for a single table (a .parquet file, a save_to_disk `Dataset`), which is indexed
    whatever `split` says. A hub dataset is listed at the commit its revision resolves to.

    Raises:
        DatasetError: the source cannot be read or the hub cannot be reached.
    """
    source = resolve_source(section)
    if source.kind in ("parquet", "table"):
        return []
    if source.kind == "disk":
        listing = Path(source.location) / "dataset_dict.json"
        return [str(s) for s in json.loads(listing.read_text())["splits"]] if listing.is_file() else []
    if source.kind == "hub":
        return list(
            _hub_splits(
                source.location,
                section.config_name,
                resolve_hub_revision(source.location, section.revision),
                str(cache_dir),
            )
        )
    folder = _image_folder(source.location) if section.config_name is None else None
    if folder is not None:
        return list(folder.splits)
    if source.kind == "bucket":
        return []
    return _builder_splits(source, section.config_name, None, str(cache_dir))


@lru_cache(maxsize=64)  # a commit never changes: one round trip per process
def _hub_splits(name: str, config_name: str | None, sha: str, cache_dir: str) -> tuple[str, ...]:
    return tuple(_builder_splits(Source("hub", name, sha), config_name, sha, cache_dir))


def _builder_splits(source: Source, config_name: str | None, revision: str | None, cache_dir: str) -> list[str]:
    import datasets

    datasets.disable_progress_bars()
    try:
        builder = datasets.load_dataset_builder(
            source.location, name=config_name, revision=revision, cache_dir=cache_dir
        )
    except (ValueError, OSError) as exc:  # missing files or config, unreachable hub
        if "doesn't contain any data files" in str(exc):
            raise DatasetError(f"{source.describe()} contains no image files; {MINIMUM}") from None
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise DatasetError(f"cannot list the splits of {source.describe()}: {reason}") from None
    if builder.info.splits:  # declared in the dataset card
        return [str(s) for s in builder.info.splits]
    return [str(s) for s in builder.config.data_files or {}]


def _with_undecoded_images(ds, column: str, source: Source):
    from datasets import Image

    if column not in ds.column_names:
        raise DatasetError(
            f"{source.describe()} has no image column {column!r}; columns are: "
            f"{', '.join(ds.column_names)} (use --set dataset.image_column=NAME or LOOKALIKE_DATASET__IMAGE_COLUMN)"
        )
    try:
        return ds.cast_column(column, Image(decode=False))
    except Exception as exc:
        raise DatasetError(
            f"column {column!r} of {source.describe()} does not hold images ({ds.features[column]}): {exc}"
        ) from None


def label_names(ds, column: str | None) -> list[str] | None:
    """Class names for the label column, or None when the dataset has no usable labels."""
    from datasets import ClassLabel

    if not column or column not in ds.column_names:
        return None
    feature = ds.features[column]
    if isinstance(feature, ClassLabel):
        return list(feature.names)
    values = sorted({str(v) for v in ds[column]})
    return values
