"""Serving queries from a built index: one loaded Searcher, swapped whole when an alias moves.

`IndexHolder` resolves a reference (`lookalike.serving.refs`: an alias such as `production`, an index stage key, an
index mirrored to `s3://bucket/prefix/index/<key>`, or a W&B artifact path
`entity/project/<method>-embeddings:production`, fetched and verified first),
loads encoder, index and snapshot once (after sha256 checks) and answers queries. For an
alias, requests trigger a re-read of the small alias file (from S3 for an S3 alias URL) at most
every `poll_seconds`, in a background thread; when the alias points somewhere new, the new chain
is loaded completely *beside* the old one and only then swapped in, so a request never sees a half-loaded index
and never waits for one to load. A chain that fails to load leaves
the old one serving and is reported in `info()`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lookalike.artifacts.aliases import Alias
from lookalike.artifacts.mirror import fetch_index_chain
from lookalike.core.checks import BadValueError, whole_number
from lookalike.core.errors import LookalikeError
from lookalike.core.filters import Filter, FilterError, parse_filter
from lookalike.core.manifest import find_manifest
from lookalike.core.names import MAX_K
from lookalike.serving.queries import QueryError, decode_image, query_vector
from lookalike.serving.query import Searcher
from lookalike.serving.refs import Chain, IndexRef, resolve_name
from lookalike.stages.dataset.images import PixelBudget

MAX_BATCH = 64  # queries in one batch request: bounded, so one request cannot hold the server for long
REQUEST_PIXELS_FACTOR = 4  # pixels one request may decode, in images at the per-image limit


@dataclass(frozen=True)
class Loaded:
    searcher: Searcher
    alias: str | None
    loaded_at: float
    metrics: dict[str, Any]


class IndexHolder:
    """The index being served, reloaded when its alias moves."""

    def __init__(
        self,
        root: Path | str,
        ref: str = "production",
        poll_seconds: float = 2.0,
        max_image_pixels: int = 40_000_000,
        endpoint_url: str | None = None,
        max_request_pixels: int | None = None,
    ) -> None:
        self.ref, self.poll_seconds, self.max_image_pixels = ref, poll_seconds, max_image_pixels
        # what the images of one request may decode to in all: a few images at the limit, or a batch of
        # photos (JPEGs decode at a reduced scale); each is fitted to the input size before the next
        self.max_request_pixels = max_request_pixels or REQUEST_PIXELS_FACTOR * max_image_pixels
        parsed = IndexRef.parse(ref)
        self.root, local_ref = parsed.localize(root, endpoint_url)
        # An S3 alias URL is re-read from S3 on each check, so the server follows it as it moves.
        self._remote_alias = parsed.remote_alias
        self._endpoint_url, self._cache = endpoint_url, Path(root) / "remote"
        self._lock = threading.Lock()
        self._loaded = self._load(*resolve_name(self.root, local_ref))
        self._checked = time.monotonic()
        self.reload_error: str | None = None
        self._failed_key: str | None = None

    def _load(self, chain: Chain, alias: Alias | None) -> Loaded:
        metrics = {
            "self_retrieval_at_1": chain.index.stats.get("self_retrieval_at_1"),
            "recall_at_10": chain.index.stats.get("recall_at_10"),
        }
        evaluation_key = alias.stages.get("evaluation") if alias else None
        evaluation = None
        if evaluation_key and find_manifest(self.root, "evaluation", evaluation_key) is not None:
            evaluation = alias.manifest(self.root, "evaluation")  # its metrics, checked against the alias
        if evaluation is not None:
            metrics.update({k: v for k, v in evaluation.stats.items() if isinstance(v, float)})
        return Loaded(Searcher(self.root, chain), alias.name if alias else None, time.time(), metrics)

    @property
    def searcher(self) -> Searcher:
        """The current searcher. When a check for a moved alias is due, it runs in a background
        thread: no request waits for a new index to load, they keep the current one meanwhile."""
        if self._loaded.alias and time.monotonic() - self._checked >= self.poll_seconds:
            if self._lock.acquire(blocking=False):  # one check at a time; released by the thread
                self._checked = time.monotonic()
                threading.Thread(target=self._reload_and_release, name="lookalike-reload", daemon=True).start()
        return self._loaded.searcher

    def _reload_and_release(self) -> None:
        try:
            self._reload_locked()
        finally:
            self._lock.release()

    def reload(self) -> bool:
        """Re-resolve the alias now; swap in its chain if it moved (retrying one refused before,
        in case its files were repaired). True when swapped."""
        with self._lock:
            self._failed_key = None
            return self._reload_locked()

    def _reload_locked(self) -> bool:
        self._checked = time.monotonic()
        if not self._loaded.alias:
            return False
        serving = self._loaded.searcher.chain.index.key
        try:
            if self._remote_alias:  # the alias from S3, and the chain it names (fetched, verified)
                fetch_index_chain(self.ref, self._cache, self._endpoint_url)
            chain, alias = resolve_name(self.root, self._loaded.alias)
        except (LookalikeError, OSError) as exc:
            self.reload_error = f"still serving {serving}: {exc}"
            return False
        if chain.index.key == serving:
            self.reload_error = self._failed_key = None
            return False
        if chain.index.key == self._failed_key:
            return False  # refused once already; checked again when the alias moves
        try:
            self._loaded = self._load(chain, alias)  # fully built before it replaces the old one
        except (LookalikeError, OSError) as exc:
            self._failed_key = chain.index.key
            self.reload_error = f"still serving {serving}: {exc}"
            return False
        self.reload_error = self._failed_key = None
        return True

    def info(self) -> dict[str, Any]:
        self.searcher  # noqa: B018 - asking what is served is a reason to check the alias too
        loaded = self._loaded
        chain = loaded.searcher.chain
        return {
            "ref": self.ref,
            "alias": loaded.alias,
            "index": chain.index.key,
            "encoder": chain.encoder.key,
            "dataset": chain.dataset.key,
            "created": chain.index.created,
            "ntotal": chain.index.stats.get("ntotal"),
            "dim": chain.index.stats.get("dim"),
            "metric": chain.index.stats.get("metric"),
            "metadata_columns": loaded.searcher.metadata.columns,  # what hits carry and filters can name
            "method": chain.encoder.settings.get("method"),
            "metrics": loaded.metrics,
            "loaded_at": loaded.loaded_at,
            "reload_error": self.reload_error,
        }

    # --- the three kinds of query -------------------------------------------------------------

    # Each returns (index key, hits) from one searcher, so the key is the index that answered even
    # when the alias moves during the request. `where` is a filter (`lookalike.core.filters`):
    # only matching rows are returned; a filter that cannot be read or names an unknown field is a 422.

    def by_image_bytes(self, data: bytes, k: int, where: Where = None) -> tuple[str, list[dict]]:
        key, hits = self.search_many([data], k, where)
        return key, hits[0]

    def decode(self, data: bytes, budget: PixelBudget | None = None, searcher: Searcher | None = None) -> Image.Image:
        """An uploaded image at the size the (given or current) searcher's encoder takes, within this
        holder's pixel limits (`lookalike.serving.queries.decode_image`: a QueryError says why it cannot
        be used, 413 for a pixel bomb or a request over its pixel budget)."""
        return decode_image(data, self.max_image_pixels, (searcher or self.searcher).embedder.resize, budget)

    def by_image(self, image: Image.Image, k: int, where: Where = None) -> tuple[str, list[dict]]:
        key, hits = self.search_many([image], k, where)
        return key, hits[0]

    def by_row(self, row: int, k: int, where: Where = None) -> tuple[str, list[dict]]:
        key, hits = self.search_many([row], k, where)
        return key, hits[0]

    def image_of_row(self, row: int) -> Image.Image:
        """A dataset image of the served index (404-shaped QueryError for a row it lacks)."""
        return row_image(self.searcher, row)

    def by_vector(self, vector: list[float], k: int, where: Where = None) -> tuple[str, list[dict]]:
        key, hits = self.search_many([vector], k, where)
        return key, hits[0]

    def search_many(self, queries: list[Image.Image | bytes | int | list[float]], k: int, where: Where = None):
        """(index key, hits per query) for images, encoded image bytes, dataset row ids and raw vectors,
        in one searcher: the images (and rows' images) are embedded together in batches, then all of
        them are searched in one FAISS call.

        Image bytes and rows are decoded one at a time and fitted to the encoder's input size at once,
        so a request holds one full-size image at most; the bytes of one call may decode to
        `max_request_pixels` in all (a 413 QueryError past that)."""
        searcher = self.searcher
        k, filter_ = check_k(k), check_filter(where)
        budget = PixelBudget(self.max_request_pixels)

        def image_of(query: Image.Image | bytes | int) -> Image.Image:
            if isinstance(query, bytes):
                return self.decode(query, budget, searcher)
            if isinstance(query, int):
                return searcher.embedder.resize.fit(row_image(searcher, query))
            return query

        images = [image_of(q) for q in queries if not isinstance(q, list)]
        embedded = iter(searcher.embedder.embed_images(images)) if images else iter(())
        vectors = [
            query_vector(q, searcher.index.d, searcher.chain.index.key) if isinstance(q, list) else next(embedded)
            for q in queries
        ]
        try:
            hits = searcher.search_vectors(np.stack(vectors), k, filter_)
        except FilterError as exc:
            raise QueryError(str(exc)) from None
        return searcher.chain.index.key, hits


Where = str | list[str] | Filter | None


def check_filter(where: Where) -> Filter:
    """The parsed filter, or a QueryError (422) saying why it cannot be read."""
    try:
        return where if isinstance(where, Filter) else parse_filter(where)
    except FilterError as exc:
        raise QueryError(str(exc)) from None


def row_image(searcher: Searcher, row: int) -> Image.Image:
    if row not in searcher.position:
        raise QueryError(
            f"row {row} is not in index {searcher.chain.index.key} "
            f"({searcher.chain.index.stats.get('ntotal')} rows; ids are dataset row ids)",
            status=404,
        )
    return searcher.image_of_row(row)


def check_k(k: object) -> int:
    """k as an int (a numpy integer too), or a QueryError saying what k can be (a bool, a float or a
    string is not a k: FAISS would refuse it, or read True as 1)."""
    try:
        return whole_number(k, "k", 1, MAX_K)
    except BadValueError as exc:
        raise QueryError(str(exc)) from None
