"""The `datasets.Dataset` a parted snapshot opens as, pickled as the recipe that assembles it.

A snapshot of a million images is one ConcatenationTable over ~1,000 memory-mapped parts and as many slices of
its `rows.arrow`. `datasets` pickles each block as its file and the slices to replay, and unpickling opens and
replays every one of them: 335 s for 1,000,000 rows in 1,038 parts, in every DataLoader worker before its
first batch (benchmarks/README.md, scale_e2e). Assembling it again from its files takes about a second.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from datasets import Dataset


class AssembledSnapshot(Dataset):
    """A snapshot assembled from its rows table and parts (`lookalike.stages.dataset.parts.assemble`); pickles as
    (rows, parts, folder) plus its own state, so a worker assembles it from the same files instead of replaying
    every block. A table it no longer holds as assembled (one `datasets` replaced) pickles as `datasets` does."""

    def __reduce_ex__(self, protocol):
        recipe = self.__dict__.get("_assembled_from")
        if recipe is None or self._data is not recipe[1]:
            return object.__reduce_ex__(self, protocol)
        state = {name: value for name, value in self.__dict__.items() if name not in ("_data", "_assembled_from")}
        return (_reassemble, recipe[0], state)

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


def _reassemble(rows: Path, parts: list[Path], folder: Path) -> AssembledSnapshot:
    from lookalike.stages.dataset.parts import assemble

    return assemble(rows, parts, folder)
