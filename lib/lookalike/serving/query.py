"""Query a built index: images (or dataset rows, or vectors) in, top-k most similar rows out,
optionally only among the rows a metadata filter matches (`lookalike.core.filters`).

The chain of manifests a Searcher loads comes from `lookalike.serving.refs` (a reference, or the
settings `lookalike run` was given).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from lookalike.core.filters import Filter, parse_filter
from lookalike.core.manifest import IntegrityError
from lookalike.serving.refs import Chain
from lookalike.stages.dataset.images import decode_snapshot_image
from lookalike.stages.dataset.stage import open_snapshot, row_positions
from lookalike.stages.index.factory import load_index, prepare_vectors, search
from lookalike.stages.index.metadata import Metadata
from lookalike.stages.inference import Embedder
from lookalike.stages.pictures import retrieval_grid


class Searcher:
    """Encoder, index and snapshot loaded once (after sha256 checks), queried many times."""

    def __init__(self, root: Path, chain: Chain) -> None:
        self.chain = chain
        # the embeddings stage's own inference path and layout, so a query vector is the stored one
        self.embedder = Embedder(
            root, chain.encoder, channels_last=chain.embeddings.settings.get("channels_last", True)
        )
        self.index = load_index(root, chain.index)
        self.metric = chain.index.stats["metric"]
        self.snapshot = open_snapshot(root, chain.dataset)
        self.names = chain.dataset.stats.get("label_names")
        self.position = row_positions(self.snapshot)
        self.metadata = Metadata.of_chain(root, chain.index, chain.dataset, self.snapshot)

    @property
    def spec(self):
        return self.embedder.spec

    def embed(self, image: Image.Image) -> np.ndarray:
        """(1, dim) float32: the vector the embeddings stage stores for this image."""
        return self.embedder.embed_images([image])

    def image_of_row(self, row_id: int) -> Image.Image:
        return decode_snapshot_image(self._item(row_id)["image"]["bytes"])

    def _item(self, row_id: int) -> dict:
        if row_id not in self.position:
            raise IntegrityError(f"row {row_id} is not in the index (rows are dataset row ids; see `n_images`)")
        return self.snapshot[self.position[row_id]]

    def allowed_rows(self, where: str | list[str] | Filter | None) -> np.ndarray | None:
        """Row ids a filter matches (None: no filter, every row). Raises FilterError for a bad one."""
        filter_ = where if isinstance(where, Filter) else parse_filter(where)
        return self.metadata.rows(filter_) if filter_ else None

    def neighbours(self, image: Image.Image, k: int, where: str | list[str] | Filter | None = None) -> list[dict]:
        """Top-k rows for an image, nearest first, among the rows `where` matches (all without one)."""
        return self.search_images([image], k, where)[0]

    def neighbours_of_vector(
        self, vector: np.ndarray, k: int, where: str | list[str] | Filter | None = None
    ) -> list[dict]:
        """Top-k rows for one raw embedding (normalised here when the index's metric needs it)."""
        return self.search_vectors(vector[None], k, where)[0]

    def search_images(
        self, images: list[Image.Image], k: int, where: str | list[str] | Filter | None = None
    ) -> list[list[dict]]:
        """Top-k hits for each image, embedded together in batches through the one inference path."""
        if not images:
            return []
        return self.search_vectors(self.embedder.embed_images(images), k, where)

    def search_vectors(
        self, vectors: np.ndarray, k: int, where: str | list[str] | Filter | None = None
    ) -> list[list[dict]]:
        """Top-k hits for each raw embedding (n, dim), in one FAISS search."""
        allowed = self.allowed_rows(where)
        distances, ids = search(self.index, prepare_vectors(vectors, self.metric), k, allowed)
        return [
            [self.describe(int(row), float(d)) for d, row in zip(dist, found) if row >= 0]
            for dist, found in zip(distances, ids)
        ]

    def describe(self, row: int, distance: float) -> dict:
        """One search hit as users see it: {row, distance, label, path, split, width, height, sha256, ...}
        with the dataset's metadata columns after the built-in ones."""
        if row not in self.metadata.position:
            raise IntegrityError(f"row {row} is not in the index (rows are dataset row ids; see `n_images`)")
        known = self.metadata.of_row(row)
        return {"row": row, "distance": round(distance, 6), **{k: v for k, v in known.items() if k != "row"}}

    def picture(self, query: Image.Image, caption: str, found: list[dict]) -> Image.Image:
        cells = [
            (self.image_of_row(n["row"]), f"row {n['row']} d={n['distance']:.3f}\n{n['label'] or ''}") for n in found
        ]
        return retrieval_grid([(query, caption, cells)])
