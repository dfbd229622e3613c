"""Content-addressed parts of dataset snapshots, shared between the versions of a collection.

A snapshot's images (path, encoded bytes and content sha256) live in parts under `<root>/dataset/parts/`, each
written once and named by the sha256 of what went into it: the ordered (path, content sha256) of
its rows and the pixel limit they were checked against. Where one part ends is decided by the
content, as rsync's and restic's chunkers do: after a row whose sha256 is 0 modulo TARGET_ROWS (or
at MAX_ROWS / MAX_BYTES), so an image added or removed changes only the part it lands in, and the
next version of a grown collection writes its new images and reuses every other part.

Everything that moves between versions (row ids are positions in the source, labels, metadata)
is in the version's own `rows.arrow` (zstd-compressed: a few bytes a row); its `parts.json` lists the parts in order with their size
and sha256 (`lookalike.core.manifest`). Next to each part, `<id>.json` records its size, sha256
and which of its rows were skipped and why, so a later version reuses it without reading it.
"""

from __future__ import annotations

import hashlib
import json
import os
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate, repeat
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import Any, cast

from lookalike.core.manifest import (
    PART_LIST,
    IntegrityError,
    atomic_path,
    atomic_write_bytes,
    part_entries,
    parts_dir,
    sha256_file,
    stage_dir,
    verified_path,
)

STAGE = "dataset"
ROWS = "rows.arrow"
FORMAT = 1
TARGET_ROWS = 1024  # a part holds ~1,000 images on average
MAX_ROWS = 8 * TARGET_ROWS
MAX_BYTES = 256 << 20  # camera-sized JPEGs: ~60 per part
# Skips that say nothing about the content (the file could not be read this time): a part holding one is
# named by its outcome too, so it is never reused for the same inputs without looking at them again.
TRANSIENT = ("cannot read", "changed after it was listed", "missing image")


@dataclass(frozen=True)
class Candidate:
    """A source row that goes into a part: its image's path and content sha256 ('' while unknown)."""

    path: str | None
    sha256: str
    size: int = 0


def closes_part(candidate: Candidate, rows: int, size: int) -> bool:
    """Whether a part holding `rows` rows and `size` bytes, the last of them `candidate`, ends here."""
    sha = candidate.sha256
    return (len(sha) >= 16 and int(sha[:16], 16) % TARGET_ROWS == 0) or rows >= MAX_ROWS or size >= MAX_BYTES


def starts_part(previous: Candidate, candidate: Candidate, rows: int) -> bool:
    """Whether `candidate` starts a new part after one of `rows` rows ending with `previous`: at a change of
    folder, once the part holds a few rows. A collection mostly grows by new files at the end of its folders
    (later names, later dates); a part that ends with its folder is then reused whole, and the new files go
    in new parts (`PartStore.longest_prefix`)."""
    if rows < TARGET_ROWS // 8 or previous.path is None or candidate.path is None:
        return False
    return os.path.dirname(previous.path) != os.path.dirname(candidate.path)


def part_cuts(paths: Sequence[str | None], shas: Sequence[str], sizes: Sequence[int]) -> list[tuple[int, int]]:
    """(start, stop) of each part the rows go into, in order: where `starts_part` and `closes_part`, applied row
    by row, would cut them, found from the few rows where a rule can fire (an sha256 ending a part, a change of
    folder) and the running byte count, instead of a Python call per row (seconds at 10^6 rows)."""
    import numpy as np

    n = len(paths)
    hits = [i for i, tail in enumerate(_hit_tails(shas)) if tail]
    heads = np.array([p.rpartition("/")[0] if p is not None else None for p in paths] if n else [], dtype=object)
    changes = [
        i + 1 for i in np.flatnonzero(heads[1:] != heads[:-1]).tolist() if _folder_changes(paths[i], paths[i + 1])
    ]
    ends = np.zeros(n + 1, np.int64)
    np.cumsum(np.asarray(sizes, np.int64), out=ends[1:])
    min_rows = max(TARGET_ROWS // 8, 1)  # starts_part: never before the part holds a row
    cuts, start = [], 0
    while start < n:
        stop = min(n, start + MAX_ROWS, int(np.searchsorted(ends, ends[start] + MAX_BYTES)))
        if (k := bisect_left(hits, start)) < len(hits):
            stop = min(stop, hits[k] + 1)
        if (k := bisect_left(changes, start + min_rows)) < len(changes):
            stop = min(stop, changes[k])
        cuts.append((start, stop))
        start = stop
    return cuts


def _folder_changes(previous: str | None, path: str | None) -> bool:
    return previous is not None and path is not None and os.path.dirname(previous) != os.path.dirname(path)


def _hit_tails(shas: Sequence[str]) -> list[bool]:
    """`closes_part`'s content rule for each sha256: its first 16 hex digits are 0 modulo TARGET_ROWS."""
    if 4096 % TARGET_ROWS == 0:  # 16**3 is a multiple: the last three of those digits decide
        tails = {f"{t:03x}" for t in range(0, 4096, TARGET_ROWS)}
        return [len(s) >= 16 and s[13:16] in tails for s in shas]
    return [len(s) >= 16 and int(s[:16], 16) % TARGET_ROWS == 0 for s in shas]


def range_ids(
    paths: Sequence[str | None],
    shas: Sequence[str],
    cuts: Sequence[tuple[int, int]],
    max_pixels: int,
    max_side: int | None = None,
):
    """`part_id` of the rows of each (start, stop) in `cuts`: the rows' bytes made once, each part hashed over
    its slice of them."""
    named = cast("Sequence[str]", paths)
    if None not in paths and _plain_json("".join(named)) and _plain_json("".join(shas)):
        # as json.dumps writes them, without a Python call per row: plain ASCII text needs no escapes
        lines = list(map("".join, zip(repeat('["'), named, repeat('", "'), shas, repeat('"]\n'))))
    else:
        lines = [f"[{_json_text(p)}, {encode_basestring_ascii(s)}]\n" for p, s in zip(paths, shas)]
    blob = memoryview("".join(lines).encode())  # ASCII: a character is a byte
    offsets = [0, *accumulate(map(len, lines))]
    base, ids = _digest(max_pixels, max_side), []
    for start, stop in cuts:
        digest = base.copy()
        digest.update(blob[offsets[start] : offsets[stop]])
        ids.append(digest.hexdigest())
    return ids


def _plain_json(text: str) -> bool:
    """Whether json.dumps writes `text` as it is: printable ASCII without quotes or backslashes (C-speed tests)."""
    return text.isascii() and text.isprintable() and '"' not in text and "\\" not in text


def _json_text(path: str | None) -> str:
    """`json.dumps(path)` (its C string encoder, without the call's own cost)."""
    return "null" if path is None else encode_basestring_ascii(path)


def _digest(max_pixels: int, max_side: int | None = None):
    # max_side is in a part's id only when set: parts of the originals keep the ids they had before it
    limits: dict[str, Any] = {"format": FORMAT, "max_pixels": max_pixels}
    if max_side is not None:
        limits["max_side"] = max_side
    return hashlib.sha256(json.dumps(limits).encode())


def _row_bytes(c: Candidate) -> bytes:
    return json.dumps([c.path, c.sha256]).encode() + b"\n"


def part_id(
    candidates: Sequence[Candidate],
    max_pixels: int,
    transient: Sequence[tuple[int, str]] = (),
    max_side: int | None = None,
) -> str:
    """The part's name: sha256 over what went into it, the limits its images were taken with (`_digest`) and
    the transient skips, when there were some."""
    digest = _digest(max_pixels, max_side)
    for c in candidates:
        digest.update(_row_bytes(c))
    if transient:
        digest.update(json.dumps(list(transient)).encode())
    return digest.hexdigest()


def prefix_ids(candidates: Sequence[Candidate], max_pixels: int, max_side: int | None = None) -> list[str]:
    """`part_id` of each prefix of `candidates` (the first 1, 2, ... n), in one pass."""
    digest, ids = _digest(max_pixels, max_side), []
    for c in candidates:
        digest.update(_row_bytes(c))
        ids.append(digest.copy().hexdigest())
    return ids


def is_transient(reason: str) -> bool:
    return reason.startswith(TRANSIENT)


@dataclass
class PartStore:
    """The parts of one artifacts root: finds a part to reuse, or writes one; counts both."""

    root: Path
    verify_full: bool = False
    reused: int = 0
    written: int = 0
    bytes_written: int = 0
    bytes_reused: int = 0

    def __post_init__(self) -> None:
        self.folder = parts_dir(self.root, STAGE)
        # the records present when the build started (and those it writes): one listing, not a stat per prefix
        self.recorded = (
            {n[:-5] for n in os.listdir(self.folder) if n.endswith(".json")} if self.folder.is_dir() else set()
        )

    def longest_prefix(self, ids: Sequence[str]) -> tuple[int, dict[str, Any] | None]:
        """(k, record) of the longest existing part whose id is `ids[k - 1]` (`prefix_ids` of the rows: the
        first k of them; (0, None) if none): a part that new rows were appended to is reused whole, and
        only the new rows are written."""
        if not self.recorded:
            return 0, None
        for k in range(len(ids), 0, -1):
            if ids[k - 1] in self.recorded and (found := self.find(ids[k - 1])) is not None:
                return k, found
        return 0, None

    def find(self, pid: str) -> dict[str, Any] | None:
        """The part's record when it is here whole (its size, and its sha256 with verify=full)."""
        part, record = self.folder / f"{pid}.arrow", self.folder / f"{pid}.json"
        try:
            info = json.loads(record.read_bytes())
            if part.stat().st_size != info["bytes"]:
                return None
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if self.verify_full and sha256_file(part) != info["sha256"]:
            return None
        # touched: `lookalike gc` spares recently used parts, which a build in progress may be about to list
        os.utime(part)
        os.utime(record)
        self.reused += 1
        self.bytes_reused += info["bytes"]
        return info

    def write(
        self, pid: str, images: list[dict[str, Any]], shas: list[str], shapes: list, skipped: list[tuple[int, str]]
    ) -> dict[str, Any]:
        """Write a part (atomically, hashed as it is kept) and its record; the record. `shapes`: each image's
        (width, height, mode), counted in the record for the profile of every version that uses the part (a
        count per distinct shape: the record is read whenever the part is reused, a million times a version
        at 10^6 images if each image were listed)."""
        from datasets.arrow_writer import ArrowWriter

        from lookalike.stages.dataset.assembled import part_features

        part = self.folder / f"{pid}.arrow"
        with atomic_path(part) as tmp:
            writer = ArrowWriter(features=part_features(), path=str(tmp))
            try:
                writer.write_batch({"image": images, "sha256": shas})
                writer.finalize()
            finally:
                writer.close()
        info: dict[str, Any] = {
            "name": part.name,
            "bytes": part.stat().st_size,
            "sha256": sha256_file(part),
            "rows": len(images),
            "skipped": [list(s) for s in skipped],
        }
        if all(shapes):
            info["shape_counts"] = [[*shape, n] for shape, n in Counter(tuple(shape) for shape in shapes).items()]
        atomic_write_bytes(self.folder / f"{pid}.json", json.dumps(info).encode())
        self.recorded.add(pid)
        self.written += 1
        self.bytes_written += info["bytes"]
        return info

    def stats(self) -> dict[str, int]:
        return {
            "parts": self.reused + self.written,
            "parts_reused": self.reused,
            "parts_written": self.written,
            "bytes_written": self.bytes_written,
            "bytes_reused": self.bytes_reused,
        }


def compress_rows(tmp: Path, out: Path) -> None:
    """Rewrite the rows table `tmp` (as `datasets`' ArrowWriter wrote it) zstd-compressed to `out`: row ids
    and labels run in order, so each version's table costs a few bytes a row instead of ~16; it is read
    into memory on open (small), the parts stay memory-mapped."""
    import pyarrow as pa

    with pa.memory_map(str(tmp)) as source:
        table = pa.ipc.open_stream(source).read_all()
    options = pa.ipc.IpcWriteOptions(compression="zstd")
    with atomic_path(out) as target, pa.OSFile(str(target), "wb") as sink:
        with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
            writer.write_table(table)
    tmp.unlink()


def write_part_list(folder: Path, used: list[dict[str, Any]]) -> None:
    """`parts.json`: the parts in row order, each with what a root that installs it needs to reuse it (its
    size, sha256, rows and skips; not the images' shapes, which a profile can read again)."""
    fields = ("name", "bytes", "sha256", "rows", "skipped")
    listed = [{name: p[name] for name in fields} for p in used]
    atomic_write_bytes(folder / PART_LIST, json.dumps({"format": FORMAT, "parts": listed}).encode())


def open_parted(root: Path | str, manifest) -> Any:
    """A version written as parts, as one memory-mapped `datasets.Dataset` with the columns a
    single-file snapshot has (row_id, image, sha256, label?, metadata...). `rows.arrow` and
    `parts.json` are checked against their sha256; each part against its size.

    Raises:
        IntegrityError: a part is missing or has another size than `parts.json` records.
    """
    rows = verified_path(root, manifest, ROWS)
    verified_path(root, manifest, PART_LIST)
    folder = stage_dir(root, manifest.stage, manifest.key)
    parts = []
    for entry in part_entries(folder):
        path = parts_dir(root, manifest.stage) / entry.path
        size = path.stat().st_size if path.is_file() else None
        if size != entry.bytes:
            what = "is missing" if size is None else f"has {size} bytes, not the {entry.bytes} {PART_LIST} records"
            raise IntegrityError(
                f"{path} {what} (deleted or damaged after {folder.name} was written); "
                f"delete {folder} and re-run to write it again"
            )
        parts.append(path)
    from lookalike.stages.dataset.assembled import assemble

    return assemble(rows, parts, folder)


class PartImages:
    """A version's images by position, read from its memory-mapped parts (for its profile): no `datasets` table
    over every part is assembled to look at a sample of them."""

    def __init__(self, paths: list[Path], rows: list[int]) -> None:
        self.paths, self.starts = paths, [0, *accumulate(rows)]
        self.tables: dict[int, Any] = {}

    def __len__(self) -> int:
        return self.starts[-1]

    def image_bytes(self, positions: list[int]) -> list[bytes]:
        """The encoded bytes of the images at `positions`, in that order."""
        import pyarrow as pa

        out = []
        for position in positions:
            k = bisect_right(self.starts, position) - 1
            if k not in self.tables:
                with pa.memory_map(str(self.paths[k])) as source:
                    self.tables[k] = pa.ipc.open_stream(source).read_all().column("image")
            out.append(self.tables[k][position - self.starts[k]]["bytes"].as_py())
        return out


def recorded_shapes(used: list[dict[str, Any]]) -> list[tuple[int, int, str, int]] | None:
    """(width, height, mode, count) of the kept images, each shape in the order it first appears, from their parts'
    records; None when a record has none (a part fetched from a bucket, whose record stayed behind): the profile
    reads headers then. A record written before counts lists each image's shape."""
    counts: Counter[tuple[int, int, str]] = Counter()
    for info in used:
        if info.get("shape_counts") is not None:
            for width, height, mode, n in info["shape_counts"]:
                counts[width, height, mode] += n
            continue
        if info.get("shapes") is None or len(info["shapes"]) != info["rows"] or not all(info["shapes"]):
            return None
        counts.update(tuple(shape) for shape in info["shapes"])
    if sum(counts.values()) != sum(info["rows"] for info in used):
        return None
    return [(*shape, n) for shape, n in counts.items()]
