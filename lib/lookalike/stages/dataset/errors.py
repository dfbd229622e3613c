"""The dataset stage's user-facing error, shared by its source modules (`sources`, `tables`)."""

from __future__ import annotations

from lookalike.core.errors import LookalikeError

MINIMUM = "lookalike needs at least 1 readable image to index (2 to pretrain)"


class DatasetError(LookalikeError, ValueError):
    """A problem with the dataset the user pointed at; the message says how to fix it."""
