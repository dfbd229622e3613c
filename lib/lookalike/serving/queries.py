"""What users query with, turned into what a searcher takes."""

from __future__ import annotations

from lookalike.core.errors import LookalikeError


class QueryError(LookalikeError, ValueError):
    """A query the server cannot answer; `status` is the HTTP status that fits."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status
