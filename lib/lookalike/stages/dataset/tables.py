"""A manifest table as a dataset source: the usual export of a catalogue, one row per image.

A CSV or TSV, JSON-lines (`.jsonl`, `.ndjson`, `.json`) or Parquet file, on disk or in a bucket
(`s3://bucket/exports/catalogue.csv`, read once per run); the text formats may be compressed (`.gz`, `.bz2`,
`.zst`, `.lz4`, as pyarrow reads them). `dataset.image_column` names the column that holds each image's
reference: a local path or an `s3://bucket/key` URL; a relative reference is resolved against the table's
folder (its prefix, for a table in a bucket). `dataset.label_column` gives the labels (class names
in sorted order, as an image folder's) and `dataset.metadata_columns` the columns kept, returned
and filterable. A Parquet file whose image column holds images (structs of encoded bytes) is not a
manifest: it stays the `parquet` source, keyed by the file's bytes as before.

The key is made from content only: each row's reference as written, its label and metadata
values, and the sha256 of the file it names, through the content-hash memo (a local file's stat
stamp; an object's size and ETag from one HEAD request each, in parallel). Touching the table, or
moving it together with its images, keeps the key; a changed image moves it; a cached re-run reads
no image bytes. A row whose file is missing is left out of the key and counted like an
unreadable image.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import stat
from pathlib import Path
from typing import Any

from lookalike.artifacts.s3 import MirrorError, check_buckets, stat_urls
from lookalike.core.errors import one_line
from lookalike.core.settings import DatasetSettings
from lookalike.stages.dataset.content_hashes import HashedListing, hash_listing
from lookalike.stages.dataset.errors import MINIMUM, DatasetError
from lookalike.stages.dataset.listing import ListedFile, Listing, is_bucket_url, once_per_run

TEXT_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "json", ".ndjson": "json", ".json": "json"}
COMPRESSIONS = (".gz", ".bz2", ".zst", ".lz4")  # the codecs pyarrow's readers detect from the name
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_DIGEST_ROWS = 10_000
_UNSUPPORTED_URL = "not a local path or s3:// URL (tables name local files and s3:// objects)"


def table_format(path: Path) -> str | None:
    """'csv', 'tsv', 'json' or 'parquet' for a file named like a table, else None."""
    name = path.name.lower()
    compressed = name.endswith(COMPRESSIONS)
    if compressed:
        name = name.rsplit(".", 1)[0]
    elif name.endswith(".parquet"):
        return "parquet"
    return next((fmt for suffix, fmt in TEXT_FORMATS.items() if name.endswith(suffix)), None)


def is_manifest(path: Path, image_column: str) -> bool:
    """Whether the file at `path` is a manifest table: a text table, or a Parquet file whose image
    column holds text (paths or URLs) rather than images."""
    fmt = table_format(path)
    if fmt != "parquet":
        return fmt is not None
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except (OSError, ValueError):  # a damaged file: the parquet source reports it as before
        return False
    index = schema.get_field_index(image_column)
    return index >= 0 and _is_text(schema.field(index).type)


def _is_text(kind: Any) -> bool:
    import pyarrow as pa

    return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind))


def read_table(location: str, section: DatasetSettings) -> Any:
    """The table as a `pyarrow.Table` (read once per run), its image column checked to exist and hold text.

    Raises:
        DatasetError: the file cannot be parsed, has no rows, or no such image column.
    """
    return once_per_run(
        f"table:{section.image_column}:{section.label_column}", location, lambda: _read(location, section)
    )


def _read(location: str, section: DatasetSettings) -> Any:
    import pyarrow as pa

    fmt = table_format(Path(location))
    try:
        source = _opened(location)
        if fmt == "parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(source)
        elif fmt == "json":
            from pyarrow import json as pa_json

            table = pa_json.read_json(source)
        else:
            from pyarrow import csv

            # references and labels as written: '007.png' or a label '01' must not become a number
            text = {name: pa.string() for name in (section.image_column, section.label_column) if name}
            table = csv.read_csv(
                source,
                parse_options=csv.ParseOptions(delimiter="\t" if fmt == "tsv" else ","),
                convert_options=csv.ConvertOptions(column_types=text),
            )
    except FileNotFoundError:
        raise DatasetError(f"no such table: {location}") from None
    except MirrorError as exc:
        raise DatasetError(f"dataset: {exc}") from None
    except (OSError, ValueError, pa.ArrowException) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DatasetError(f"cannot read the table {location}: {one_line(reason)}") from None
    column = section.image_column
    if column not in table.column_names:
        raise DatasetError(
            f"table:{location} has no image column {column!r}; its columns are: {', '.join(table.column_names)} "
            "(use --set dataset.image_column=NAME or LOOKALIKE_DATASET__IMAGE_COLUMN)"
        )
    kind = table.schema.field(column).type
    if not (_is_text(kind) or pa.types.is_null(kind)):
        raise DatasetError(
            f"column {column!r} of table:{location} holds {kind} values; a table's image column holds "
            "file paths or s3:// URLs (set dataset.image_column)"
        )
    if table.num_rows == 0:
        raise DatasetError(f"table:{location} has no rows; {MINIMUM}")
    return table


_CODECS = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd", ".lz4": "lz4"}


def _opened(location: str) -> Any:
    """What pyarrow's readers take for the table at `location`: its path, or for an `s3://` URL its object's
    bytes (one GET) decompressed as its name says, as pyarrow does for a path.

    Raises:
        FileNotFoundError: there is no such object.
        MirrorError: the bucket cannot be read, in one line.
    """
    if not is_bucket_url(location):
        return location
    import pyarrow as pa

    from lookalike.artifacts.s3 import read_url

    check_buckets([location])  # a missing or unreachable bucket is named as for the images it holds
    stream = pa.BufferReader(read_url(location))
    codec = _CODECS.get(os.path.splitext(location)[1].lower())
    return pa.CompressedInputStream(stream, codec) if codec else stream


def table_folder(location: str) -> str:
    """What a table's relative references are resolved against: its folder, or its prefix in a bucket."""
    if is_bucket_url(location):
        return location.rsplit("/", 1)[0]
    return os.path.dirname(os.path.abspath(location))


def check_table(location: str, section: DatasetSettings) -> None:
    """What can be known without reading an image: the table parses, has rows and its image
    column, and every bucket its s3:// URLs name can be opened.

    Raises:
        DatasetError: one line naming the problem.
    """
    urls = sorted({path for path in resolved_paths(location, section) if path and is_bucket_url(path)})
    try:
        check_buckets(urls)
    except MirrorError as exc:
        raise DatasetError(f"dataset: {exc}") from None


def _resolve(reference: Any, folder: str) -> str | None:
    """The local path or s3:// URL a row's reference names (relative paths against the table's
    folder); another URL comes back as written, to be refused with a reason; None when empty."""
    if not isinstance(reference, str) or not reference:
        return None
    if "://" in reference and _URL.match(reference):
        return reference
    if is_bucket_url(folder):  # a key under the table's prefix: s3://bucket/exports/../imgs/1.png is imgs/1.png
        bucket, _, prefix = folder[len("s3://") :].partition("/")
        key = posixpath.normpath(posixpath.join("/", prefix, reference)).lstrip("/")
        return f"s3://{bucket}/{key}"
    if reference.startswith("~"):
        reference = os.path.expanduser(reference)
    return os.path.normpath(os.path.join(folder, reference))


def resolved_paths(location: str, section: DatasetSettings) -> list[str | None]:
    """Each row's image as a local path or URL, in the table's order (worked out once per run)."""

    def compute() -> list[str | None]:
        folder = table_folder(location)
        column = read_table(location, section).column(section.image_column).to_pylist()
        return [_resolve(reference, folder) for reference in column]

    return once_per_run(f"table-paths:{section.image_column}", location, compute)


def hash_table(location: str, section: DatasetSettings, memo: Path | None, *, full: bool = False) -> HashedListing:
    """The distinct files the table names with their sha256 (once per run), hashed only where the
    memo has no hash for their stamp; files that are missing or cannot be read are in `unreadable`
    with the reason, and counted in a warning."""

    def compute() -> HashedListing:
        paths = list(dict.fromkeys(p for p in resolved_paths(location, section) if p))
        try:
            files, missing = _stat_all(paths)
        except MirrorError as exc:  # a missing, forbidden or unreachable bucket: one line
            raise DatasetError(f"dataset: {exc}") from None
        hashed = hash_listing(Listing(os.path.commonprefix([f.path for f in files]), tuple(files)), memo, full=full)
        hashed.unreadable[:0] = missing
        hashed.warn_left_out(f"named by {location}", lambda f: f.path)
        return hashed

    what = f"table-sha256{'-full' if full else ''}:{section.image_column}"
    return once_per_run(what, location, compute)


def _stat_all(paths: list[str]) -> tuple[list[ListedFile], list[tuple[ListedFile, str]]]:
    """(files found, with the stamp the memo compares; (file, reason) for those that are not)."""
    objects = stat_urls([p for p in paths if is_bucket_url(p)]) if any(map(is_bucket_url, paths)) else {}
    found: list[ListedFile] = []
    missing: list[tuple[ListedFile, str]] = []
    for path in paths:
        absent = ListedFile(path, path, 0, 0, 0)
        if is_bucket_url(path):
            obj = objects[path]
            if obj is None:
                missing.append((absent, "no such object"))
            else:
                found.append(ListedFile(path, path, obj.size, obj.modified_ns, 0, obj.etag))
            continue
        if _URL.match(path):
            missing.append((absent, _UNSUPPORTED_URL))
            continue
        try:
            info = os.stat(path)
        except FileNotFoundError:
            missing.append((absent, "no such file"))
            continue
        except OSError as exc:
            missing.append((absent, f"cannot read file: {exc.strerror or exc}"))
            continue
        if not stat.S_ISREG(info.st_mode):
            missing.append((absent, "not a file"))
            continue
        found.append(ListedFile(path, path, info.st_size, info.st_mtime_ns, info.st_ino))
    return found, missing


def table_digest(location: str, section: DatasetSettings, hashed: HashedListing) -> str:
    """sha256 over every row, in order (as JSON, in blocks of `_DIGEST_ROWS`): its image reference
    as written, label and metadata values, and the sha256 of the file it names ('' when it could
    not be read)."""
    table = read_table(location, section)
    sha = {file.path: digest for file, digest in zip(hashed.files, hashed.hashes)}
    labels = (
        table.column(section.label_column).to_pylist()
        if section.label_column and section.label_column in table.column_names
        else None
    )
    metadata = [_metadata(table, name, location, section).to_pylist() for name in section.metadata_columns]
    references = table.column(section.image_column).to_pylist()
    paths = resolved_paths(location, section)
    digest = hashlib.sha256(b"manifest table\n")
    for start in range(0, len(references), _DIGEST_ROWS):  # one json.dumps per block: ~10x faster than per row
        rows = [
            [
                references[row],
                labels[row] if labels is not None else None,
                *(column[row] for column in metadata),
                sha.get(paths[row] or "", ""),
            ]
            for row in range(start, min(start + _DIGEST_ROWS, len(references)))
        ]
        digest.update(json.dumps(rows, default=str).encode() + b"\n")
    return digest.hexdigest()


def _metadata(table: Any, name: str, location: str, section: DatasetSettings) -> Any:
    if name not in table.column_names:
        others = [c for c in table.column_names if c not in (section.image_column, section.label_column)]
        raise DatasetError(
            f"dataset.metadata_columns: table:{location} has no column {name!r}; "
            f"its other columns are: {', '.join(others) or 'none'}"
        )
    return table.column(name)


def open_table(location: str, section: DatasetSettings) -> Any:
    """The table as a `datasets.Dataset` in its own order: the image column as undecoded images by
    path, the label column as a ClassLabel over its sorted names, the other columns as they are."""
    import pyarrow as pa
    from datasets import ClassLabel, Dataset, DatasetInfo, Features, Image
    from datasets.table import InMemoryTable

    table = read_table(location, section)
    label = section.label_column
    declared = Features.from_arrow_schema(table.schema).get(label) if label in table.column_names else None
    table = table.replace_schema_metadata(None)  # features are set below; stale ones would not match
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    images = pa.array(
        [{"bytes": None, "path": path} if path else None for path in resolved_paths(location, section)],
        type=image_type,
    )
    table = table.set_column(table.column_names.index(section.image_column), section.image_column, images)
    names: list[str] = []
    if isinstance(declared, ClassLabel):  # a table `datasets` wrote keeps its class names
        names = list(declared.names)
    elif label and label in table.column_names:
        values = [None if v is None or v == "" else str(v) for v in table.column(label).to_pylist()]
        names = sorted({v for v in values if v is not None})
        position = table.column_names.index(label)
        if names:
            index = {name: i for i, name in enumerate(names)}
            codes = pa.array([None if v is None else index[v] for v in values], type=pa.int64())
            table = table.set_column(position, label, codes)
        else:  # no row has a label: indexed without labels, as a flat folder is
            table = table.remove_column(position)
    features = Features.from_arrow_schema(table.schema)
    features[section.image_column] = Image(decode=False)
    if names:
        features[label] = ClassLabel(names=names)
    return Dataset(InMemoryTable(table.cast(features.arrow_schema)), info=DatasetInfo(features=features))
