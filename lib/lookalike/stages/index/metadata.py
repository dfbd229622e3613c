"""What is known about each indexed row, stored beside the index and returned with every hit.

`metadata.parquet` in the index stage folder (listed, with its sha256, in the manifest) holds
one row per indexed image, in the snapshot's order:

    row      the dataset row id (the FAISS id)
    label    the label name, or null
    path     where the image came from (its file, for folders), or null
    split    the dataset split indexed
    width, height   the image's size in pixels (read from its header)
    sha256   the encoded image's content hash (exact duplicates share it)
    ...      the dataset's `metadata_columns`, as the source typed them

`Metadata.rows(filter)` evaluates a `lookalike.core.filters` filter with Arrow compute (a mask
per term, combined as its `and`/`or` tree says) and gives the matching row ids, which `lookalike.stages.index.factory.search` turns into a FAISS
ID selector. Indexes built before this file existed get the same table from their snapshot
(`Metadata.of_chain`), so old indexes filter too.
"""

from __future__ import annotations

import datetime
import fnmatch
import functools
import io
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from lookalike.core.filters import AllOf, Filter, FilterError, Node, Term, check_fields
from lookalike.core.manifest import Manifest, atomic_path, verified_path

METADATA_FILE = "metadata.parquet"
BUILT_IN = ("row", "label", "path", "split", "width", "height", "sha256")
_BATCH = 1024
_CACHED_FILTERS = 64


def build_metadata(snapshot, dataset: Manifest) -> pa.Table:
    """The metadata table of a dataset snapshot (see the module docstring), in snapshot order."""
    names = dataset.stats.get("label_names")
    extra = [c for c in dataset.settings.get("metadata_columns") or () if c in snapshot.column_names]
    widths, heights, paths = [], [], []
    for batch in snapshot.select_columns(["image"]).iter(batch_size=_BATCH):
        for image in batch["image"]:
            width, height = _size(image["bytes"])
            widths.append(width)
            heights.append(height)
            paths.append(image.get("path"))
    data = snapshot.data  # the Arrow table: whole columns at once, not row by row
    labels = None
    if names and "label" in snapshot.column_names:
        labels = [names[v] if v is not None and 0 <= v < len(names) else None for v in data.column("label").to_pylist()]
    columns: dict[str, pa.Array] = {
        "row": data.column("row_id").combine_chunks().cast(pa.int64()),
        "label": pa.array(labels if labels is not None else [None] * len(widths), pa.string()),
        "path": pa.array(paths, pa.string()),
        "split": pa.array([dataset.settings.get("split")] * len(widths), pa.string()),
        "width": pa.array(widths, pa.int32()),
        "height": pa.array(heights, pa.int32()),
        "sha256": data.column("sha256").combine_chunks().cast(pa.string()),
    }
    for name in extra:
        columns[name] = data.column(name).combine_chunks()
    return pa.table(columns)


def write_metadata(table: pa.Table, folder: Path) -> str:
    with atomic_path(folder / METADATA_FILE) as tmp:
        pq.write_table(table, str(tmp))
    return METADATA_FILE


def _size(data: bytes) -> tuple[int | None, int | None]:
    """(width, height) from the image header, without decoding its pixels."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except Exception:  # the snapshot holds only decodable images; a header PIL cannot size is unknown, not fatal
        return None, None


class Metadata:
    """The metadata of one index: hit descriptions and filters over its rows."""

    def __init__(self, table: pa.Table) -> None:
        self.table = table
        self.row_ids = table.column("row").to_numpy()
        self.position = {int(r): i for i, r in enumerate(self.row_ids)}
        self._rows_of: OrderedDict[Filter, np.ndarray] = OrderedDict()

    @classmethod
    def of_chain(cls, root: Path, index: Manifest, dataset: Manifest, snapshot) -> Metadata:
        """The index's stored metadata (verified), or, for an index built before it was stored,
        the same table made from the snapshot."""
        if any(f.path == METADATA_FILE for f in index.files):
            return cls(pq.read_table(str(verified_path(root, index, METADATA_FILE))))
        return cls(build_metadata(snapshot, dataset))

    @property
    def columns(self) -> list[str]:
        return list(self.table.column_names)

    def of_row(self, row: int) -> dict[str, Any]:
        """Everything known about one row, by column name."""
        position = self.position[row]
        return {name: _plain(self.table.column(name)[position].as_py()) for name in self.table.column_names}

    def rows(self, filter_: Filter) -> np.ndarray:
        """Row ids (int64, ascending) of the rows the filter matches (every row for an empty one);
        a few recent filters are cached."""
        if filter_ in self._rows_of:
            self._rows_of.move_to_end(filter_)
            return self._rows_of[filter_]
        check_fields(filter_, self.columns)
        mask = self._mask(filter_.root) if filter_.root is not None else np.ones(len(self.row_ids), dtype=bool)
        rows = np.sort(self.row_ids[mask]).astype(np.int64)
        self._rows_of[filter_] = rows
        if len(self._rows_of) > _CACHED_FILTERS:
            self._rows_of.popitem(last=False)
        return rows

    def _mask(self, node: Node) -> np.ndarray:
        """Which rows `node` matches; nesting is bounded by the parser (MAX_FILTER_DEPTH)."""
        if isinstance(node, Term):
            return self._matches(node)
        combine = np.logical_and if isinstance(node, AllOf) else np.logical_or
        return functools.reduce(combine, (self._mask(part) for part in node.parts))

    def _matches(self, term: Term) -> np.ndarray:
        column = self.table.column(term.field)
        kind = column.type
        numeric = pa.types.is_integer(kind) or pa.types.is_floating(kind)
        if term.op == "~":
            if not pa.types.is_string(kind) and not pa.types.is_large_string(kind):
                raise FilterError(f"filter term {term}: ~ matches text, and {term.field} holds {kind}")
            return _glob(column, term.values[0])
        temporal = pa.types.is_temporal(kind)
        if term.op in ("<", "<=", ">", ">="):
            if not numeric and not temporal:
                raise FilterError(
                    f"filter term {term}: {term.op} compares numbers or dates, and {term.field} holds {kind}"
                )
            value = pa.scalar(_number(term, term.values[0])) if numeric else _temporal(term, term.values[0], kind)
            compare = {"<": pc.less, "<=": pc.less_equal, ">": pc.greater, ">=": pc.greater_equal}[term.op]
            return _filled(compare(column, value))
        if numeric:
            values = pa.array([_number(term, v) for v in term.values], pa.float64())
            found = pc.is_in(pc.cast(column, pa.float64()), value_set=values)
        elif temporal:
            values = pa.array([_temporal(term, v, kind).as_py() for v in term.values], kind)
            found = pc.is_in(column, value_set=values)
        elif pa.types.is_boolean(kind):
            values = pa.array([_boolean(term, v) for v in term.values], pa.bool_())
            found = pc.is_in(column, value_set=values)
        else:
            found = pc.is_in(pc.cast(column, pa.string()), value_set=pa.array(term.values, pa.string()))
        matched = _filled(found)
        return ~matched if term.op == "!=" else matched


def _plain(value: Any) -> Any:
    """A JSON-ready value: dates and times as ISO 8601 text, durations in seconds."""
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    return value


def _glob(column: pa.ChunkedArray, pattern: str) -> np.ndarray:
    """fnmatch semantics, evaluated by Arrow's regex engine (RE2) when the pattern translates."""
    regex = fnmatch.translate(pattern)  # "(?s:...)\Z"; RE2 spells the end of text \z
    try:
        return _filled(pc.match_substring_regex(column, pattern="^" + regex.replace(r"\Z", r"\z")))
    except pa.ArrowInvalid:
        return np.array([v is not None and fnmatch.fnmatchcase(v, pattern) for v in column.to_pylist()], dtype=bool)


def _filled(result) -> np.ndarray:
    """A boolean Arrow result as numpy, null (a missing value) as no match."""
    return pc.fill_null(result, False).to_numpy(zero_copy_only=False).astype(bool)


def _number(term: Term, value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise FilterError(f"filter term {term}: {term.field} holds numbers, and {value!r} is not one") from None


def _temporal(term: Term, value: str, kind: pa.DataType) -> pa.Scalar:
    """`value` (ISO 8601 text, e.g. 2024-05-01 or 2024-05-01T12:00) as a scalar of the column's type."""
    try:
        return pc.cast(pa.scalar(value), kind)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise FilterError(
            f"filter term {term}: {term.field} holds {kind}, and {value!r} is not one (write 2024-05-01)"
        ) from None


def _boolean(term: Term, value: str) -> bool:
    lowered = value.lower()
    if lowered not in ("true", "false", "1", "0"):
        raise FilterError(f"filter term {term}: {term.field} holds true/false, and {value!r} is neither")
    return lowered in ("true", "1")
