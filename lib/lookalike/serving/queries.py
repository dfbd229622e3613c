"""What users search with, turned into what a Searcher takes, in one place for the CLI, the Python API
and the HTTP API (through `IndexHolder`).

A query is an image file (or a folder of them, for the CLI), encoded image bytes, a PIL image, a
dataset row id or a raw embedding. Files and bytes become RGB images: fitted to the encoder's input
size as soon as they are decoded (a JPEG at a reduced scale), or at full size for a picture of the
query. What cannot be used is a `QueryError`: one line naming the query and why, with the HTTP status
that fits and the short `reason` the CLI prints beside a file's name.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from lookalike.core.errors import LookalikeError, brief
from lookalike.stages.dataset.images import PixelBudget, PixelBudgetError, decode_rgb, draft_side


class QueryError(LookalikeError, ValueError):
    """A query the server cannot answer; `status` is the HTTP status that fits; `reason` is the why
    without the query's name (the message itself when it has none)."""

    def __init__(self, message: str, status: int = 422, reason: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason or message


class Fit(Protocol):
    """How an encoder takes an image: fitted to `size` x `size` (`Embedder.resize`)."""

    size: int

    def fit(self, image: Image.Image) -> Image.Image: ...


def read_query_file(path: Path) -> bytes:
    """The bytes of an image file, or a QueryError naming it: 404 when there is no such file (or it is a
    folder), 400 when it cannot be read; its reason is the system's (`Permission denied`)."""
    try:
        return path.read_bytes()
    except OSError as exc:  # missing, a folder, unreadable, a name too long to be a path
        missing = isinstance(exc, (FileNotFoundError, IsADirectoryError))
        why = "no such image file" if missing else f"cannot read image file ({exc.strerror or exc})"
        raise QueryError(
            f"{why}: {brief(str(path))}", status=404 if missing else 400, reason=exc.strerror or str(exc)
        ) from None


def decode_image(
    data: bytes, max_pixels: int, fit: Fit | None = None, budget: PixelBudget | None = None
) -> Image.Image:
    """Encoded image bytes -> an RGB image: with `fit`, the image the encoder takes (a JPEG decoded at the
    smallest DCT scale that keeps twice its size, as the embeddings stage decodes; anything else fitted
    as soon as it is decoded, so many queries never hold more than one full-size image); without, the
    full-size image.

    Raises:
        QueryError: 413 for an image over `max_pixels` or past the request's `budget`, else 400, saying
            `not a usable image: <why>` (its reason: the why).
    """
    try:
        if fit is None:
            return decode_rgb(data, max_pixels)
        return fit.fit(decode_rgb(data, max_pixels, draft_to=draft_side(fit.size), budget=budget))
    except PixelBudgetError as exc:
        raise QueryError(str(exc), status=413) from None
    except LookalikeError as exc:
        status = 413 if "pixels" in str(exc) or "bomb" in str(exc) else 400
        raise QueryError(f"not a usable image: {exc}", status=status, reason=str(exc)) from None


def read_image(path: Path, max_pixels: int, fit: Fit | None = None) -> Image.Image:
    """An image file decoded as `decode_image` does; a QueryError names the file."""
    data = read_query_file(path)
    try:
        return decode_image(data, max_pixels, fit)
    except QueryError as exc:
        raise QueryError(f"{brief(str(path))}: {exc}", status=exc.status, reason=exc.reason) from None


def image_files(paths: Iterable[Path]) -> list[Path]:
    """The files to query: each file as given, and a folder's image files (by the extensions Pillow
    reads), recursively in name order, hidden ones left out."""
    readable = set(Image.registered_extensions())
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(
                p
                for p in path.rglob("*")
                if p.suffix.lower() in readable
                and p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
        else:
            files.append(path)  # a missing or unreadable one is answered with its error
    return files


def as_queries(queries: Any) -> tuple[bool, list[Any]]:
    """(was it one query, the queries as a list): an image, a path, bytes, a row id or a 1-D array is
    one query; a 2-D array is one vector per row; any other iterable is many."""
    if isinstance(queries, np.ndarray):
        if queries.ndim == 1:
            return True, [queries]
        if queries.ndim == 2:
            return False, list(queries)
        raise QueryError(f"vectors are a 1-D array (one) or a 2-D array (one per row), not a {queries.ndim}-D array")
    one = (Image.Image, str, Path, bytes, bytearray, memoryview, int, np.integer)  # bytes: one encoded image
    if isinstance(queries, one) or not isinstance(queries, Iterable):
        return True, [queries]  # one query (or a non-query, which `normalise` names)
    return False, list(queries)


def normalise(query: Any, max_pixels: int, fit: Fit | None = None) -> Image.Image | int | list[float]:
    """One query as a searcher takes it: an image (files and bytes decoded, fitted with `fit`), a row id
    or a vector's values; a QueryError for anything else."""
    if isinstance(query, Image.Image):
        return query
    if isinstance(query, (bool, np.bool_)):
        raise QueryError(f"not a query: {query!r}")
    if isinstance(query, (int, np.integer)):
        return int(query)
    if isinstance(query, np.ndarray):
        if query.ndim != 1 or query.dtype.kind not in "iuf":  # complex, object, text, bool: no vector
            raise QueryError(
                f"a vector query is a 1-D array of real numbers, not a {query.ndim}-D array of {query.dtype}"
            )
        return query.astype(np.float32).tolist()
    if isinstance(query, (bytes, bytearray, memoryview)):  # a file's contents, never a list of row ids
        return decode_image(bytes(query), max_pixels, fit)
    if isinstance(query, (str, Path)):
        return read_image(Path(query).expanduser(), max_pixels, fit)
    raise QueryError(
        f"not a query: {type(query).__name__}; give PIL images, image file paths, image bytes, row ids "
        "or 1-D numpy vectors"
    )


def query_vector(vector: list[float], dim: int, index_key: str) -> np.ndarray:
    """A vector query as float32, or a QueryError when index `index_key` (of dimension `dim`) cannot take it."""
    array = np.asarray(vector, dtype=np.float32)
    if array.ndim != 1 or array.shape[0] != dim:
        raise QueryError(f"vector has {array.size} values; index {index_key} takes {dim}")
    if not np.isfinite(array).all():
        raise QueryError("vector contains NaN or infinity")
    return array
