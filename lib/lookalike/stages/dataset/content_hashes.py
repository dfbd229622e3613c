"""sha256 of every listed file, computed only for files that are new or changed since the last run.

The memo maps a file's path and stamp (size, mtime_ns and inode on a disk; size and ETag in a
bucket) to the sha256 last computed for it, in one SQLite file under the artifacts root, the way
DVC's state database and git's index avoid re-reading unchanged files. A file whose stamp moved is
read and hashed again;
the others cost one lookup, so a cached re-run of a million-file collection reads no image
bytes. The memo only saves work: the key is still made from content hashes, and
`dataset.verify=full` re-hashes every file (catching an edit that kept size and mtime).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path

from lookalike.artifacts.s3 import read_url
from lookalike.core.errors import path_text
from lookalike.core.manifest import sha256_file
from lookalike.core.progress import progress
from lookalike.stages.dataset.listing import ListedFile, Listing, is_bucket_url

MEMO_FILE = "content-hashes.sqlite"
_COMMIT_EVERY = 20_000
_FILES_PER_TASK = 64  # hashes written per transaction: an interrupted first run keeps its work
# lookups without a memo file (no artifacts root given): kept for the life of the process
_IN_PROCESS: dict[str, tuple[str, str, str]] = {}  # path -> (path, stamp, sha256)
_NOT_KNOWN = ("", "", "")


@dataclass
class HashedListing:
    """The listing's files with their sha256, less the files that could not be read."""

    files: list[ListedFile]
    hashes: list[str]
    unreadable: list[tuple[ListedFile, str]] = field(default_factory=list)
    hashed: int = 0  # files read and hashed in this call
    reused: int = 0  # files whose hash came from the memo
    seconds: float = 0.0

    def warn_left_out(self, named_by: str, name: Callable[[ListedFile], str]) -> None:
        """One warning counting the files left out of the key because they could not be read, with
        three examples (`name` shows a file), e.g. `3 file(s) of /data/x left out of the dataset key, ...`."""
        if self.unreadable:
            examples = "; ".join(f"{path_text(name(f))}: {why}" for f, why in self.unreadable[:3])
            warnings.warn(
                f"{len(self.unreadable)} file(s) {named_by} left out of the dataset key, "
                f"they could not be read (e.g. {examples})",
                stacklevel=3,
            )


def memo_path(root: Path | str) -> Path:
    """Where the memo of the artifacts root `root` lives."""
    return Path(root) / "cache" / MEMO_FILE


def hash_listing(listing: Listing, memo: Path | None, *, full: bool = False) -> HashedListing:
    """sha256 of each file of `listing`, read only when the memo has no entry for its
    (path, size, mtime_ns, inode), or for every file when `full`.

    A file that vanished or became unreadable since it was listed is left out and returned in
    `unreadable` with the reason, so a folder being synced does not stop the run.
    """
    start = time.perf_counter()
    known = {} if full else _known(listing, memo)
    todo = [f for f in listing.files if known.get(f.path, _NOT_KNOWN)[1] != f.stamp]
    fresh: dict[str, str | None] = {}
    reasons: dict[str, str] = {}
    if todo:
        with progress(len(todo), "dataset: hashing new or changed files", unit="file") as bar:
            for chunk in _chunks(todo, _COMMIT_EVERY):
                # a task per batch of files: a future per 1 KB file costs more than hashing it
                batches = list(_chunks(chunk, _FILES_PER_TASK))
                with ThreadPoolExecutor(max_workers=min(16, 2 * (os.cpu_count() or 1))) as pool:
                    for batch, results in zip(batches, pool.map(_hash_batch, batches)):
                        for file, (sha, reason) in zip(batch, results):
                            fresh[file.path] = sha
                            if reason:
                                reasons[file.path] = reason
                        bar.update(len(batch))
                _remember([f for f in chunk if fresh[f.path]], fresh, memo)
    result = HashedListing(files=[], hashes=[], hashed=len(todo), reused=len(listing.files) - len(todo))
    if not reasons:  # every file read: the listing in order, each hash from this run or the memo
        result.files = list(listing.files)
        result.hashes = [fresh[f.path] if f.path in fresh else known[f.path][2] for f in listing.files]  # type: ignore[misc]
        result.seconds = time.perf_counter() - start
        return result
    for file in listing.files:
        sha = fresh[file.path] if file.path in fresh else known[file.path][2]
        if sha is None:
            result.unreadable.append((file, reasons[file.path]))
            continue
        result.files.append(file)
        result.hashes.append(sha)
    result.seconds = time.perf_counter() - start
    return result


def _hash_batch(files: list[ListedFile]) -> list[tuple[str | None, str | None]]:
    return [_hash_one(file) for file in files]


def _hash_one(file: ListedFile) -> tuple[str | None, str | None]:
    try:
        if is_bucket_url(file.path):
            return hashlib.sha256(read_url(file.path)).hexdigest(), None
        return sha256_file(Path(file.path)), None
    except FileNotFoundError:
        return None, "vanished after it was listed"
    except OSError as exc:
        return None, f"cannot read file: {exc.strerror or exc}"


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _connect(memo: Path) -> sqlite3.Connection:
    memo.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(memo, timeout=60)
    db.execute("PRAGMA journal_mode=WAL")  # concurrent runs read while one writes
    db.execute("CREATE TABLE IF NOT EXISTS files (path BLOB PRIMARY KEY, stamp TEXT, sha256 TEXT) WITHOUT ROWID")
    return db


def _known(listing: Listing, memo: Path | None) -> dict[str, tuple[str, str, str]]:
    """path -> (path, stamp, sha256) for the memo's files under the listing."""
    if memo is None:
        return {f.path: _IN_PROCESS[f.path] for f in listing.files if f.path in _IN_PROCESS}
    if not memo.exists():
        return {}
    # One range scan over the listed folder's paths: the memo may hold other collections too.
    low = os.fsencode(listing.root)
    with closing(_connect(memo)) as db:
        where = "FROM files WHERE path >= ? AND path <= ?", (low, low + b"\xff")
        try:  # UTF-8 paths (nearly always): decoded by sqlite3, a row kept as (path, stamp, sha256)
            rows = db.execute("SELECT CAST(path AS TEXT), stamp, sha256 " + where[0], where[1]).fetchall()
            return dict(zip(map(itemgetter(0), rows), rows))
        except sqlite3.OperationalError:  # a name that is not UTF-8: decoded as os.fsdecode does
            rows = db.execute("SELECT path, stamp, sha256 " + where[0], where[1]).fetchall()
            return {os.fsdecode(path): (os.fsdecode(path), stamp, sha) for path, stamp, sha in rows}


def _remember(files: list[ListedFile], hashes: dict[str, str | None], memo: Path | None) -> None:
    if memo is None:
        for file in files:
            _IN_PROCESS[file.path] = (file.path, file.stamp, hashes[file.path])  # type: ignore[assignment]
        return
    if not files:
        return
    with closing(_connect(memo)) as db, db:
        db.executemany(
            "INSERT OR REPLACE INTO files VALUES (?, ?, ?)",
            [(os.fsencode(f.path), f.stamp, hashes[f.path]) for f in files],
        )
