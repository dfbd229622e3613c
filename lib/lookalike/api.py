"""The Python API: what `lookalike run` and `lookalike query` do, from a notebook or a script.

    import lookalike

    summary = lookalike.run(dataset="sample", steps=300)        # build (or reuse) an index, evaluate, promote
    index = lookalike.load("production")                        # any reference the CLI takes
    hits = index.search(["cat.png", "dog.jpg"], k=5)            # many images, paths, rows or vectors at once
    vectors = lookalike.embed(["cat.png"], index="production")  # (n, dim) float32, as the index stores them

`run` runs the same Prefect flow as the CLI (unless PREFECT_API_URL names a server, on a temporary
local one that the process's first run starts and its later runs reuse); `load`, `Index.search` and `embed` need no Prefect server. Queries go through the one
inference path the embeddings stage used, so a row's own image finds the row at distance ~0.
(The HTTP API of `lookalike serve` is `lookalike.app.api`.)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from lookalike.core.names import QUERY_CHUNK, TOP_K

if TYPE_CHECKING:  # heavy: imported when an index loads, not with `import lookalike`
    import numpy as np
    from PIL import Image

    from lookalike.serving.holder import IndexHolder

# One query: an image, an image file, encoded image bytes, a dataset row id of the index, or a raw
# embedding (1-D array of real numbers)
Query = Union["Image.Image", str, Path, bytes, int, "np.ndarray"]

__all__ = ["Index", "Neighbour", "RunSummary", "embed", "load", "run"]


@dataclass(frozen=True)
class Neighbour:
    """One search hit: a row of the indexed dataset and its distance to the query (squared L2 after
    whitening for an l2 index, cosine similarity for an ip index), with its metadata."""

    row: int
    distance: float
    label: str | None = None
    path: str | None = None
    split: str | None = None
    width: int | None = None
    height: int | None = None
    sha256: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # the dataset's `dataset.metadata_columns`

    @classmethod
    def of(cls, hit: Mapping[str, Any]) -> Neighbour:
        known = {name: hit.get(name) for name in cls.__dataclass_fields__ if name not in ("row", "distance", "extra")}
        extra = {k: v for k, v in hit.items() if k not in cls.__dataclass_fields__}
        return cls(row=int(hit["row"]), distance=float(hit["distance"]), **known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        """The hit as `lookalike query --json` and the HTTP API write it."""
        base = {name: getattr(self, name) for name in self.__dataclass_fields__ if name != "extra"}
        return {**base, **self.extra}


@dataclass(frozen=True)
class RunSummary(Mapping):
    """What a run built and how good it is: the `lookalike run --json` object, typed.

    The keys of the JSON summary read as attributes (`summary.metrics`, `summary.baselines`) and as
    items (`summary["metrics"]`); `index_key` and `promoted` are the two most asked questions, and
    `load()` opens the index this run built."""

    data: dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name == "data":
            raise AttributeError(name)
        try:
            return self.data[name]
        except KeyError:
            raise AttributeError(f"RunSummary has no {name!r}; it has {sorted(self.data)}") from None

    @property
    def index_key(self) -> str:
        return self.data["stages"]["index"]["key"]

    @property
    def root(self) -> str:
        return self.data["artifacts"]["root"]

    @property
    def promoted(self) -> bool:
        return bool((self.data.get("promotion") or {}).get("promoted"))

    def load(self) -> Index:
        """The index this run built (by its folder, so it stays this one when aliases move)."""
        return load(str(Path(self.root) / "index" / self.index_key))


def run(
    dataset: str | None = None,
    *,
    split: str | None = None,
    method: str | None = None,
    steps: int | None = None,
    epochs: int | None = None,
    index: str | None = None,
    artifacts_root: str | Path | None = None,
    mirror: str | None = None,
    promote: bool = True,
    verbose: bool = False,
    **settings: Any,
) -> RunSummary:
    """Build (or reuse, stage by stage) the retrieval index for these settings, evaluate it beside its
    baselines and, when it passes the promotion gate, point `production` at it; `lookalike run`.

    Args:
        dataset: 'sample', a hub name, an image folder, an s3:// prefix, a .parquet file, a table of image
            paths or URLs (.csv, .jsonl, .parquet) or a save_to_disk folder.
        split, method, steps, epochs, index, artifacts_root, mirror, promote: as the CLI's options.
        verbose: print Prefect's INFO lines (warnings and progress bars show either way).
        **settings: any other setting, spelled `section__field` as in the LOOKALIKE_ environment
            variables (`encoder__lr=1e-3`, `dataset__limit=256`) or as a dotted key
            (`**{"encoder.lr": 1e-3}`).

    Raises:
        LookalikeError: a setting, the dataset or a stage is wrong; the message says how to fix it.
    """
    from lookalike.core.errors import refuse_while_a_worker_imports_main
    from lookalike.core.settings import RunRequest
    from lookalike.flows.runner import run_pipeline
    from lookalike.stages.dataset.sources import check_source

    refuse_while_a_worker_imports_main()  # before a temporary server is started in a worker for nothing
    request = RunRequest(
        dataset=dataset,
        split=split,
        method=method,
        steps=steps,
        epochs=epochs,
        index=index,
        artifacts_root=str(artifacts_root) if artifacts_root is not None else None,
        mirror=mirror,
        overrides={key.replace("__", "."): value for key, value in settings.items()},
    )
    resolved = request.settings()  # every mistake is reported before anything runs
    check_source(resolved.dataset)
    parameters = {**request.flow_parameters(resolved), "promote": promote}
    return RunSummary(run_pipeline(parameters, request.free_overrides(), verbose=verbose))


class Index:
    """A built index, loaded once (encoder, FAISS index and snapshot, after sha256 checks) and
    searched many times. `lookalike.load(ref)` makes one."""

    def __init__(self, holder: IndexHolder) -> None:
        self._holder = holder

    @property
    def key(self) -> str:
        """The index stage key (the folder name under `<root>/index/`)."""
        return self._holder.searcher.chain.index.key

    @property
    def alias(self) -> str | None:
        """The alias it was loaded through, if any."""
        return self._holder.info()["alias"]

    @property
    def ntotal(self) -> int:
        return self._holder.searcher.index.ntotal

    @property
    def dim(self) -> int:
        return self._holder.searcher.index.d

    @property
    def rows(self) -> list[int]:
        """The dataset row ids it holds, ascending (what row queries and hits name)."""
        return sorted(self._holder.searcher.position)

    @property
    def metric(self) -> str:
        return self._holder.searcher.metric

    @property
    def root(self) -> Path:
        """The artifacts root it was loaded from (a fetched copy for s3:// and W&B references)."""
        return self._holder.root

    @property
    def metrics(self) -> dict[str, Any]:
        """Its evaluation (precision@k, mAP@k, kNN accuracy, baselines) when loaded through an alias
        that records one, and its self-retrieval and recall."""
        return dict(self._holder.info()["metrics"])

    @property
    def metadata_columns(self) -> list[str]:
        """The fields hits carry and `where` filters can name."""
        return list(self._holder.searcher.metadata.columns)

    def __repr__(self) -> str:
        via = f" via alias {self.alias!r}" if self.alias else ""
        return f"<lookalike.Index {self.key}{via}: {self.ntotal} images, dim {self.dim}, {self.metric}>"

    def reload(self) -> bool:
        """Re-read the alias it was loaded through; True when it now points at another index."""
        return self._holder.reload()

    def image(self, row: int) -> Image.Image:
        """The indexed dataset's image of a row id."""
        from lookalike.core.checks import whole_number

        return self._holder.image_of_row(whole_number(row, "row"))

    def search(
        self, queries: Query | Iterable[Query], k: int = TOP_K, where: str | list[str] | None = None
    ) -> list[Neighbour] | list[list[Neighbour]]:
        """The k most similar rows, nearest first.

        Args:
            queries: one query or many: PIL images, image file paths, encoded image bytes (a PNG or
                JPEG file's contents), dataset row ids of this index (ints or numpy integers), and raw
                embeddings (1-D arrays of `dim` real numbers, or a 2-D array of them), mixed freely.
                Images are decoded, and embedded together, in chunks of 256 through the inference
                path of the embeddings stage.
            k: neighbours per query (1-100).
            where: only rows matching a filter, e.g. `"label=Sneaker,Sandal and width>=64"`.

        Returns:
            For one query, its neighbours; for several, one list of neighbours per query, in order.

        Raises:
            QueryError: an unreadable image, a row this index lacks, a vector of the wrong size, a
                bad filter or k; the message names it.
        """
        from lookalike.serving.holder import check_filter, check_k
        from lookalike.serving.queries import as_queries

        k, where = check_k(k), check_filter(where)  # before any image is decoded
        single, items = as_queries(queries)
        hits: list[list[Neighbour]] = []
        key = None
        for start in range(0, len(items), QUERY_CHUNK):
            chunk = [self._decoded(q) for q in items[start : start + QUERY_CHUNK]]
            answered, found = self._holder.search_many(chunk, k, where)
            if key is not None and answered != key:  # an alias moved mid-call: never mix two indexes
                return self.search(queries, k, where)
            key = answered
            hits.extend([Neighbour.of(hit) for hit in row] for row in found)
        return hits[0] if single else hits

    def embed(self, images: Query | Iterable[Query]) -> np.ndarray:
        """(n, dim) float32 vectors of images, image files, image bytes or row ids, as this index stores
        them. Files and bytes are decoded at the size the encoder takes, one at a time: a JPEG more than
        twice that size at a reduced scale (JPEG draft), so its vector can differ slightly from a
        full-size decode's."""
        import numpy as np

        from lookalike.serving.queries import as_queries

        _, items = as_queries(images)
        searcher = self._holder.searcher
        chunks = []
        for start in range(0, len(items), QUERY_CHUNK):
            decoded = [self._decoded(q) for q in items[start : start + QUERY_CHUNK]]
            if any(isinstance(q, list) for q in decoded):
                from lookalike.serving.holder import QueryError

                raise QueryError("embed takes images, image files, image bytes or row ids, not vectors")
            pictures = [self.image(q) if isinstance(q, int) else q for q in decoded]
            chunks.append(searcher.embedder.embed_images(pictures))
        return np.concatenate(chunks) if chunks else np.zeros((0, self.dim), np.float32)

    def duplicates(self, threshold: float | None = None, linkage: str = "leader") -> dict[str, Any]:
        """Exact and near-duplicate groups of the indexed collection (`lookalike duplicates --json`)."""
        from lookalike.stages.duplicates import find_duplicates

        chain = self._holder.searcher.chain
        report = find_duplicates(
            self.root, chain.dataset, chain.encoder, chain.embeddings, chain.index, threshold=threshold, linkage=linkage
        )
        return report.to_json()

    def _decoded(self, query: Query) -> Image.Image | int | list[float]:
        """A query as IndexHolder.search_many takes it: an image, a row id or a vector."""
        from lookalike.serving.queries import normalise

        return normalise(query, self._holder.max_image_pixels, self._holder.searcher.embedder.resize)


def load(
    ref: str | Path = "production", *, artifacts_root: str | Path | None = None, endpoint_url: str | None = None
) -> Index:
    """Load a built index by any reference the CLI takes: an alias (`production`), an index stage key,
    an index folder (`<root>/index/<key>`), `s3://bucket/prefix/index/<key>` or `.../aliases/<name>`,
    or a W&B artifact path (`entity/project/<method>-embeddings:production`). Remote ones are fetched
    into `<artifacts_root>/remote/` and sha256-checked first.

    The index stays the one loaded; `Index.reload()` follows its alias when it moves.
    """
    from lookalike.artifacts.shared_root import open_root
    from lookalike.core.settings import load_settings
    from lookalike.serving.holder import IndexHolder

    settings = load_settings({"artifacts_root": str(artifacts_root) if artifacts_root is not None else None})
    root = open_root(settings)
    holder = IndexHolder(
        root,
        str(ref),
        poll_seconds=float("inf"),
        max_image_pixels=settings.dataset.max_image_pixels,
        endpoint_url=endpoint_url or settings.mirror.endpoint_url,
    )
    return Index(holder)


def embed(
    images: Query | Iterable[Query], index: str | Path = "production", *, artifacts_root: str | Path | None = None
) -> np.ndarray:
    """(n, dim) float32 vectors of images or image files, by the encoder of an index (any reference
    `load` takes), exactly as its embeddings stage stored the collection's vectors."""
    return load(index, artifacts_root=artifacts_root).embed(images)
