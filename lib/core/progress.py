"""Progress bars for long work (tqdm; hidden when stderr is not a terminal)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm.auto import tqdm


@contextmanager
def progress(total: int, desc: str, unit: str = "it") -> Iterator[tqdm]:
    bar = tqdm(
        total=total,
        desc=desc,
        unit=unit,
        leave=False,
        disable=not sys.stderr.isatty(),
        dynamic_ncols=True,
        mininterval=0.5,
    )
    try:
        yield bar
    finally:
        bar.close()
