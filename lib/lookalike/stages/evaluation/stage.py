"""The `evaluation` stage: retrieval quality on labelled data, the retrieval grid and its table.

Two protocols. Held-out: the images of another split of the source (Fashion-MNIST's
`test` when `train` is indexed) query the index. The dataset stage snapshots that split
like any dataset, and this stage embeds it with the run's encoder; all k neighbours
count. Leave-one-out (no such split, or `evaluation.query_split=none`): a seeded sample
of the indexed images queries the index, and each query's own row is dropped from its
results.

The scores (kNN@k accuracy, precision@k, mAP@k) are `lookalike.stages.evaluation.metrics`'s.

Above `evaluation.sample_size` indexed images, a seeded sample of that many is what is searched
(`evaluation_sample`): the run's index restricted to those rows, the baselines built from them alone, the
leave-one-out queries, the leak check and the map; `stats["sampled"]` = {"n": rows searched, "of": rows
indexed}. The duplicate groups are then those of the sampled rows, each searched in the whole index
(`lookalike duplicates` finds every group).

`neighbours.json` records the grid's queries and their neighbours (row ids, distances,
labels): the grid PNG is drawn from it, and the W&B table is built from it.

Leaks (`lookalike.stages.evaluation.leaks`): queries with an exact (sha256) or near copy in the
index are counted in `stats["leaks"]`, and `stats["clean"]` scores the others (the baselines too,
under each baseline's "clean"). `map.png` / `map.json` are the collection's embeddings in 2-D
(`lookalike.stages.evaluation.collection_map`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lookalike.artifacts.shared_root import read_manifest
from lookalike.artifacts.stage_runner import Built, StageResult, release_freed_memory, run_stage
from lookalike.core.graph import key_for
from lookalike.core.manifest import Manifest, atomic_write_bytes, verified_path
from lookalike.core.settings import DatasetSettings, EvaluationSettings
from lookalike.stages.dataset.images import decode_snapshot_image
from lookalike.stages.dataset.sources import DatasetError, list_splits
from lookalike.stages.dataset.stage import column_at, hf_cache_dir, open_snapshot, positions_of, snapshot_column
from lookalike.stages.duplicates import calibrate_threshold, write_duplicates
from lookalike.stages.embeddings.shards import embedding_row_ids, load_embedding_rows, load_embeddings
from lookalike.stages.evaluation.baselines import baselines, distillation_report, exact_neighbours, gains
from lookalike.stages.evaluation.collection_map import write_map
from lookalike.stages.evaluation.leaks import leak_stats, leaking_queries
from lookalike.stages.evaluation.metrics import scores
from lookalike.stages.index.factory import load_index, prepare_vectors, search, subset_index
from lookalike.stages.inference import Embedder
from lookalike.stages.pictures import retrieval_grid, save_image
from lookalike.stages.sampling import seeded_sample

STAGE = "evaluation"
GRID = "retrieval-grid.png"
NEIGHBOURS = "neighbours.json"
LEAVE_ONE_OUT = "leave-one-out"
HELD_OUT_SPLITS = ("test", "validation")  # what `query_split=auto` looks for, in this order
THUMBNAIL = 128  # longest side of a table thumbnail; smaller images keep their size


def choose_query_split(
    dataset: DatasetSettings, section: EvaluationSettings, splits: list[str]
) -> DatasetSettings | None:
    """The dataset section of the held-out queries, or None for leave-one-out.

    Args:
        splits: the splits the source offers (`lookalike.stages.dataset.sources.list_splits`).

    Raises:
        DatasetError: `query_split` names the indexed split or a split the source lacks.
    """
    choice = section.query_split
    if choice == "none":
        return None
    if choice == "auto":
        choice = next((s for s in HELD_OUT_SPLITS if s in splits and s != dataset.split), None)
        if choice is None:
            return None
    elif choice == dataset.split:
        raise DatasetError(
            f"evaluation.query_split {choice!r} is the split being indexed; name another split, "
            "or 'none' for leave-one-out"
        )
    elif choice not in splits:
        offered = f"its splits are: {', '.join(splits)}" if splits else "it is a single table without named splits"
        raise DatasetError(
            f"evaluation.query_split {choice!r}: dataset {dataset.source!r} has no such split; "
            f"{offered} (or use 'auto' or 'none')"
        )
    return dataset.model_copy(update={"split": choice, "limit": section.max_queries})


def query_dataset_section(dataset: DatasetSettings, section: EvaluationSettings, root: Path) -> DatasetSettings | None:
    """`choose_query_split` over the splits the source offers (listed only when needed)."""
    if section.query_split == "none":
        return None
    return choose_query_split(dataset, section, list_splits(dataset, hf_cache_dir(Path(root))))


def evaluation_key(
    section: EvaluationSettings, dataset: Manifest, index: Manifest, queries: Manifest | None = None
) -> str:
    fields = {**section.key_fields(), **section.keyed_sample_size(dataset.stats.get("n_images"))}
    return key_for(STAGE, fields, _inputs(dataset, index, queries))


def _inputs(dataset: Manifest, index: Manifest, queries: Manifest | None) -> dict[str, str]:
    inputs = {"dataset": dataset.key, "index": index.key}
    if queries is not None:
        inputs["queries"] = queries.key
    return inputs


def run_evaluation_stage(
    section: EvaluationSettings,
    dataset: Manifest,
    embeddings: Manifest,
    index: Manifest,
    root: Path,
    queries: Manifest | None = None,
) -> StageResult:
    """Score the index and draw its grid, with held-out `queries` (a dataset manifest of
    another split) when given, else leave-one-out over the indexed images."""
    key = evaluation_key(section, dataset, index, queries)

    def build(folder: Path) -> Built:
        return _evaluate(section, dataset, embeddings, index, queries, root, folder)

    return run_stage(
        root,
        STAGE,
        key,
        settings=section.model_dump(mode="json"),
        inputs=_inputs(dataset, index, queries),
        build=build,
    )


@dataclass
class Queries:
    """The query side of an evaluation: rows of one snapshot with their vectors."""

    protocol: str  # "leave-one-out" or "held-out:<split>"
    source: str  # the evaluation input the query rows come from: "dataset" or "queries"
    snapshot: Any
    row_ids: np.ndarray
    vectors: np.ndarray  # row order, prepared for the index's metric
    labels: list[str | None] | None  # label name per row (None: unlabelled row), None without labels
    sha256: list[str]  # content hash per row

    @property
    def leave_one_out(self) -> bool:
        return self.protocol == LEAVE_ONE_OUT


def _evaluate(
    section: EvaluationSettings,
    dataset: Manifest,
    embeddings: Manifest,
    index_manifest: Manifest,
    queries: Manifest | None,
    root: Path,
    folder: Path,
) -> Built:
    snapshot = open_snapshot(root, dataset)
    index = load_index(root, index_manifest)
    metric = index_manifest.stats["metric"]
    # The rows searched: every indexed image, or a seeded sample of `evaluation.sample_size` of them
    # (`evaluation_sample`), the same rows for the run's index and its baselines. Only their vectors are read.
    sample, n_rows = evaluation_sample(section, root, embeddings)
    sampled = len(sample) < n_rows
    raw, row_ids = load_embedding_rows(root, embeddings, sample) if sampled else load_embeddings(root, embeddings)
    positions = positions_of(snapshot, row_ids)
    indexed_labels = _label_names(snapshot, dataset, positions)
    label_of = dict(zip(row_ids.tolist(), indexed_labels)) if indexed_labels else None
    # the columns alone, at these rows: rows would decode their images too
    indexed_sha256 = dict(zip(row_ids.tolist(), column_at(snapshot, "sha256", positions)))
    database = snapshot.select(positions) if sampled else snapshot  # in `row_ids` order, for the baselines
    search_in, searches_the_index = _searcher(index, row_ids if sampled else None)
    embedder = calibration = None  # made once, when needed, and shared by the leak check and the duplicates
    if queries is None:
        asked = Queries(
            LEAVE_ONE_OUT,
            "dataset",
            snapshot,
            row_ids,
            prepare_vectors(raw, metric),
            indexed_labels,
            [indexed_sha256[int(r)] for r in row_ids],
        )
        picks = _sample(len(row_ids), section.max_queries)
    else:
        query_snapshot = open_snapshot(root, queries)
        encoder = read_manifest(root, "encoder", embeddings.inputs["encoder"])
        embedder = Embedder(root, encoder, channels_last=embeddings.settings.get("channels_last", True))
        query_raw = embedder.embed_snapshot(
            query_snapshot, batch_size=embeddings.settings.get("batch_size", 256), desc="evaluation: queries"
        )
        asked = Queries(
            f"held-out:{queries.settings['split']}",
            "queries",
            query_snapshot,
            np.asarray(snapshot_column(query_snapshot, "row_id"), dtype=np.int64),
            prepare_vectors(query_raw, metric),
            _label_names(query_snapshot, queries),
            snapshot_column(query_snapshot, "sha256"),
        )
        picks = np.arange(len(query_raw))  # the snapshot is already the sample (limit = max_queries)

    stats: dict[str, Any] = {
        "protocol": asked.protocol,
        "n_queries": int(len(picks)),
        "k": section.k,
        "query_dataset": queries.key if queries is not None else None,
    }
    if sampled:
        stats["sampled"] = {"n": int(len(row_ids)), "of": int(n_rows)}
    if label_of is not None and asked.labels is not None and len(picks) and len(asked.row_ids) > asked.leave_one_out:
        distances, ids = search_in(asked.vectors[picks], section.k + asked.leave_one_out)
        truths = [asked.labels[p] for p in picks]
        stats.update(scores(ids, asked.row_ids[picks], truths, label_of, section.k, asked.leave_one_out))
        encoder = read_manifest(root, "encoder", embeddings.inputs["encoder"])
        embedder = embedder or Embedder(root, encoder, channels_last=embeddings.settings.get("channels_last", True))
        clean, stats["leaks"], calibration = _leaks(
            embedder, snapshot, index, metric, asked, picks, distances, ids, indexed_sha256
        )
        if not searches_the_index:  # the baselines and the map need none of it: loaded again for the duplicates
            index = None  # (a million-vector index is gigabytes, on top of the baselines' vectors)
            release_freed_memory()
        stats["clean"] = _scores_of(ids[clean], asked.row_ids[picks][clean], truths, clean, label_of, section.k, asked)
        if section.baselines or encoder.settings.get("method") == "distill":
            measured = _measure_baselines(
                section,
                encoder,
                embeddings,
                database,
                row_ids if sampled else np.asarray(snapshot_column(snapshot, "row_id"), dtype=np.int64),
                asked,
                picks,
                truths,
                label_of,
                index_manifest,
                root,
                clean,
            )
            stats["baselines"] = measured
            stats["gain"] = gains(stats, measured, section.k)
            stats["clean"]["gain"] = gains(stats["clean"], {n: m["clean"] for n, m in measured.items()}, section.k)
            if "teacher" in measured:
                stats["distillation"] = distillation_report(
                    root,
                    encoder,
                    stats,
                    measured["teacher"],
                    snapshot,
                    embeddings.settings.get("channels_last", True),
                    section.k,
                )
    else:
        stats.update(
            {"knn_accuracy": None, f"precision_at_{section.k}": None, f"map_at_{section.k}": None, "per_class": None}
        )

    files = []
    if section.grid_queries and len(asked.row_ids):
        rows = _grid_rows(section, search_in, asked, label_of)
        record = {"protocol": asked.protocol, "queries_from": asked.source, "metric": metric, "rows": rows}
        atomic_write_bytes(folder / NEIGHBOURS, json.dumps(record, indent=1).encode())
        save_image(folder / GRID, _draw_grid(record, asked.snapshot, snapshot))
        files += [NEIGHBOURS, GRID]
    # the map of the collection, drawn from the rows evaluated (lookalike.stages.evaluation.collection_map)
    if len(row_ids):
        stats["map"], written = write_map(
            folder,
            prepare_vectors(raw, metric),
            row_ids,
            _labels_of(label_of, row_ids),
            index_manifest.key,
            Path(root) / "cache" / "matplotlib",
        )
        files += written
    del raw, asked
    if section.duplicates:  # exact and near-duplicate groups of the indexed images (lookalike.stages.duplicates)
        # Each image searched asks the run's whole index for its copies, so a sample still finds every copy of
        # the rows it holds (a sample of rows paired only among themselves would find a pair once in 400 at
        # 5%): every row up to sample_size, O(N^2) beyond it, so above it the sample's rows only, O(sample x N).
        # The leak check's calibration and encoder, when it made them: one calibration per evaluation.
        stats["duplicates"], written = write_duplicates(
            root,
            folder,
            dataset,
            embeddings,
            index_manifest,
            calibration,
            embedder,
            sample if sampled else None,
            loaded=(snapshot, index if index is not None else load_index(root, index_manifest)),
        )
        files += written
    return Built(files=files, stats=stats)


def evaluation_sample(section: EvaluationSettings, root: Path, embeddings: Manifest) -> tuple[np.ndarray, int]:
    """(positions of the rows the evaluation searches, in embedding order; how many rows there are):
    all of them, or a seeded sample of `section.sample_size` when there are more."""
    n_rows = len(embedding_row_ids(root, embeddings))
    return seeded_sample(n_rows, section.sample_size), n_rows


def _searcher(index, allowed: np.ndarray | None):
    """(search(queries, k) in the run's index, over the rows `allowed` only when given: the index as it would be
    holding only those rows (`subset_index`: their vectors for a flat index, their entries in the same lists for
    an IVF index, searched with its nprobe), FAISS's filtered search for any other type, so an approximate index
    is still measured as it answers; whether that search holds on to `index` itself)."""
    if allowed is None:
        return (lambda queries, k: search(index, queries, k)), True
    subset = subset_index(index, allowed)
    if subset is not None:
        return (lambda queries, k: search(subset, queries, k)), False
    return (lambda queries, k: search(index, queries, k, allowed)), True


def _measure_baselines(
    section: EvaluationSettings,
    encoder: Manifest,
    embeddings: Manifest,
    snapshot,
    indexed_ids: np.ndarray,
    asked: Queries,
    picks: np.ndarray,
    truths: list[str | None],
    label_of: dict[int, str | None],
    index_manifest: Manifest,
    root: Path,
    clean: np.ndarray,
) -> dict[str, dict[str, Any]]:
    """Each baseline's scores on exactly the run's queries: the same rows, protocol, k, metric and whitening;
    under "clean", on the run's queries that do not leak (`clean`, a mask over `picks`). `snapshot` holds the
    rows searched (every indexed image, or the evaluation's sample), `indexed_ids` their row ids in its order."""
    metric = index_manifest.stats["metric"]
    whitening = index_manifest.stats.get("whitening", {}).get("power", 0.0)  # indexes built before it: none
    measured = {}
    kinds = baselines(
        section.baselines,
        encoder,
        root,
        channels_last=embeddings.settings.get("channels_last", True),
        batch_size=embeddings.settings.get("batch_size", 256),
    )
    for baseline in kinds:
        indexed = baseline.vectors(snapshot)
        n_indexed = len(indexed)
        queries = (indexed if asked.leave_one_out else baseline.vectors(asked.snapshot))[picks]  # a copy
        # the indexed vectors are whitened where they are: nothing reads them after
        ids = exact_neighbours(
            indexed, indexed_ids, queries, metric, section.k + asked.leave_one_out, whitening, overwrite=True
        )
        found = scores(ids, asked.row_ids[picks], truths, label_of, section.k, asked.leave_one_out)
        found.pop("per_class")
        found["clean"] = _scores_of(ids[clean], asked.row_ids[picks][clean], truths, clean, label_of, section.k, asked)
        measured[baseline.name] = {"what": baseline.describe, "n_indexed": int(n_indexed), **found}
        del indexed, queries  # a baseline's vectors (470 MB of pixels at 50,000 images) before the next one's
    return measured


def _leaks(embedder, snapshot, index, metric: str, asked: Queries, picks, distances, ids, indexed_sha256):
    """(mask over `picks` of the queries that do not leak, `stats["leaks"]`, the near-duplicate
    calibration or None), see `leaks.py`. `indexed_sha256`: row id -> hash of the rows searched."""
    calibration = None
    if len(snapshot) >= 2:
        calibration = calibrate_threshold(embedder, snapshot, index, metric)
        threshold, why = calibration.threshold, calibration.why
    else:
        threshold, why = None, "exact copies only: a single indexed image has no near-duplicate threshold"
    exact, near = leaking_queries(
        [asked.sha256[int(p)] for p in picks],
        asked.row_ids[picks],
        distances,
        ids,
        indexed_sha256,
        threshold,
        metric,
        asked.leave_one_out,
    )
    return ~(exact | near), leak_stats(exact, near, threshold, why), calibration


def _scores_of(ids, query_ids, truths, keep, label_of, k: int, asked: Queries) -> dict[str, Any]:
    """The three scores and the query count over the kept queries (`keep`, a mask over all of them)."""
    found = scores(ids, query_ids, [t for t, kept in zip(truths, keep) if kept], label_of, k, asked.leave_one_out)
    found.pop("per_class")
    return {**found, "n_queries": int(keep.sum())}


def _labels_of(label_of: dict[int, str | None] | None, row_ids: np.ndarray) -> list[str | None] | None:
    return [label_of.get(int(r)) for r in row_ids] if label_of else None


def _label_names(snapshot, manifest: Manifest, positions: np.ndarray | None = None) -> list[str | None] | None:
    """Each row's label name (None for a row without one, e.g. -1), or None for unlabelled data; of the
    rows at `positions` only, when given."""
    names = manifest.stats.get("label_names")
    if not names or "label" not in snapshot.column_names:
        return None
    values = snapshot_column(snapshot, "label") if positions is None else column_at(snapshot, "label", positions)
    return [names[v] if v is not None and 0 <= v < len(names) else None for v in values]


def _sample(n: int, cap: int | None) -> np.ndarray:
    """Positions of the leave-one-out queries: all, or a seeded sample of `cap`."""
    return seeded_sample(n, cap)


def _grid_rows(section: EvaluationSettings, search_in, asked: Queries, label_of: dict | None) -> list[dict]:
    """The grid's seeded queries with their nearest indexed rows (own row left out, leave-one-out)."""
    n = len(asked.row_ids)
    picks = seeded_sample(n, section.grid_queries)
    distances, found = search_in(asked.vectors[picks], section.grid_neighbours + asked.leave_one_out)
    rows = []
    for p, dist, ids in zip(picks, distances, found):
        own = int(asked.row_ids[p]) if asked.leave_one_out else None
        neighbours = [
            {"row_id": int(r), "distance": round(float(d), 6), "label": (label_of or {}).get(int(r))}
            for d, r in zip(dist, ids)
            if r >= 0 and int(r) != own
        ]
        rows.append(
            {
                "row_id": int(asked.row_ids[p]),
                "label": asked.labels[p] if asked.labels else None,
                "neighbours": neighbours[: section.grid_neighbours],
            }
        )
    return rows


def _draw_grid(record: dict, query_snapshot, indexed_snapshot):
    split = "" if record["protocol"] == LEAVE_ONE_OUT else record["protocol"].split(":", 1)[1] + " "
    indexed_at = _positions(indexed_snapshot, [n["row_id"] for row in record["rows"] for n in row["neighbours"]])
    asked = [row["row_id"] for row in record["rows"]]
    query_at = _positions(query_snapshot, asked)
    if query_snapshot is indexed_snapshot:
        indexed_at.update(query_at)
        query_at = indexed_at
    rows = []
    for row in record["rows"]:
        neighbours = [
            (
                _image(indexed_snapshot, indexed_at, n["row_id"]),
                f"row {n['row_id']} d={n['distance']:.3f}\n{n['label'] or ''}",
            )
            for n in row["neighbours"]
        ]
        rows.append(
            (
                _image(query_snapshot, query_at, row["row_id"]),
                f"query {split}row {row['row_id']}\n{row['label'] or ''}",
                neighbours,
            )
        )
    return retrieval_grid(rows)


def _positions(snapshot, row_ids: list[int]) -> dict[int, int]:
    """Row id -> position in the snapshot, of `row_ids` only."""
    unique = sorted(set(row_ids))
    return dict(zip(unique, positions_of(snapshot, unique).tolist()))


def _image(snapshot, position: dict[int, int], row_id: int):
    return decode_snapshot_image(snapshot[position[row_id]]["image"]["bytes"])


def retrieval_table(root: Path, evaluation: Manifest) -> tuple[list[str], list[list[Any]]] | None:
    """The grid as table rows, from `neighbours.json`: the query's thumbnail, row id and label,
    then per neighbour its thumbnail, row id, label and distance. Thumbnails are PIL images.
    None when the stage drew no grid."""
    if not any(f.path == NEIGHBOURS for f in evaluation.files):
        return None
    record = json.loads(verified_path(root, evaluation, NEIGHBOURS).read_bytes())
    indexed = open_snapshot(root, read_manifest(root, "dataset", evaluation.inputs["dataset"]))
    asked = (
        indexed
        if record["queries_from"] == "dataset"
        else open_snapshot(root, read_manifest(root, "dataset", evaluation.inputs[record["queries_from"]]))
    )
    indexed_at = _positions(indexed, [n["row_id"] for row in record["rows"] for n in row["neighbours"]])
    asked_at = _positions(asked, [row["row_id"] for row in record["rows"]])
    width = max((len(row["neighbours"]) for row in record["rows"]), default=0)
    columns = ["query", "query_row", "query_label"]
    for i in range(1, width + 1):
        columns += [f"neighbour_{i}", f"row_{i}", f"label_{i}", f"distance_{i}"]
    rows = []
    for row in record["rows"]:
        cells = [_thumbnail(asked, asked_at, row["row_id"]), row["row_id"], row["label"]]
        for n in row["neighbours"]:
            cells += [_thumbnail(indexed, indexed_at, n["row_id"]), n["row_id"], n["label"], n["distance"]]
        rows.append(cells + [None] * (len(columns) - len(cells)))
    return columns, rows


def _thumbnail(snapshot, position: dict[int, int], row_id: int):
    image = _image(snapshot, position, row_id)
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    return image
