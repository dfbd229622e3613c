"""One walk of a local collection per run, and the order and names the content key is made from.

A folder of 10^5-10^7 images is listed with one `os.scandir` walk (size, mtime and inode come
with it) instead of a `Path.rglob` plus a `stat` per file, and never through `datasets`' pattern
resolution, which globs the whole tree once per candidate split pattern (~18 minutes for 210,000
files). Inside `one_listing_per_run()` every question about the same folder (the stage key, the
snapshot, the query split, the evaluation's list of splits) is answered from the first listing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from lookalike.core.progress import progress

T = TypeVar("T")


class ListedFile(NamedTuple):
    """A file as the walk saw it: its path relative to the listed folder (`/`-separated) and the
    stat fields the content-hash memo is keyed by. (A named tuple: a million are made per walk, at a
    third of a frozen dataclass's cost.)"""

    rel: str
    path: str
    size: int
    mtime_ns: int
    inode: int
    etag: str = ""  # an object in a bucket: its ETag (changes with its content; inode is 0)

    @property
    def stamp(self) -> str:
        """What the content-hash memo compares: a file whose stamp is unchanged has unchanged content."""
        return f"{self.size}:{self.etag}" if self.etag else f"{self.size}:{self.mtime_ns}:{self.inode}"


@dataclass(frozen=True)
class Listing:
    """Every file under `root` that is not hidden, in the order the content key takes them."""

    root: str
    files: tuple[ListedFile, ...]


# (what, location) -> the answer, for the run in progress; None outside one (each call works again).
_RUN_MEMO: ContextVar[dict[tuple[str, str], Any] | None] = ContextVar("lookalike_run_listings", default=None)


@contextmanager
def one_listing_per_run() -> Iterator[None]:
    """Within this block a folder is walked once; every later `list_files` of it reuses the walk.

    Prefect runs a flow's tasks in copies of the flow's context, which share this dict. Inside an
    open block, a nested one keeps the outer run's memory.
    """
    if _RUN_MEMO.get() is not None:
        yield
        return
    token = _RUN_MEMO.set({})
    try:
        yield
    finally:
        _RUN_MEMO.reset(token)


def list_files(location: str | Path) -> Listing:
    """The collection at `location` (a folder, one file, or an `s3://bucket/prefix` URL), listed once per run.

    Hidden names (a part starting with '.') are left out, as everywhere in lookalike. Symlinked
    files are followed; symlinked folders are not walked into (as `Path.rglob` does).
    """
    return once_per_run("listing", str(location), lambda: _walk(str(location)))


def once_per_run(what: str, location: str, compute: Callable[[], T]) -> T:
    """`compute()`, or inside `one_listing_per_run()` the answer it gave earlier in this run."""
    memo = _RUN_MEMO.get()
    if memo is None:
        return compute()
    if (what, location) not in memo:
        memo[what, location] = compute()
    return memo[what, location]


def is_bucket_url(location: str) -> bool:
    return location.startswith("s3://")


def _walk(location: str) -> Listing:
    if is_bucket_url(location):
        return _list_bucket(location)
    root = Path(location)
    if root.is_file():
        stat = root.stat()
        return Listing(location, (ListedFile(root.name, str(root), stat.st_size, stat.st_mtime_ns, stat.st_ino),))
    # Depth first, each folder's entries in name order: the files come out in path order (part by part), the
    # order the content key has always taken files in, without sorting a million paths after.
    found: list[ListedFile] = []
    stack = [(iter(_entries(location)), "")]
    with progress(None, "dataset: listing", unit="file") as bar:
        while stack:
            entries, prefix = stack[-1]
            before = len(found)
            for entry in entries:
                name = entry.name
                if name.startswith("."):
                    continue
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append((iter(_entries(entry.path)), f"{prefix}{name}/"))
                        break
                    if entry.is_file():
                        stat = entry.stat()
                        found.append(ListedFile(prefix + name, entry.path, stat.st_size, stat.st_mtime_ns, stat.st_ino))
                except FileNotFoundError:  # removed between the listing of its folder and its stat
                    continue
            else:
                stack.pop()
            bar.update(len(found) - before)
    return Listing(location, tuple(found))


def _entries(folder: str) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as it:
            return sorted(it, key=_NAME)
    except FileNotFoundError:  # a subfolder removed while the walk was on its way to it
        return []


_NAME = attrgetter("name")


def _list_bucket(url: str) -> Listing:
    """An `s3://bucket/prefix` collection: one paginated listing, keys as relative paths."""
    from lookalike.artifacts.s3 import list_collection

    base = url.rstrip("/")
    found = [
        (tuple(obj.key.split("/")), ListedFile(obj.key, f"{base}/{obj.key}", obj.size, obj.modified_ns, 0, obj.etag))
        for obj in list_collection(url)
        if not any(part.startswith(".") or not part for part in obj.key.split("/"))
    ]
    found.sort(key=lambda item: item[0])
    return Listing(base, tuple(file for _, file in found))
