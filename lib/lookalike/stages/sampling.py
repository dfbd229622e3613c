"""Seeded samples of positions: which vectors train an index, which rows query it.

One idiom for every stage, so the same N and seed always pick the same rows: a sorted draw
without replacement, or every position when N is no more than asked for.
"""

from __future__ import annotations

import numpy as np


def seeded_sample(n: int, size: int | None, seed: int = 0) -> np.ndarray:
    """`size` positions of `range(n)`, sorted, drawn without replacement from `seed`; all of them
    when `size` is None or at least `n`."""
    if size is None or n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))
