"""The `dataset` stage: an immutable, verified snapshot of the images to index.

Each readable image is copied (still encoded) into a content-addressed part shared with
the collection's other versions (`lookalike.stages.dataset.parts`), and its stable row id,
label, metadata and content sha256 into the version's `rows.arrow`; both are memory-mapped
Arrow files written by `datasets`' own ArrowWriter. Unreadable images are skipped, counted
and listed with a reason.
Downstream stages read only this snapshot, so what was hashed is what gets embedded.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np

from lookalike.artifacts.stage_runner import Built, StageResult, run_stage
from lookalike.core.errors import one_line
from lookalike.core.graph import key_for
from lookalike.core.manifest import PART_LIST, Manifest, parts_dir, verified_path
from lookalike.core.progress import progress
from lookalike.core.settings import DatasetSettings
from lookalike.stages.dataset.images import Checked, check_images
from lookalike.stages.dataset.listing import one_listing_per_run
from lookalike.stages.dataset.parts import (
    ROWS,
    Candidate,
    PartImages,
    PartStore,
    closes_part,
    compress_rows,
    is_transient,
    open_parted,
    part_cuts,
    part_id,
    prefix_ids,
    range_ids,
    recorded_shapes,
    starts_part,
    write_part_list,
)
from lookalike.stages.dataset.profile import Look, SampleLooks, profile_images
from lookalike.stages.dataset.sources import (
    MINIMUM,
    DatasetError,
    Source,
    hash_source,
    label_names,
    open_source,
    pin_source,
    resolve_source,
)

STAGE = "dataset"
SNAPSHOT = "images.arrow"  # a version's images before they were shared parts: still opened
LISTED_SKIPS = 200
_BATCH = 512
_POOL_MIN_IMAGES = 4 * _BATCH  # fewer: starting worker processes costs more than it saves


def dataset_key(section: DatasetSettings, root: Path | str | None = None) -> tuple[str, Source, str]:
    """(stage key, resolved source, content fingerprint) for a dataset section; local files are
    hashed through the content-hash memo of the artifacts root `root`, when given."""
    with _no_collector_pauses():
        source, fingerprint = pin_source(resolve_source(section), section, root)
    settings = {**_key_settings(section), "content": fingerprint}
    return key_for(STAGE, settings, {}), source, fingerprint


def _key_settings(section: DatasetSettings) -> dict[str, Any]:
    fields = section.key_fields()
    # The content fingerprint (file hashes, or the hub commit a revision resolves to)
    # identifies the data; the path it came from and the revision's name do not.
    fields.pop("source")
    fields.pop("revision")
    return fields


def run_dataset_stage(section: DatasetSettings, root: Path) -> StageResult:
    """Snapshot the configured split into `<root>/dataset/<key>/`.

    Raises:
        DatasetError: empty dataset, missing column or split, unreachable hub, or more
            unreadable images than `section.max_unreadable_fraction` allows.
    """
    with one_listing_per_run(), _no_collector_pauses():  # the key and the snapshot see one listing
        key, source, fingerprint = dataset_key(section, root)
        settings = {**section.model_dump(mode="json"), "content": fingerprint, "resolved": source.describe()}

        def build(folder: Path) -> Built:
            keyed, left_out = None, {}
            if source.kind != "hub":
                hashed = hash_source(source, section, root)
                keyed = _Keyed([file.path for file in hashed.files], hashed.hashes, [f.size for f in hashed.files])
                left_out = {file.path: why for file, why in hashed.unreadable}
            return _snapshot(section, source, folder, hf_cache_dir(root), keyed, left_out)

        return run_stage(root, STAGE, key, settings=settings, inputs={}, build=build)


@contextmanager
def _no_collector_pauses() -> Iterator[None]:
    """Python's cycle collector off while the stage runs: it lists, hashes and cuts into parts a few objects per
    image, none in a cycle, and each full collection walks all of them again (5 s of 26 at 10^6 images)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def hf_cache_dir(root: Path) -> Path:
    # Keep datasets' Arrow cache under the artifacts root unless the user chose one.
    env = os.environ.get("HF_DATASETS_CACHE") or (
        os.environ.get("HF_HOME") and str(Path(os.environ["HF_HOME"]) / "datasets")
    )
    return Path(env) if env else Path(root) / "cache" / "huggingface"


def _snapshot(
    section: DatasetSettings,
    source: Source,
    folder: Path,
    cache_dir: Path,
    keyed: _Keyed | None,
    left_out: dict[str, str] | None = None,
) -> Built:
    """The snapshot of the split; `keyed` (path -> (sha256 the key was made from, size)) skips a file that
    changed after it was listed, so a snapshot never holds content its key does not name, and lets a
    part already in the root be reused without reading its images again; `left_out` (path -> reason)
    skips, unread, a file the key left out (missing or unreadable then)."""
    from datasets import ClassLabel, Features, Value
    from datasets.arrow_writer import ArrowWriter

    left_out = left_out or {}
    ds, row_ids = open_source(source, section, cache_dir)
    total = len(ds)
    if total == 0:
        raise DatasetError(f"{source.describe()} split {section.split!r} has no rows; {MINIMUM}")
    names = label_names(ds, section.label_column)
    label_index = {name: i for i, name in enumerate(names)} if names else None
    columns = {"row_id": Value("int64")}
    if names:
        columns["label"] = ClassLabel(names=names)
    columns.update(_metadata_features(ds, section, source))
    extra = list(section.metadata_columns)
    max_skips = int(section.max_unreadable_fraction * total)
    skipped: list[dict[str, Any]] = []

    def skip(row_id: int, path: str | None, reason: str) -> None:
        skipped.append({"row_id": row_id, "path": path, "reason": reason})
        if len(skipped) > max_skips:
            raise DatasetError(_too_many_unreadable(skipped, total, section))

    store = PartStore(folder.parents[1], verify_full=section.verify == "full")
    listed: list[dict[str, Any]] = []  # the parts in row order
    n_kept = 0
    tmp = folder / f".{ROWS}.tmp"
    writer = ArrowWriter(features=Features(columns), path=str(tmp))
    workers = check_workers(section, total)
    sample = SampleLooks(total - len(left_out))  # the profile's figures from the check's own decode
    try:
        with progress(total, "dataset: checking images", unit="img") as bar, _pool(workers) as pool:
            chunker = _Chunker(section.max_image_pixels, section.max_side, keyed, store, pool, workers)
            if keyed is not None:
                source_rows = _SourceRows(ds, row_ids, section, names is not None, label_index)
                in_order = _keyed_parts(source_rows, keyed, left_out, chunker, skip, bar)
            else:
                in_order = _checked_parts(ds, row_ids, section, names, chunker, skip, bar, pool, workers)
            for chunk, info in in_order:
                n_kept += _write_rows(writer, chunk, info, extra, label_index, skip)
                listed.append(info)
                sample.add(_kept_looks(chunk, info))
                bar.update(len(chunk))
        writer.finalize()
    finally:
        writer.close()
    if n_kept == 0:
        tmp.unlink(missing_ok=True)
        raise DatasetError(f"{source.describe()} has no readable images ({len(skipped)} skipped); {MINIMUM}")
    compress_rows(tmp, folder / ROWS)
    write_part_list(folder, listed)
    skipped.sort(key=lambda s: s["row_id"])
    shared = parts_dir(folder.parents[1], STAGE)
    images = PartImages([shared / info["name"] for info in listed], [info["rows"] for info in listed])
    with _pool(workers) as pool:  # started only for sampled images not decoded here (in parts reused)
        profile = profile_images(images, shapes=recorded_shapes(listed), looks=sample.looks, pool=pool)
    stats = {
        "source": source.describe(),
        "n_source_rows": total,
        "n_images": n_kept,
        "n_skipped": len(skipped),
        "skipped": skipped[:LISTED_SKIPS],
        "label_names": names,
        "image_column": section.image_column,
        # what this version wrote and what it shared with earlier ones (lookalike.stages.dataset.parts)
        "storage": store.stats(),
        # sizes and colour of what was kept: what a recipe for these images has to suit
        "profile": profile,
    }
    return Built(files=[ROWS, PART_LIST], stats=stats)


@dataclass
class _Row:
    """A source row on its way to a part: `checked` is set once its image was read and test-decoded."""

    row_id: int
    image: dict | None
    label: Any
    metadata: dict[str, Any]
    checked: Checked | None = None
    known_sha: str = ""  # the sha256 the key was made from, when its part was reused unread
    known: tuple[str, int] = ("", 0)  # (sha256, size) the chunker cut by

    @property
    def path(self) -> str | None:
        return self.image.get("path") if self.image else None


def _checked_parts(ds, row_ids, section: DatasetSettings, names, chunker: _Chunker, skip, bar, pool, workers: int):
    """(rows, part record) in order for a source whose content is known only once read (a hub dataset): each
    batch of rows read and checked (in parallel), then cut into parts."""
    for start, batch, checked in _checked_batches(ds, section, names is not None, pool, workers):
        for row in _batch_rows(batch, start, row_ids, section, names is not None, checked):
            if names and row.label is None:  # e.g. a row without a label value
                skip(row.row_id, row.path, "no label: its class folder or label value is missing")
                bar.update(1)
                continue
            yield from chunker.add(row)
    yield from chunker.finish()


def _keyed_parts(rows: _SourceRows, keyed, left_out: dict[str, str], chunker: _Chunker, skip, bar):
    """(rows, part record) in order for a source whose every file's sha256 the key knows: the parts are cut
    where the content says (`part_cuts`) before any row is read, and a part the root holds already is taken
    whole, by its id alone (no per-row work: a grown collection's version is mostly such parts); the rest go
    through the chunker, which reuses the part they grew from or reads, checks and writes them."""
    positions = rows.kept(left_out, skip)
    bar.update(rows.total - len(positions))
    paths = [rows.paths[p] for p in positions] if len(positions) != rows.total else rows.paths
    if paths == keyed.paths:  # a folder's rows are its listed files, in order
        shas, sizes = keyed.hashes, keyed.sizes
    else:
        shas = [keyed.sha.get(path, "") if path else "" for path in paths]
        sizes = [keyed.size.get(path, 0) if path else 0 for path in paths]
    cuts = part_cuts(paths, shas, sizes)
    unknown = np.cumsum([0, *(not sha for sha in shas)])
    whole = [(start, stop) for start, stop in cuts if unknown[stop] == unknown[start]]
    ids = dict(zip(whole, range_ids(paths, shas, whole, chunker.max_pixels, chunker.max_side)))
    for start, stop in cuts:
        pid = ids.get((start, stop))
        info = chunker.store.find(pid) if pid is not None else None
        if info is not None:
            yield from chunker.reused(_Run(rows, positions[start:stop]), info)
        else:
            known = list(zip(shas[start:stop], sizes[start:stop]))
            yield from chunker.group(rows.rows(positions[start:stop], known))
    yield from chunker.finish()


class _Keyed:
    """The files the key was made from: path -> the sha256 it was keyed by, and its size."""

    def __init__(self, paths: list[str], hashes: list[str], sizes: list[int]) -> None:
        self.paths, self.hashes, self.sizes = paths, hashes, sizes
        self.sha, self.size = dict(zip(paths, hashes)), dict(zip(paths, sizes))

    def get(self, path: str) -> tuple[str, int]:
        return (self.sha[path], self.size[path]) if path in self.sha else ("", 0)


class _SourceRows:
    """The source's rows as Arrow columns (row ids, image paths, labels, metadata), read once."""

    def __init__(self, ds, row_ids, section: DatasetSettings, labelled: bool, label_index) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc

        self.table = ds.with_format("arrow")[:]  # the rows in order, whatever `limit` selected
        self.total = len(self.table)
        self.row_ids = np.asarray(row_ids, np.int64)
        self.section, self.labelled = section, labelled
        self.images = self.table.column(section.image_column)
        self.paths: list[str | None] = pc.struct_field(self.images, "path").to_pylist()
        self.labels: list | None = self.table.column(section.label_column).to_pylist() if labelled else None
        self.label_ids = None
        if label_index is not None and self.labels is not None:
            column = self.table.column(section.label_column)
            if pa.types.is_integer(column.type):  # class ids already (an image folder's): taken as they are
                self.label_ids = pc.fill_null(column, -1).to_numpy().astype(np.int64)
            else:
                self.label_ids = np.array(
                    [-1 if v is None else v if isinstance(v, int) else label_index[str(v)] for v in self.labels],
                    np.int64,
                )

    def kept(self, left_out: dict[str, str], skip) -> np.ndarray:
        """Positions of the rows that go into parts; the others skipped: no label, or left out of the key."""
        no_label = self.labelled and self.table.column(self.section.label_column).null_count > 0
        if not no_label and not left_out:
            return np.arange(self.total)
        kept = []
        for position, path in enumerate(self.paths):
            if self.labels is not None and self.labels[position] is None:
                skip(int(self.row_ids[position]), path, "no label: its class folder or label value is missing")
            elif path in left_out:  # missing or unreadable when the key was made: not read
                skip(int(self.row_ids[position]), path, left_out[path])
            else:
                kept.append(position)
        return np.array(kept, np.int64)

    def rows(self, positions: np.ndarray, known: list[tuple[str, int]]) -> list[_Row]:
        """The rows at `positions` as the chunker takes them (to be checked, or reused as a grown part)."""
        taken = self.table.take(positions)
        images = taken.column(self.section.image_column).to_pylist()
        metadata = {name: taken.column(name).to_pylist() for name in self.section.metadata_columns}
        return [
            _Row(
                row_id=int(self.row_ids[position]),
                image=image,
                label=self.labels[position] if self.labels is not None else None,
                metadata={name: values[i] for name, values in metadata.items()},
                known=known[i],
            )
            for i, (position, image) in enumerate(zip(positions, images))
        ]


@dataclass
class _Run:
    """The rows of a part reused whole, by their positions in the source: written to the rows table by column."""

    source: _SourceRows
    positions: np.ndarray

    def __len__(self) -> int:
        return len(self.positions)

    def write(self, writer, info: dict[str, Any], extra: list[str], skip) -> int:
        source, positions = self.source, self.positions
        if info["skipped"]:  # recorded when the part was written: skipped again, unread
            for i, reason in info["skipped"]:
                position = positions[int(i)]
                skip(int(source.row_ids[position]), source.paths[position], reason)
            positions = np.delete(positions, [int(i) for i, _ in info["skipped"]])
        if len(positions) != info["rows"]:
            raise DatasetError(f"part {info['name']} holds {info['rows']} images, not the {len(positions)} it should")
        if len(positions):
            import pyarrow as pa

            batch = {"row_id": pa.array(source.row_ids[positions])}
            if source.label_ids is not None:
                batch["label"] = pa.array(source.label_ids[positions])
            for name in extra:
                batch[name] = source.table.column(name).take(positions).combine_chunks()
            writer.write_batch(batch)
        return len(positions)


def _batch_rows(batch, start: int, row_ids, section: DatasetSettings, labelled: bool, checked) -> Iterator[_Row]:
    for offset, image in enumerate(batch[section.image_column]):
        yield _Row(
            row_id=int(row_ids[start + offset]),
            image=image,
            label=batch[section.label_column][offset] if labelled else None,
            metadata={name: batch[name][offset] for name in section.metadata_columns},
            checked=checked[offset] if checked is not None else None,
        )


class _Chunker:
    """Cuts the rows into parts where their content says (`closes_part`) and gives each part back in order
    with its record: reused when the root has it, else checked (in the pool, two parts in flight) and written."""

    def __init__(self, max_pixels: int, max_side: int | None, keyed, store: PartStore, pool, workers: int) -> None:
        self.max_pixels, self.max_side = max_pixels, max_side
        self.keyed, self.store, self.pool, self.workers = keyed, store, pool, workers
        self.rows: list[_Row] = []
        self.size = 0
        self.pending: deque = deque()
        # where parts exist already (a grown collection), the first images to check are checked here: a few
        # new images cost less than starting the workers
        self.to_check = _POOL_MIN_IMAGES if store.recorded else 0

    def _known(self, row: _Row) -> tuple[str, int]:
        """(sha256, size) as the key knows them, else as the check found them ('' when unknown)."""
        if self.keyed is not None:
            return self.keyed.get(row.path) if row.path else ("", 0)
        checked = row.checked
        return (checked.sha256, len(checked.data)) if checked is not None else ("", 0)

    def add(self, row: _Row) -> list[tuple[list[_Row], dict[str, Any]]]:
        row.known = self._known(row)
        sha, size = row.known
        if self.rows and starts_part(Candidate(self.rows[-1].path, ""), Candidate(row.path, sha), len(self.rows)):
            self._close()
        self.rows.append(row)
        self.size += size
        if closes_part(Candidate(row.path, sha), len(self.rows), self.size):
            self._close()
        return self._drain()

    def group(self, rows: list[_Row]) -> list[tuple[list[_Row], dict[str, Any]]]:
        """`rows` as one part (cut already: `part_cuts`), each with its `known` (sha256, size)."""
        self.rows, self.size = rows, 0
        self._close()
        return self._drain()

    def reused(self, run: _Run, info: dict[str, Any]) -> list[tuple[Any, dict[str, Any]]]:
        """A part found whole, in its place in the order."""
        self.pending.append((run, info))
        return self._drain()

    def _drain(self) -> list[tuple[Any, dict[str, Any]]]:
        done = []
        while len(self.pending) > 2:
            done.append(self._resolve(*self.pending.popleft()))
        return done

    def finish(self) -> list[tuple[list[_Row], dict[str, Any]]]:
        if self.rows:
            self._close()
        done = [self._resolve(*p) for p in self.pending]
        self.pending.clear()
        return done

    def _close(self) -> None:
        rows, self.rows, self.size = self.rows, [], 0
        shas = [r.known[0] for r in rows]
        while rows and all(shas):  # every row's content known before reading it: the part may already be here
            # the ids of the part and of each prefix of it, from one pass over its rows
            ids = prefix_ids([Candidate(r.path, s) for r, s in zip(rows, shas)], self.max_pixels, self.max_side)
            k, found = len(rows), self.store.find(ids[-1])
            if found is None:  # or the part it grew from, which it begins with
                k, found = self.store.longest_prefix(ids[:-1])
            if found is None:
                break
            for row, sha in zip(rows[:k], shas[:k]):
                row.known_sha = sha
            self.pending.append((rows[:k], found))
            rows, shas = rows[k:], shas[k:]
        if not rows:
            return
        if rows[0].checked is not None:
            self.pending.append((rows, None))
            return
        items = [(r.image, r.known[0] or None, self.max_pixels, self.max_side) for r in rows]
        self.to_check -= len(items)
        if self.pool is None or self.to_check >= 0:
            self.pending.append((rows, [check_images(items)]))
            return
        step = max(1, min(_BATCH, -(-len(items) // self.workers)))
        futures = [self.pool.submit(check_images, items[i : i + step]) for i in range(0, len(items), step)]
        self.pending.append((rows, futures))

    def _resolve(self, rows: list[_Row], found) -> tuple[list[_Row], dict[str, Any]]:
        if isinstance(found, dict):
            return rows, found
        if found is not None:  # the check's results, or futures for them
            results = [c for part in found for c in (part if isinstance(part, list) else part.result())]
            for row, checked in zip(rows, results):
                row.checked = checked
        skipped = [(i, r.checked.reason) for i, r in enumerate(rows) if r.checked and r.checked.reason is not None]
        candidates = [Candidate(r.path, r.known[0] or (r.checked.sha256 if r.checked else "")) for r in rows]
        transient = [(i, reason) for i, reason in skipped if is_transient(reason)]
        pid = part_id(candidates, self.max_pixels, transient, self.max_side)
        info = self.store.find(pid)
        if info is None:
            kept = [r.checked for r in rows if r.checked and r.checked.reason is None]
            images = [{"bytes": r.checked.data, "path": r.path} for r in rows if r.checked and r.checked.reason is None]
            info = self.store.write(pid, images, [c.sha256 for c in kept], [c.shape for c in kept], skipped)
        return rows, info


def _write_rows(writer, rows: list[_Row] | _Run, info: dict[str, Any], extra, label_index, skip) -> int:
    """Add one part's kept rows to the version's rows table (its skipped ones to the skips); how many."""
    if isinstance(rows, _Run):
        return rows.write(writer, info, extra, skip)
    skipped = {int(i): reason for i, reason in info["skipped"]}
    kept: dict[str, list] = {"row_id": [], **({"label": []} if label_index is not None else {})}
    kept.update({name: [] for name in extra})
    for i, row in enumerate(rows):
        if i in skipped:
            skip(row.row_id, row.path, skipped[i])
            continue
        kept["row_id"].append(row.row_id)
        if label_index is not None:
            label = row.label
            kept["label"].append(label if isinstance(label, int) else label_index[str(label)])
        for name in extra:
            kept[name].append(row.metadata[name])
    if len(kept["row_id"]) != info["rows"]:
        raise DatasetError(f"part {info['name']} holds {info['rows']} images, not the {len(kept['row_id'])} it should")
    if kept["row_id"]:
        writer.write_batch(kept)
    return len(kept["row_id"])


_SCALAR_TYPES = ("bool", "int", "uint", "float", "string", "large_string", "date", "timestamp", "time", "duration")


def _metadata_features(ds, section: DatasetSettings, source: Source) -> dict[str, Any]:
    """The `datasets` features of `section.metadata_columns`, each checked to exist and hold scalars."""
    from datasets import Value

    features = {}
    for name in section.metadata_columns:
        feature = ds.features.get(name)
        if feature is None:
            others = [c for c in ds.column_names if c not in (section.image_column, section.label_column)]
            raise DatasetError(
                f"dataset.metadata_columns: {source.describe()} has no column {name!r}; "
                f"its other columns are: {', '.join(others) or 'none'}"
            )
        if not isinstance(feature, Value) or not feature.dtype.startswith(_SCALAR_TYPES):
            raise DatasetError(
                f"dataset.metadata_columns: column {name!r} holds {type(feature).__name__} values; "
                "only scalar columns (numbers, text, true/false, dates) can be stored and filtered on"
            )
        features[name] = feature
    return features


def check_workers(section: DatasetSettings, total: int) -> int:
    """Processes that read, hash and test-decode images: `dataset.num_workers`, or with auto every
    core this process may use, once there are enough images to repay starting them."""
    if section.num_workers != "auto":
        return int(section.num_workers)
    cores = available_cores()
    return cores if cores > 1 and total >= _POOL_MIN_IMAGES else 0


def available_cores() -> int:
    """The cores this process may run on (its affinity, where the system has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@contextmanager
def _pool(workers: int) -> Iterator[_LazyPool | None]:
    if workers == 0:
        yield None
        return
    pool = _LazyPool(workers)
    try:
        yield pool
    except BrokenProcessPool as exc:  # e.g. a worker could not import the script that started the run
        raise DatasetError(
            f"the dataset stage's worker processes stopped ({exc}); each starts by importing the script "
            f'that started the run, so a script must call lookalike under `if __name__ == "__main__":`; '
            "or set dataset.num_workers=0"
        ) from None
    finally:
        pool.shutdown()


class _LazyPool:
    """A process pool started at its first task: a version that reuses every part but a few starts none."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.pool: ProcessPoolExecutor | None = None

    def submit(self, fn, *args):
        if self.pool is None:
            # spawn: the run may hold threads (Prefect, W&B) that fork would copy mid-lock
            self.pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        return self.pool.submit(fn, *args)

    def shutdown(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


def _checked_batches(ds, section: DatasetSettings, labelled: bool, pool, workers: int):
    """(start, rows, [Checked]) for each batch of the split, in order; with a pool, at most two
    batches per worker in flight, so memory stays bounded whatever the collection's size."""

    def items(batch) -> list:
        out = []
        for offset, image in enumerate(batch[section.image_column]):
            if labelled and batch[section.label_column][offset] is None:
                out.append((None, None, section.max_image_pixels, None))  # skipped for its label: not read
                continue
            out.append((image, None, section.max_image_pixels, section.max_side))
        return out

    starts = range(0, len(ds), _BATCH)
    if pool is None:
        for start in starts:
            batch = ds[start : start + _BATCH]
            yield start, batch, check_images(items(batch))
        return
    pending: deque = deque()
    for start in starts:
        batch = ds[start : start + _BATCH]
        pending.append((start, batch, pool.submit(check_images, items(batch))))
        if len(pending) >= 2 * workers:
            first, rows, future = pending.popleft()
            yield first, rows, future.result()
    while pending:
        first, rows, future = pending.popleft()
        yield first, rows, future.result()


def _kept_looks(rows: list[_Row] | _Run, info: dict[str, Any]) -> Iterable[Look | None]:
    """The looks of a part's kept rows, in order; None for an image this run did not decode (its part reused)."""
    if isinstance(rows, _Run):  # taken whole, unread
        return repeat(None, info["rows"])
    skipped = {int(i) for i, _ in info["skipped"]}
    return (r.checked.look if r.checked else None for i, r in enumerate(rows) if i not in skipped)


def _too_many_unreadable(skipped: list[dict[str, Any]], total: int, section: DatasetSettings) -> str:
    examples = "; ".join(one_line(f"{s['path'] or 'row ' + str(s['row_id'])}: {s['reason']}") for s in skipped[:3])
    return (
        f"more than {section.max_unreadable_fraction:.0%} of {total} images are unreadable "
        f"({len(skipped)} so far, e.g. {examples}); fix the files or raise "
        "LOOKALIKE_DATASET__MAX_UNREADABLE_FRACTION"
    )


def snapshot_column(snapshot, name: str) -> list:
    """One column of an opened snapshot as a list, read whole from its Arrow table: `snapshot[name]`
    is a lazy `datasets` Column that costs ~60x more to iterate (0.84 s against 0.014 s for 60k rows)."""
    return snapshot.data.column(name).to_pylist()


def row_positions(snapshot) -> dict[int, int]:
    """Row id -> position in the snapshot (row ids have gaps where images were skipped)."""
    return {int(r): i for i, r in enumerate(snapshot_column(snapshot, "row_id"))}


def positions_of(snapshot, row_ids: Sequence[int] | np.ndarray) -> np.ndarray:
    """Where each of `row_ids` (ids the snapshot holds) sits in an opened snapshot, as an int64 array: for a few
    rows of a large snapshot, without `row_positions`' dict over all of them."""
    ids = snapshot.data.column("row_id").to_numpy()
    order = np.argsort(ids, kind="stable")
    return order[np.searchsorted(ids, np.asarray(row_ids, dtype=np.int64), sorter=order)].astype(np.int64)


def column_at(snapshot, name: str, positions: np.ndarray) -> list:
    """`snapshot_column(snapshot, name)` at `positions` only, taken from the Arrow table."""
    return snapshot.data.column(name).take(positions).to_pylist()


def image_paths_at(snapshot, positions: np.ndarray) -> list[str | None]:
    """The source path of the images at `positions`, read without their encoded bytes."""
    import pyarrow.compute as pc

    return pc.struct_field(snapshot.data.column("image").take(positions), "path").to_pylist()


def open_snapshot(root: Path, manifest: Manifest):
    """The snapshot as a memory-mapped `datasets.Dataset` (row_id, image, sha256, label?, metadata...),
    verified: a version written as shared parts (`lookalike.stages.dataset.parts`), or one
    `images.arrow` as versions before them were."""
    if any(entry.path == SNAPSHOT for entry in manifest.files):
        from datasets import Dataset

        return Dataset.from_file(str(verified_path(root, manifest, SNAPSHOT)), in_memory=False)
    return open_parted(root, manifest)
