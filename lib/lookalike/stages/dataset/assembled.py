"""A parted snapshot as one `datasets.Dataset` (`assemble`), pickled as the recipe that assembles it.

A snapshot of a million images is one ConcatenationTable over ~1,000 memory-mapped parts and as many slices of
its `rows.arrow`. `datasets` pickles each block as its file and the slices to replay, and unpickling opens and
replays every one of them: 335 s for 1,000,000 rows in 1,038 parts, in every DataLoader worker before its
first batch (benchmarks/README.md, scale_e2e). Assembling it again from its files takes about a second.
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetInfo, Features, Image, Value
from datasets.table import ConcatenationTable, MemoryMappedTable

from lookalike.core.manifest import IntegrityError


class AssembledSnapshot(Dataset):
    """A snapshot assembled from its rows table and parts (`assemble`); pickles as
    (rows, parts, folder) plus its own state, so a worker assembles it from the same files instead of replaying
    every block. A table it no longer holds as assembled (one `datasets` replaced) pickles as `datasets` does."""

    def __reduce_ex__(self, protocol):
        recipe = self.__dict__.get("_assembled_from")
        if recipe is None or self._data is not recipe[1]:
            return object.__reduce_ex__(self, protocol)
        state = {name: value for name, value in self.__dict__.items() if name not in ("_data", "_assembled_from")}
        return (assemble, recipe[0], state)

    def __deepcopy__(self, memo: dict[int, Any]) -> AssembledSnapshot:
        # as deepcopy would copy any object: `datasets` deep-copies a dataset to derive another (with_format, ...)
        # and its tables copy cheaply; reassembling from the files here would cost a second each time
        copied = object.__new__(type(self))
        memo[id(self)] = copied
        copied.__dict__.update({name: copy.deepcopy(value, memo) for name, value in self.__dict__.items()})
        return copied


def assembled(table: Any, recipe: tuple[Path, list[Path], Path], **kwargs: Any) -> AssembledSnapshot:
    """`table` as a snapshot that pickles as `recipe`: the (rows, parts, folder) `assemble` built it from."""
    snapshot = AssembledSnapshot(table, **kwargs)
    # the table as the dataset holds it: `Dataset.__init__` replaced `table` with one carrying its features
    snapshot._assembled_from = (recipe, snapshot._data)
    return snapshot


def part_features():
    """What a part holds: each image (path and encoded bytes) and its content sha256, none of which moves
    between versions."""
    return Features({"image": Image(decode=False), "sha256": Value("string")})


def assemble(rows_path: Path, part_paths: list[Path], folder: Path) -> Any:
    """The rows table beside the parts' images, memory-mapped, in a single-file snapshot's column order.

    Built as one `datasets` ConcatenationTable whose block rows are (the part's rows' row_id, the part,
    their other columns), aligned by construction: `concatenate_datasets` would realign them itself at
    ~25 ms a part (replays deep-copied), and `Dataset.from_file` per part costs ~5x more again."""
    rows = MemoryMappedTable.from_file(str(rows_path))
    parts = [MemoryMappedTable.from_file(str(p)) for p in part_paths]
    if sum(len(p) for p in parts) != len(rows):
        raise IntegrityError(
            f"{folder}: its parts hold {sum(len(p) for p in parts)} images for {len(rows)} rows; "
            f"delete {folder} and re-run"
        )
    row_features = Features.from_arrow_schema(rows.schema)
    rest = [name for name in rows.column_names if name != "row_id"]
    blocks, start = [], 0
    for part in parts:
        own = rows.slice(start, len(part))
        blocks.append([own.select(["row_id"]), part, *([own.select(rest)] if rest else [])])
        start += len(part)
    features = Features({"row_id": row_features["row_id"], **part_features(), **{n: row_features[n] for n in rest}})
    fingerprint = hashlib.sha256("\n".join([rows_path.parent.name, *(p.name for p in part_paths)]).encode())
    table = ConcatenationTable.from_blocks(blocks) if blocks else rows
    return assembled(
        table,
        (rows_path, list(part_paths), folder),
        info=DatasetInfo(features=features),
        fingerprint=fingerprint.hexdigest()[:16],
    )
