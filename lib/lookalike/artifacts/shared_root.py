"""A shared artifacts root: stage folders in an S3 bucket, worked on through a local copy.

With `artifacts_root=s3://bucket/prefix`, each machine (the flow's runner, a Dask worker, a
retry on another node) works in its own local copy `<artifacts_cache>/s3/<bucket>/<prefix>/`
with the same `<stage>/<key>/` layout, and the bucket is what they share:

- a stage whose manifest is in the bucket is fetched (every file checked against it) instead
  of computed;
- before a stage builds, its input stages are fetched and whatever an earlier attempt left of
  it (embedding shards with their completion markers, pretraining's train-state) is
  downloaded, so a retry on another machine resumes instead of starting over;
- partial files go up as soon as they are durable locally (`share_partial`); on success the
  folder's files go up, then its manifest last, so a reader that sees the manifest sees a
  complete folder, and the partial objects the manifest does not list are deleted.

Callers never ask whether a root is shared: `store_at(root)` gives a `FolderStore` for a plain
folder (every sync is a no-op) or a `BucketStore` for a bucket's copy, with the same methods. The
local copy names its bucket in `.store.json`, so every process handed the local root (a
Dask worker or DDP rank on this machine) syncs the same way without being told. Between
machines, a build holds a lease object `<stage>/<key>/.lease`, created with S3's conditional
write (If-None-Match) and renewed by compare-and-swap (If-Match) every third of
`Store.lease_seconds`: a second machine waits for the manifest, or takes the lease over once it
has not changed for `lease_seconds` of the waiter's own clock (no clock sync needed). The per-key lock in
`lookalike.artifacts.stage_runner` serialises runs on one machine.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from lookalike.artifacts.s3 import (
    ConditionalWritesUnsupported,
    MirrorError,
    S3Location,
    check_bucket,
    delete_if,
    delete_objects,
    download_object,
    etag_of,
    find_stage,
    list_objects,
    put_if,
    s3_client,
    upload_object,
    upload_stage,
)
from lookalike.core.errors import LookalikeError
from lookalike.core.graph import STAGES, stage_of, walk_chain
from lookalike.core.manifest import (
    MANIFEST,
    IntegrityError,
    Manifest,
    atomic_write_bytes,
    find_manifest,
    is_stage_key,
    not_a_key,
    sha256_file,
    stage_dir,
)
from lookalike.core.settings import DEFAULT_CACHE, working_copy

STORE_FILE = ".store.json"
LEASE = ".lease"
SHARED_ALIASES = ("aliases/latest.json", "aliases/production.json", "aliases/history.jsonl")


@dataclass(frozen=True)
class Store:
    """Where the shared stage folders live and where this machine keeps its copy of them."""

    url: str  # s3://bucket/prefix
    endpoint_url: str | None = None
    cache: str = DEFAULT_CACHE  # expanded on the machine that opens it: each worker has its own home
    lease_seconds: float = 60.0  # a holder that stops renewing for this long (killed, cut off) loses its lease

    @property
    def location(self):
        return S3Location.parse(self.url)


def store_for(settings) -> Store | None:
    """The store a `lookalike.core.settings.Settings` names (`artifacts_root=s3://...`), or None."""
    if not settings.artifacts_store:
        return None
    return Store(
        url=settings.artifacts_store,
        endpoint_url=settings.mirror.endpoint_url,
        cache=settings.artifacts_cache,
        lease_seconds=settings.artifacts_lease_seconds,
    )


def open_root(settings) -> Path:
    """The local artifacts root for these settings: the folder, or this machine's opened copy
    of the shared store."""
    store = store_for(settings)
    return open_store(store) if store is not None else settings.artifacts_root


def open_store(store: Store) -> Path:
    """Create (or reuse) this machine's copy of the store, pull its aliases; the local root."""
    check_bucket(_client(store.endpoint_url), store.location, store.endpoint_url)
    root = working_copy(store.url, store.cache)
    root.mkdir(parents=True, exist_ok=True)
    marker = json.dumps(asdict(store), sort_keys=True).encode()
    if not (root / STORE_FILE).is_file() or (root / STORE_FILE).read_bytes() != marker:
        atomic_write_bytes(root / STORE_FILE, marker)
    for name in SHARED_ALIASES:  # the bucket's aliases win: another machine may have moved them
        _download(store, name, root / name)
    return root


def open_stage_copy(store: Store, stage: str, key: str, inputs: dict[str, str]) -> tuple[Path, Path]:
    """For a worker on any machine: its copy of the store with the stage's inputs fetched;
    (local root, the stage's folder in it)."""
    root = open_store(store)
    BucketStore(root, store).fetch_inputs(inputs)
    folder = stage_dir(root, stage, key)
    folder.mkdir(parents=True, exist_ok=True)
    return root, folder


class FolderStore:
    """A plain artifacts folder: its stage folders live here and nowhere else, so there is nothing
    to fetch, share or lease. The interface every caller uses, whatever the root is."""

    config: Store | None = None  # what a worker needs to open its own copy (None: the folder itself)

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    @property
    def url(self) -> str | None:
        """The shared store's URL, or None for a plain folder."""
        return self.config.url if self.config else None

    def fetch_finished(self, stage: str, key: str) -> Manifest | None:
        """The finished stage folder from the store into the root (verified), or None if it has none."""
        return None

    def has_finished(self, stage: str, key: str) -> bool:
        """Whether the store holds a manifest for this stage key."""
        return False

    def fetch_inputs(self, inputs: dict[str, str]) -> None:
        """Every stage folder a build can read (its inputs, and theirs), from the store when the root lacks it."""

    def pull_partial(self, stage: str, key: str) -> int:
        """Download what an earlier attempt (any machine) left of an unfinished stage folder; how many files."""
        return 0

    def share_files(self, names: list[str]) -> None:
        """Upload these files (relative to the root) to the same names in the store."""

    def push_finished(self, manifest: Manifest) -> dict | None:
        """Upload a finished stage folder (files, then manifest last) and delete the partial objects it does
        not list."""
        return None

    @contextmanager
    def lease(self, stage: str, key: str, poll: float = 1.0) -> Iterator[Manifest | None]:
        """Hold the store's lease on one stage key while building it. Yields the manifest when another machine
        finished the stage meanwhile (fetched, verified), else None (build it)."""
        yield None


class BucketStore(FolderStore):
    """This machine's copy of a shared `s3://` root: finished folders come down verified, partial and
    finished files go up, and a lease object keeps two machines from building one key at once."""

    def __init__(self, root: Path | str, config: Store) -> None:
        super().__init__(root)
        self.config = config
        self.client = _client(config.endpoint_url)
        self.location = config.location

    def fetch_finished(self, stage: str, key: str) -> Manifest | None:
        return find_stage(self.client, self.location, stage, key, self.root)

    def has_finished(self, stage: str, key: str) -> bool:
        return etag_of(self.client, self.location, f"{stage}/{key}/{MANIFEST}") is not None

    def fetch_inputs(self, inputs: dict[str, str]) -> None:
        # `queries` (evaluation's held-out split) is a dataset stage: the graph says so
        def fetch(stage: str, key: str) -> Manifest:
            manifest = self.fetch_finished(stage, key)
            if manifest is None:
                raise LookalikeError(
                    f"input stage {stage}/{key} is neither in {self.root} nor in the store "
                    f"{self.url}: re-run the flow from its first stage"
                )
            return manifest

        for name, key in inputs.items():
            walk_chain(fetch, stage_of(name), key, self.root)

    def pull_partial(self, stage: str, key: str) -> int:
        folder = stage_dir(self.root, stage, key)
        pulled = 0
        for name, size in list_objects(self.client, self.location, f"{stage}/{key}").items():
            target = folder / name
            if name in (MANIFEST, LEASE) or (target.is_file() and target.stat().st_size == size):
                continue
            pulled += _download(self.config, f"{stage}/{key}/{name}", target)
        return pulled

    def share_files(self, names: list[str]) -> None:
        for name in names:
            path = self.root / name
            if path.is_file():
                upload_object(self.client, self.location, name, path, sha256_file(path))

    def push_finished(self, manifest: Manifest) -> dict | None:
        pushed = upload_stage(self.client, self.location, self.root, manifest)
        folder = f"{manifest.stage}/{manifest.key}"
        listed = {entry.path for entry in manifest.files} | {MANIFEST, LEASE}  # the lease goes when its holder lets go
        objects = list_objects(self.client, self.location, folder)
        stale = [f"{folder}/{name}" for name in objects if name not in listed]
        delete_objects(self.client, self.location, stale)
        return {**pushed, "deleted_partial": len(stale)}

    @contextmanager
    def lease(self, stage: str, key: str, poll: float = 1.0) -> Iterator[Manifest | None]:
        """A store without conditional writes (warned) holds no lease."""
        client, location, name = self.client, self.location, f"{stage}/{key}/{LEASE}"
        try:
            etag = _acquire(client, location, name, self.root, self.config, stage, key, poll, self.config.lease_seconds)
        except ConditionalWritesUnsupported as exc:
            warnings.warn(f"{exc}: two machines building {stage}/{key} at once would both compute it", stacklevel=3)
            yield None
            return
        if isinstance(etag, Manifest):
            yield etag
            return
        holder = _Renewal(client, location, name, etag, self.config.lease_seconds)
        holder.start()
        try:
            yield None
        finally:
            holder.stop()
            delete_if(client, location, name, holder.etag)


def store_at(root: Path | str) -> FolderStore:
    """The store behind a local root: a `BucketStore` when it is a copy of a shared store
    (`.store.json` names it), else a `FolderStore`."""
    path = Path(root) / STORE_FILE
    if not path.is_file():
        return FolderStore(root)
    return BucketStore(root, Store(**json.loads(path.read_text())))


def read_manifest(root: Path | str, stage: str, key: str) -> Manifest:
    """Like `find_manifest` but a missing manifest is an error. When `root` is a copy of a
    shared store, a folder finished only in the store is fetched (verified) first. A stage or key
    that is not one (a path, `..`) is refused before it is joined onto the root."""
    if stage not in STAGES or not is_stage_key(key):
        raise IntegrityError(f"{not_a_key(key, stage)}; nothing was read")
    manifest = find_manifest(root, stage, key) or store_at(root).fetch_finished(stage, key)
    if manifest is None:
        raise IntegrityError(
            f"{stage}/{key} is not finished (no {MANIFEST} in {stage_dir(root, stage, key)}); "
            "run `lookalike run` to build it"
        )
    return manifest


def share_partial(folder: Path, names: list[str]) -> None:
    """Upload files of an unfinished stage folder (`<root>/<stage>/<key>/`) as soon as they
    are durable, so a retry elsewhere can resume from them. A no-op for a plain folder."""
    root = folder.parents[1]
    prefix = folder.relative_to(root).as_posix()
    store_at(root).share_files([f"{prefix}/{name}" for name in names])


def _lease_body() -> bytes:
    """Who holds the lease and when it was last renewed; new bytes each time, so a renewal
    changes the ETag waiters watch."""
    return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "renewed": time.time()}).encode()


def _acquire(
    client, location, name: str, root: Path, store: Store, stage: str, key: str, poll: float, lease_seconds: float
) -> str | Manifest:
    seen, since = None, time.monotonic()
    while True:
        current = etag_of(client, location, name)
        if current is None:
            etag = put_if(client, location, name, _lease_body(), None)
        elif current != seen:  # the holder renewed (or a new one took it): wait a full period again
            seen, since, etag = current, time.monotonic(), None
        elif time.monotonic() - since >= lease_seconds:  # not renewed for a whole period: take it over
            etag = put_if(client, location, name, _lease_body(), current)
        else:
            etag = None
        if etag is not None:
            return etag
        finished = BucketStore(root, store).fetch_finished(stage, key)
        if finished is not None:
            return finished
        time.sleep(poll)


class _Renewal(threading.Thread):
    """Renews the lease by compare-and-swap every third of its length until stopped."""

    def __init__(self, client, location, name: str, etag: str, lease_seconds: float) -> None:
        super().__init__(daemon=True, name=f"lease {name}")
        self.client, self.location, self.name, self.etag = client, location, name, etag
        self.lease_seconds = lease_seconds
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.wait(self.lease_seconds / 3):
            try:
                renewed = put_if(self.client, self.location, self.name, _lease_body(), self.etag)
            except MirrorError:
                continue  # S3 hiccup: try again next period; the lease lasts lease_seconds
            if renewed is None:
                warnings.warn(
                    f"lost the lease {self.name} to another machine (this one stalled for over "
                    f"{self.lease_seconds:.0f} s); both may write the stage",
                    stacklevel=1,
                )
                return
            self.etag = renewed

    def stop(self) -> None:
        self._stopped.set()
        self.join(timeout=5)


def _download(store: Store, name: str, target: Path) -> bool:
    return download_object(_client(store.endpoint_url), store.location, name, target)


@functools.lru_cache(maxsize=8)
def _client(endpoint_url: str | None):
    """One boto3 client per endpoint and process (clients are thread-safe; workers are processes)."""
    return s3_client(endpoint_url)
