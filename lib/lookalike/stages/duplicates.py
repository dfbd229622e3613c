"""Duplicates in an indexed collection: exact copies by content sha256, near-copies by embedding distance.

Exact duplicates are rows whose encoded bytes hash the same (the dataset stage hashes every image).
Near-duplicates are rows within a distance threshold of each other in the index's own space (after its
whitening), joined into connected components. The threshold is calibrated on the collection itself
(`calibrate_threshold`): a seeded sample of its images is copied with a mild augmentation (crop, flip,
brightness, JPEG), the copies are embedded through the one inference path and searched in the index,
and the threshold is the distance that holds 95 % of those copies — capped so that it never reaches
into the distances at which distinct images of this collection usually sit (see `CAP_FRACTION`).

Distances are the index's: squared L2 for `l2` (lower is closer), inner product for `ip` (higher is
closer), exactly as `lookalike.stages.index.factory.search` returns them. `within` and `closer` hide
that direction from the rest of the module.
"""

from __future__ import annotations

import io
import json
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from PIL import Image, ImageEnhance

from lookalike.core.checks import one_of, real_number
from lookalike.core.errors import LookalikeError
from lookalike.core.manifest import Manifest
from lookalike.stages.dataset.images import decode_snapshot_image
from lookalike.stages.dataset.stage import column_at, image_paths_at, open_snapshot, positions_of
from lookalike.stages.embeddings.shards import embedding_row_ids, iter_embeddings, load_embedding_rows
from lookalike.stages.index.capabilities import capabilities
from lookalike.stages.index.factory import load_index, prepare_vectors, search
from lookalike.stages.sampling import seeded_sample

COPY_QUANTILE = 0.95  # the share of augmented copies the threshold must hold
# ... but never more than this fraction of the median distance from an image to its nearest other image:
# the median stays a distinct-image distance as long as fewer than half of the images have a near-copy.
CAP_FRACTION = 0.5
CALIBRATION_SAMPLE = 200
REPORT = "duplicates.json"  # what the evaluation stage writes: `DuplicateReport.to_json()`
PICTURE = "duplicates.png"  # and the picture of its largest groups (only when there are groups)
THUMBNAIL = 128
KNN_FALLBACK = 20  # neighbours per row when the index type has no safe range search (HNSW, NSG, ...)
_BATCH = 1024


LINKAGES = ("leader", "components")  # how rows within the threshold form groups (`near_groups`)
# What a given threshold is, and the values it can take, by the index's metric
THRESHOLD_UNITS = {"l2": "a squared L2 distance for this l2 index", "ip": "a cosine similarity for this ip index"}
THRESHOLD_RANGE = {"l2": (0.0, None), "ip": (0.0, 1.0)}


class DuplicatesError(LookalikeError, ValueError):
    """Duplicates cannot be computed for this input; says why and what to do."""


@dataclass(frozen=True)
class Calibration:
    """The near-duplicate threshold and the measurements behind it.

    Attributes:
        threshold: in the index's distance units (squared L2 for l2, inner product for ip).
        rule: how it was chosen, in words.
        metric: the index's metric ("l2" or "ip").
        copy_threshold: the distance that holds COPY_QUANTILE of the augmented copies.
        cap: CAP_FRACTION of the median nearest-other distance (for ip: the similarity bound).
        copies_within: fraction of the augmented copies within `threshold`.
        nearest_other_within: fraction of sampled rows whose nearest distinct (not byte-identical) row
            is within `threshold`: the rows that would be grouped with something.
        n_sample: sampled rows (= augmented copies).
        why: one human line.
    """

    threshold: float
    rule: str
    metric: str
    copy_threshold: float
    cap: float
    copies_within: float
    nearest_other_within: float
    n_sample: int
    why: str
    copy_distances: list[float] = field(default_factory=list, repr=False)
    nearest_other_distances: list[float] = field(default_factory=list, repr=False)

    def summary(self) -> dict[str, Any]:
        """The calibration without its raw distances (for manifests and JSON)."""
        out = asdict(self)
        out.pop("copy_distances")
        out.pop("nearest_other_distances")
        return out


def within(distances: np.ndarray, threshold: float, metric: str) -> np.ndarray:
    """Which distances count as near: <= threshold for l2, >= threshold for ip (a similarity)."""
    return distances >= threshold if metric == "ip" else distances <= threshold


def exact_groups(snapshot, holding: np.ndarray | None = None) -> list[list[int]]:
    """Row ids grouped by identical content sha256 (groups of >= 2), largest first, then by first row id;
    only the groups holding one of the row ids `holding`, when given.

    Grouped in Arrow and numpy: a million rows in about a second, without a dict of a million hashes."""
    ids = snapshot.data.column("row_id").to_numpy()
    codes = snapshot.data.column("sha256").combine_chunks().dictionary_encode().indices.to_numpy()
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    sizes = np.diff(np.r_[starts, len(codes)])
    repeated = sizes >= 2
    if holding is not None:
        wanted = np.zeros(len(codes), dtype=bool)  # per content code: does a row of it sit in `holding`
        wanted[codes[np.isin(ids, holding)]] = True
        repeated &= wanted[sorted_codes[starts]]
    return _ordered(ids[order[s : s + n]].tolist() for s, n in zip(starts[repeated], sizes[repeated]))


def _ordered(groups) -> list[list[int]]:
    groups = [sorted(g) for g in groups]
    return sorted(groups, key=lambda g: (-len(g), g[0]))


def augmented_copy(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A mild, seeded copy of `image`, the kind a collection gathers by accident: a crop keeping
    95-100 % of each side (a trimmed border) resized back, brightness x0.95-1.05, then a JPEG
    re-encode at quality 75.

    No flip and no stronger crop: on the bundled sample's trained encoder a mirror image moves a median
    0.53 (squared L2 after whitening), a 90 % crop 0.60 and an 85 % crop 0.69, about as far as a typical
    image's nearest distinct neighbour (0.79), so copies like that cannot be told from distinct images by
    distance; a copy's threshold calibrated on them would group distinct images (benchmarks/README.md).
    """
    image = image.convert("RGB")
    w, h = image.size
    cw, ch = max(1, round(w * rng.uniform(0.95, 1.0))), max(1, round(h * rng.uniform(0.95, 1.0)))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    image = image.crop((x, y, x + cw, y + ch)).resize((w, h), Image.Resampling.BILINEAR)
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.95, 1.05))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=75)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def index_space(index: faiss.Index, vectors: np.ndarray) -> np.ndarray:
    """`vectors` (prepared for the metric) as the index compares them: through its whitening, when it has one."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if isinstance(index, faiss.IndexPreTransform):
        for i in range(index.chain.size()):
            vectors = index.chain.at(i).apply(vectors)
    return vectors


def pair_distances(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    """Row-wise distance between two arrays already in the index's space, in the index's units."""
    return (a * b).sum(1) if metric == "ip" else ((a - b) ** 2).sum(1)


def calibrate_threshold(
    embedder, snapshot, index: faiss.Index, metric: str, *, sample: int = CALIBRATION_SAMPLE, seed: int = 0
) -> Calibration:
    """Choose the near-duplicate threshold from the collection itself (see the module docstring).

    Args:
        embedder: the run's `lookalike.stages.inference.Embedder` (the one that embedded the index).
        snapshot: the opened dataset snapshot the index was built from.
        index: the loaded index (the originals, behind its whitening).
        metric: the index's metric.
    """
    n = len(snapshot)
    if n < 2:
        raise DuplicatesError(f"near-duplicates need at least 2 indexed images, got {n}")
    picks = seeded_sample(n, sample, seed)
    rng = np.random.default_rng(seed)
    rows = snapshot.select(picks.tolist())
    row_ids = np.asarray(rows["row_id"], dtype=np.int64)
    originals = [decode_snapshot_image(item["bytes"]) for item in rows["image"]]
    copies = [augmented_copy(image, rng) for image in originals]
    copy_vectors = index_space(index, prepare_vectors(embedder.embed_images(copies), metric))
    original_vectors = prepare_vectors(embedder.embed_images(originals), metric)
    copy_d = pair_distances(copy_vectors, index_space(index, original_vectors), metric)

    # each original's nearest indexed row that is neither itself nor a byte-identical copy of it (only the
    # exact groups holding a sampled row matter: at 1M rows the whole collection's are ~58,000)
    same = defaultdict(set)
    for group in exact_groups(snapshot, holding=row_ids):
        for r in group:
            same[r] = set(group)
    k = min(n, 2 + max((len(g) for g in same.values()), default=1))
    distances, ids = search(index, original_vectors, k)
    other_d = []
    for own, dist, found in zip(row_ids, distances, ids):
        skip = same.get(int(own), {int(own)})
        hits = [d for d, r in zip(dist, found) if r >= 0 and int(r) not in skip]
        if hits:
            other_d.append(float(hits[0]))
    other = np.asarray(other_d, dtype=np.float64)

    ip = metric == "ip"
    copy_threshold = float(np.quantile(copy_d, 1 - COPY_QUANTILE if ip else COPY_QUANTILE))
    if len(other):
        median = float(np.median(other))
        # for ip the same rule on the distance 1 - similarity: cap = 1 - CAP_FRACTION * (1 - median)
        cap = 1 - CAP_FRACTION * (1 - median) if ip else CAP_FRACTION * median
    else:
        cap = copy_threshold
    threshold = max(copy_threshold, cap) if ip else min(copy_threshold, cap)
    copies_within = float(within(copy_d, threshold, metric).mean())
    other_within = float(within(other, threshold, metric).mean()) if len(other) else 0.0
    capped = threshold != copy_threshold
    rule = (
        f"the {COPY_QUANTILE:.0%} quantile of augmented-copy distances, capped at {CAP_FRACTION:g} x the "
        "median nearest-other distance"
    )
    why = (
        f"{threshold:.4g}: {copies_within:.0%} of {len(picks)} augmented copies of this collection's images lie "
        f"within it; {other_within:.1%} of those images have a distinct image that close"
        + (
            f" (capped: the {COPY_QUANTILE:.0%} copy distance {copy_threshold:.4g} reaches distinct images)"
            if capped
            else ""
        )
    )
    return Calibration(
        threshold=round(threshold, 6),
        rule=rule,
        metric=metric,
        copy_threshold=round(copy_threshold, 6),
        cap=round(cap, 6),
        copies_within=round(copies_within, 4),
        nearest_other_within=round(other_within, 4),
        n_sample=int(len(picks)),
        why=why,
        copy_distances=[round(float(d), 6) for d in copy_d],
        nearest_other_distances=[round(float(d), 6) for d in other],
    )


def neighbour_pairs(index: faiss.Index, vectors: np.ndarray, row_ids: np.ndarray, threshold: float, metric: str):
    """(row, neighbour row) pairs within `threshold`, by FAISS range search where the index type has a safe
    one (`lookalike.stages.index.capabilities`), else from the KNN_FALLBACK nearest neighbours cut at the
    threshold."""
    ranges = capabilities(index).range_search
    # FAISS keeps d < radius for l2 and similarity > radius for ip: nudge the radius so "within" includes it
    radius = float(np.nextafter(np.float32(threshold), np.float32(-np.inf if metric == "ip" else np.inf)))
    pairs = []
    for start in range(0, len(vectors), _BATCH):
        queries = np.ascontiguousarray(vectors[start : start + _BATCH], dtype=np.float32)
        owners = row_ids[start : start + _BATCH]
        if ranges:
            lims, dist, found = index.range_search(queries, radius)
            for i, own in enumerate(owners):
                pairs += [(int(own), int(r)) for r in found[lims[i] : lims[i + 1]] if r >= 0 and r != own]
        else:
            dist, found = search(index, queries, KNN_FALLBACK)
            keep = within(dist, threshold, metric) & (found >= 0)
            for own, ok, ids in zip(owners, keep, found):
                pairs += [(int(own), int(r)) for r in ids[ok] if r != own]
    return pairs


def near_groups(
    index: faiss.Index,
    vectors: np.ndarray,
    row_ids: np.ndarray,
    threshold: float,
    metric: str,
    exact: list[list[int]] = (),
    *,
    linkage: str = "components",
) -> list[list[int]]:
    """Groups of rows within `threshold` of each other, with the `exact` groups merged in: groups of
    >= 2 row ids, each sorted, largest first, then by first row id.

    Args:
        vectors: (n, dim) embeddings of `row_ids`, prepared for the metric (`prepare_vectors`).
        linkage: "components": connected components (a row joins a group when it is within the
            threshold of ANY member: what leaks between two sets of images follow). "leader": in row
            id order, each row not yet grouped takes its ungrouped neighbours, so every member is
            within the threshold of the group's first row: no chains (on the bundled sample
            components chained 90 distinct Fashion-MNIST images into one group; benchmarks/README.md).
    """
    pairs = neighbour_pairs(index, vectors, np.asarray(row_ids, dtype=np.int64), threshold, metric)
    return grouped_pairs(pairs, exact, linkage=linkage)


def grouped_pairs(pairs, exact: list[list[int]] = (), *, linkage: str = "components") -> list[list[int]]:
    """`near_groups` of (row, neighbour row) pairs already found (`neighbour_pairs`)."""
    parent: dict[int, int] = {}

    def find(r: int) -> int:
        parent.setdefault(r, r)
        while parent[r] != r:
            parent[r] = parent[parent[r]]
            r = parent[r]
        return r

    def union(a: int, b: int) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    if linkage == "components":
        for a, b in pairs:
            union(a, b)
    elif linkage == "leader":
        neighbours: dict[int, set[int]] = defaultdict(set)
        for a, b in pairs:
            neighbours[a].add(b)
            neighbours[b].add(a)
        grouped: set[int] = set()
        for leader in sorted(neighbours):
            if leader in grouped:
                continue
            grouped.add(leader)
            for r in sorted(neighbours[leader] - grouped):
                grouped.add(r)
                union(leader, r)
    else:
        raise ValueError(f"linkage {linkage!r}: use 'components' or 'leader'")
    for group in exact:
        for r in group[1:]:
            union(group[0], r)
    components: dict[int, list[int]] = defaultdict(list)
    for r in list(parent):
        components[find(r)].append(r)
    return _ordered(g for g in components.values() if len(g) >= 2)


@dataclass
class DuplicateReport:
    """Exact and near-duplicate groups of one index, with the threshold that made them.

    `exact_groups` are the sha256 groups. `near_groups` are the connected components that hold at least
    two different contents (an exact group inside one is merged into it). Each group is
    {rows, paths, labels, distances}: distances from the group's first row, in the index's units.
    """

    index: str
    metric: str
    threshold: float
    threshold_why: str
    calibration: dict[str, Any] | None
    exact_groups: list[dict[str, Any]]
    near_groups: list[dict[str, Any]]
    n_images: int
    linkage: str = "leader"
    # the rows whose neighbours were searched, when not every indexed row was: {"n": ..., "of": ...}
    sampled: dict[str, int] | None = None

    @property
    def groups(self) -> list[dict[str, Any]]:
        """Every group once: the near groups, then the exact groups not inside one; largest first."""
        return [
            group for _, group in report_groups({"near_groups": self.near_groups, "exact_groups": self.exact_groups})
        ]

    def counts(self) -> dict[str, Any]:
        groups = self.groups
        return {
            "n_groups": len(groups),
            "n_exact_groups": len(self.exact_groups),
            "n_near_groups": len(self.near_groups),
            "n_images_in_groups": sum(len(g["rows"]) for g in groups),
            "n_images": self.n_images,
            **({"sampled": self.sampled} if self.sampled else {}),
        }

    def to_json(self) -> dict[str, Any]:
        """The stable keys of `lookalike duplicates --json`."""
        return {
            "index": self.index,
            "metric": self.metric,
            "threshold": self.threshold,
            "threshold_why": self.threshold_why,
            "linkage": self.linkage,
            "calibration": self.calibration,
            "exact_groups": self.exact_groups,
            "near_groups": self.near_groups,
            **self.counts(),
        }

    def stats(self) -> dict[str, Any]:
        """Counts, threshold and why (for a manifest's stats)."""
        return {
            "threshold": self.threshold,
            "threshold_why": self.threshold_why,
            "metric": self.metric,
            **self.counts(),
        }


def find_duplicates(
    root: Path,
    dataset: Manifest,
    encoder: Manifest,
    embeddings: Manifest,
    index_manifest: Manifest,
    *,
    threshold: float | None = None,
    calibration: Calibration | None = None,
    embedder=None,
    sample: int = CALIBRATION_SAMPLE,
    seed: int = 0,
    linkage: str = "leader",
    rows: np.ndarray | None = None,
    loaded: tuple[Any, faiss.Index] | None = None,
) -> DuplicateReport:
    """Exact and near-duplicate groups of a finished chain, every file sha256-checked as it loads.

    Args:
        threshold: use this instead of calibrating (in the index's units; no encoder is loaded then).
        calibration: one already made for this index (the evaluation's leak check makes it): used as is.
        embedder: an already loaded Embedder of `encoder` (else one is loaded for the calibration).
        linkage: how rows within the threshold form groups (`near_groups`); "leader" keeps every member
            within the threshold of its group's first row.
        rows: positions (in embedding order, sorted) of the only rows whose neighbours are searched, each
            in the whole index: the near and exact groups that hold at least one of them, found in
            O(len(rows) x N) instead of O(N^2). None: every row.
        loaded: the opened snapshot and loaded index of this chain, when the caller holds them already (the
            evaluation does: a second copy of a million-vector index is gigabytes).
    """
    metric = index_manifest.stats["metric"]
    linkage = one_of(linkage, "linkage", LINKAGES)
    if threshold is not None:  # NaN would group nothing and -1 everything (or nothing), without a word
        threshold = real_number(threshold, f"threshold ({THRESHOLD_UNITS[metric]})", *THRESHOLD_RANGE[metric])
    snapshot, index = loaded or (open_snapshot(root, dataset), load_index(root, index_manifest))
    if calibration is not None and threshold is None:
        threshold, why = calibration.threshold, calibration.why
    elif threshold is None and len(snapshot) < 2:
        threshold, why = 0.0, "none: a collection of one image has no near-duplicates"
    elif threshold is None:
        if embedder is None:
            from lookalike.stages.inference import Embedder

            embedder = Embedder(root, encoder, channels_last=embeddings.settings.get("channels_last", True))
        calibration = calibrate_threshold(embedder, snapshot, index, metric, sample=sample, seed=seed)
        threshold, why = calibration.threshold, calibration.why
    else:
        calibration, why = None, f"{threshold:.4g}: given (--threshold), not calibrated"
    # every embedded image (or each of `rows`) asks the whole index for its neighbours, one shard of vectors
    # in memory at a time
    pairs = []
    if rows is None:
        for shard, shard_ids in iter_embeddings(root, embeddings):
            pairs += neighbour_pairs(index, prepare_vectors(shard, metric), shard_ids, threshold, metric)
        exact = exact_groups(snapshot)
    else:
        asked, asked_ids = load_embedding_rows(root, embeddings, rows)
        pairs = neighbour_pairs(index, prepare_vectors(asked, metric), asked_ids, threshold, metric)
        del asked
        exact = exact_groups(snapshot, holding=asked_ids)
    groups = grouped_pairs(pairs, exact, linkage=linkage)
    # every column below is read at the grouped rows only: at 1M rows a dict over every row, and a
    # `select` per group, held gigabytes and hours
    grouped = np.asarray(sorted({r for g in exact + groups for r in g}), dtype=np.int64)
    at_position = positions_of(snapshot, grouped)
    digest = dict(zip(grouped.tolist(), column_at(snapshot, "sha256", at_position)))
    near = [g for g in groups if len({digest[r] for r in g}) > 1]
    # the vectors of the grouped rows only, for their distances from their group's first row
    embedded = embedding_row_ids(root, embeddings)
    order = np.argsort(embedded, kind="stable")
    raw, row_ids = load_embedding_rows(
        root, embeddings, np.sort(order[np.searchsorted(embedded, grouped, sorter=order)])
    )
    at = {int(r): i for i, r in enumerate(row_ids)}
    space = index_space(index, prepare_vectors(raw, metric))
    del raw
    paths = dict(zip(grouped.tolist(), image_paths_at(snapshot, at_position)))
    names = dataset.stats.get("label_names")
    if names and "label" in snapshot.column_names:
        values = column_at(snapshot, "label", at_position)
        label = {
            r: names[v] if v is not None and 0 <= v < len(names) else None for r, v in zip(grouped.tolist(), values)
        }
    else:
        label = dict.fromkeys(grouped.tolist())

    def describe(rows: list[int]) -> dict[str, Any]:
        first = space[[at[rows[0]]] * len(rows)]
        distances = pair_distances(first, space[[at[r] for r in rows]], metric)
        return {
            "rows": rows,
            "paths": [paths[r] for r in rows],
            "labels": [label[r] for r in rows],
            "distances": [round(float(d), 6) for d in distances],
        }

    return DuplicateReport(
        index=index_manifest.key,
        metric=metric,
        threshold=float(threshold),
        threshold_why=why,
        calibration=calibration.summary() if calibration else None,
        exact_groups=[describe(g) for g in exact],
        near_groups=[describe(g) for g in near],
        n_images=len(snapshot),
        linkage=linkage,
        sampled=None if rows is None else {"n": int(len(rows)), "of": int(index.ntotal)},
    )


def duplicates_picture(
    root: Path, dataset: Manifest, report: DuplicateReport, max_groups: int = 8, max_images: int = 8, snapshot=None
):
    """The largest groups, one row each: the group's first row outlined, then its other rows,
    captioned with row id and distance from the first. `snapshot`: the dataset's, when the caller has it open
    (opening a million-row snapshot again assembles it again)."""
    from lookalike.stages.pictures import retrieval_grid

    snapshot = snapshot if snapshot is not None else open_snapshot(root, dataset)
    shown = report.groups[:max_groups]
    drawn = sorted({r for group in shown for r in group["rows"][:max_images]})
    position = dict(zip(drawn, positions_of(snapshot, drawn).tolist()))

    def image(r: int):
        return decode_snapshot_image(snapshot[position[r]]["image"]["bytes"])

    rows = []
    for group in shown:
        first, *rest = list(zip(group["rows"], group["distances"]))[:max_images]
        kind = "exact" if group in report.exact_groups else "near"
        cells = [(image(r), f"row {r}\nd={d:.3f}") for r, d in rest]
        rows.append((image(first[0]), f"row {first[0]}\n{kind} x{len(group['rows'])}", cells))
    return retrieval_grid(rows)


def write_duplicates(
    root: Path,
    folder: Path,
    dataset: Manifest,
    embeddings: Manifest,
    index: Manifest,
    calibration: Calibration | None = None,
    embedder=None,
    rows: np.ndarray | None = None,
    loaded: tuple[Any, faiss.Index] | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Find the chain's duplicates and write REPORT (and PICTURE when there are groups) into a stage
    folder, with a calibration and an Embedder the caller already has, searching from `rows` only when
    given, with the caller's `loaded` snapshot and index (see `find_duplicates`).
    Returns (stats: counts, threshold and why; the files written)."""
    from lookalike.artifacts.shared_root import read_manifest
    from lookalike.core.manifest import atomic_write_bytes
    from lookalike.stages.pictures import save_image

    encoder = read_manifest(root, "encoder", embeddings.inputs["encoder"])
    report = find_duplicates(
        root,
        dataset,
        encoder,
        embeddings,
        index,
        calibration=calibration,
        embedder=embedder,
        rows=rows,
        loaded=loaded,
    )
    atomic_write_bytes(folder / REPORT, json.dumps(report.to_json(), indent=1).encode())
    files = [REPORT]
    if report.groups:
        save_image(folder / PICTURE, duplicates_picture(root, dataset, report, snapshot=loaded[0] if loaded else None))
        files.append(PICTURE)
    return report.stats(), files


def duplicates_table(root: Path, stage: Manifest) -> tuple[list[str], list[list[Any]]] | None:
    """The groups a stage folder's REPORT lists as table rows, one per image: group number, kind
    (exact or near), row id, thumbnail (a PIL image), label, path and distance from the group's
    first row. None when the stage has no REPORT."""
    from lookalike.artifacts.shared_root import read_manifest
    from lookalike.core.manifest import verified_path

    if not any(f.path == REPORT for f in stage.files):
        return None
    record = json.loads(verified_path(root, stage, REPORT).read_bytes())
    snapshot = open_snapshot(root, read_manifest(root, "dataset", stage.inputs["dataset"]))
    listed = sorted({r for _, group in report_groups(record) for r in group["rows"]})
    position = dict(zip(listed, positions_of(snapshot, listed).tolist()))
    rows = []
    for number, (kind, group) in enumerate(report_groups(record), start=1):
        for r, label, path, d in zip(group["rows"], group["labels"], group["paths"], group["distances"]):
            thumb = decode_snapshot_image(snapshot[position[r]]["image"]["bytes"])
            thumb.thumbnail((THUMBNAIL, THUMBNAIL))
            rows.append([number, kind, r, thumb, label, path, d])
    return ["group", "kind", "row", "image", "label", "path", "distance"], rows


def report_groups(record: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(kind, group) for every group of a REPORT once, largest first: near groups, then the exact
    groups not inside one."""
    inside = {r for g in record["near_groups"] for r in g["rows"]}
    groups = [("near", g) for g in record["near_groups"]]
    groups += [("exact", g) for g in record["exact_groups"] if g["rows"][0] not in inside]
    return sorted(groups, key=lambda kg: (-len(kg[1]["rows"]), kg[1]["rows"][0]))
