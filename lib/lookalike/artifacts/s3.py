"""S3 objects: the calls a mirror (`lookalike.artifacts.mirror`) and a shared `s3://` artifacts root
(`lookalike.artifacts.shared_root`) are made of. The only module that imports boto3, and the one
place boto errors become a `MirrorError` (`_s3`: retryable when S3 failed transiently).

Files go up first and `manifest.json` last, so a reader that sees the manifest on S3
sees a complete folder. Objects already present with the same size and sha256
(recorded in object metadata) are skipped, so a re-run uploads only what is missing.
Credentials come from boto3's normal chain; the endpoint from the `endpoint_url`
setting or boto3's own AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL variables.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lookalike.core.errors import LookalikeError
from lookalike.core.manifest import (
    MANIFEST,
    PARTS,
    Manifest,
    atomic_path,
    complete_manifest,
    install_stage,
    part_entries,
    parts_dir,
    stage_dir,
)

SHA_META = "sha256"
MULTIPART_THRESHOLD = 64 * 1024 * 1024


class MirrorError(LookalikeError, RuntimeError):
    """The mirror (or a shared s3:// root) could not be read or written; the local result is
    unaffected. `retryable` when S3 failed transiently (5xx, throttling, the network) after
    botocore's own retries, so a stage task's retry may still succeed."""

    retryable = False


def _failure(message: str, exc: BaseException | None) -> MirrorError:
    from botocore.exceptions import BotoCoreError, ClientError

    error = MirrorError(message)
    while exc is not None and not isinstance(exc, (BotoCoreError, ClientError)):  # boto3 wraps upload errors
        exc = exc.__cause__ or exc.__context__
    if isinstance(exc, BotoCoreError):
        error.retryable = True
    elif isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        code = exc.response.get("Error", {}).get("Code")
        error.retryable = status >= 500 or code in ("SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable")
    return error


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str

    @classmethod
    def parse(cls, url: str) -> S3Location:
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise MirrorError(f"{url!r} is not an s3://bucket/prefix URL")
        return cls(parsed.netloc, parsed.path.strip("/"))

    def key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)


def s3_client(endpoint_url: str | None = None):
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"max_attempts": 4, "mode": "standard"},  # exponential backoff with jitter
        s3={"addressing_style": "path"},
        # Many S3-compatible stores reject the newer default CRC checksum headers.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return boto3.client("s3", endpoint_url=endpoint_url, config=config)


def _transfer():
    """boto3's transfer manager: multipart (4 parts in parallel) above MULTIPART_THRESHOLD."""
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(
        multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_THRESHOLD, max_concurrency=4
    )


def _same_object(client, bucket: str, key: str, size: int, sha256: str) -> bool:
    head = _s3(lambda: client.head_object(Bucket=bucket, Key=key), f"read s3://{bucket}/{key}", if_missing=None)
    return head is not None and head.get("ContentLength") == size and head.get("Metadata", {}).get(SHA_META) == sha256


def upload_stage(client, location: S3Location, root: Path, manifest: Manifest) -> dict:
    """Upload one finished stage folder to `<prefix>/<stage>/<key>/`: files first (skipping objects
    already there with the same size and sha256), then the shared parts its `parts.json` lists to
    `<prefix>/<stage>/parts/` (those not there yet), `manifest.json` last.

    Returns:
        {"url": ..., "uploaded": n, "skipped": n, "bytes": n}
    """
    folder = stage_dir(root, manifest.stage, manifest.key)
    counts = {"uploaded": 0, "skipped": 0, "bytes": 0}
    files = [(folder / e.path, location.key(manifest.stage, manifest.key, e.path), e) for e in manifest.files]
    shared = parts_dir(root, manifest.stage)
    files += [(shared / e.path, location.key(manifest.stage, PARTS, e.path), e) for e in part_entries(folder)]

    def send() -> None:
        transfer = _transfer()
        for path, key, entry in files:
            if _same_object(client, location.bucket, key, entry.bytes, entry.sha256):
                counts["skipped"] += 1
                continue
            client.upload_file(
                str(path),
                location.bucket,
                key,
                Config=transfer,
                ExtraArgs={"Metadata": {SHA_META: entry.sha256}},
            )
            counts["uploaded"] += 1
            counts["bytes"] += entry.bytes
        client.upload_file(
            str(folder / MANIFEST),
            location.bucket,
            location.key(manifest.stage, manifest.key, MANIFEST),
            ExtraArgs={"ContentType": "application/json"},
        )

    _s3(send, f"mirror to s3://{location.bucket}/{location.prefix}")
    return {"url": f"s3://{location.bucket}/{location.key(manifest.stage, manifest.key)}/", **counts}


def upload_file(client, location: S3Location, name: str, path: Path, content_type: str | None = None) -> str:
    """`path` to `<prefix>/<name>`, unconditionally; its s3:// URL."""
    extra = {"ContentType": content_type} if content_type else {}
    _s3(
        lambda: client.upload_file(str(path), location.bucket, location.key(name), ExtraArgs=extra),
        f"upload {path} to s3://{location.bucket}/{location.key(name)}",
    )
    return f"s3://{location.bucket}/{location.key(name)}"


def read_object(client, location: S3Location, name: str, what: str, if_missing: Any = None) -> bytes | Any:
    """The bytes of `<prefix>/<name>`, or `if_missing` when there is no such object."""
    return _s3(
        lambda: client.get_object(Bucket=location.bucket, Key=location.key(name))["Body"].read(),
        what,
        if_missing=if_missing,
    )


def fetch_stage(client, location: S3Location, stage: str, key: str, root: Path) -> Manifest:
    """One mirrored stage folder into `root/<stage>/<key>/`: files verified, manifest last.

    Files already in the cache with the right sha256 are not downloaded again; a file whose
    bytes do not match the mirrored manifest is refused and never left in the cache.
    """
    manifest = find_stage(client, location, stage, key, root)
    if manifest is None:
        raise MirrorError(
            f"s3://{location.bucket}/{location.key(stage, key)}/ is not in the mirror (no {MANIFEST}); mirror it with "
            f'--set \'mirror.stages=["dataset", "encoder", "embeddings", "index"]\''
        )
    return manifest


def find_stage(client, location: S3Location, stage: str, key: str, root: Path) -> Manifest | None:
    """`fetch_stage`, but None when the bucket holds no manifest for the stage key."""
    cached = complete_manifest(root, stage, key)
    if cached is not None:
        return cached
    where = f"s3://{location.bucket}/{location.key(stage, key)}/"
    raw = _s3(
        lambda: client.get_object(Bucket=location.bucket, Key=location.key(stage, key, MANIFEST))["Body"].read(),
        f"read {where}{MANIFEST}",
        if_missing=None,
    )
    if raw is None:
        return None
    return install_stage(
        root,
        raw,
        lambda name, tmp: _download(client, location, stage, key, name, tmp, where),
        where,
        expect=(stage, key),
        fetch_part=lambda name, tmp: _download(client, location, stage, PARTS, name, tmp, where),
    )


def _missing(exc) -> bool:
    return exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")


_RAISE = object()


def _s3(call: Callable[[], Any], what: str, if_missing: Any = _RAISE) -> Any:
    """Run one S3 call. A missing object gives `if_missing` (when given); any other boto error
    becomes one MirrorError `cannot <what>: ...`, retryable when S3 failed transiently."""
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return call()
    except ClientError as exc:
        if if_missing is not _RAISE and _missing(exc):
            return if_missing
        raise _failure(f"cannot {what}: {exc}", exc) from None
    except (Boto3Error, BotoCoreError) as exc:
        raise _failure(f"cannot {what}: {exc}", exc) from None


def _download(client, location: S3Location, stage: str, key: str, name: str, target: Path, where: str) -> None:
    _s3(
        lambda: client.download_file(location.bucket, location.key(stage, key, name), str(target), Config=_transfer()),
        f"download {where}{name}",
    )


# --- a shared artifacts root: single objects, listed and synced by lookalike.artifacts.shared_root --------------


def check_bucket(
    client,
    location: S3Location,
    endpoint_url: str | None,
    endpoint_setting: str = "mirror.endpoint_url (or AWS_ENDPOINT_URL_S3)",
    credential_settings: str = "AWS_PROFILE, AWS_ACCESS_KEY_ID, mirror.credentials_secret",
) -> None:
    """One clear error when the bucket is missing, forbidden or its endpoint unreachable; the
    settings named are the ones the caller's user sets."""
    from botocore.exceptions import BotoCoreError, ClientError

    where = endpoint_url or "AWS (boto3's default endpoint)"
    try:
        client.head_bucket(Bucket=location.bucket)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code")
        if code in ("404", "NoSuchBucket", "NotFound"):
            raise MirrorError(
                f"bucket {location.bucket!r} does not exist at {where}: create it "
                f"(aws s3 mb s3://{location.bucket}) or fix the s3:// URL"
            ) from None
        if code in ("403", "AccessDenied", "Forbidden"):
            raise MirrorError(
                f"no access to bucket {location.bucket!r} at {where}: check the credentials boto3 "
                f"finds ({credential_settings})"
            ) from None
        raise _failure(f"cannot open bucket {location.bucket!r} at {where}: {exc}", exc) from None
    except BotoCoreError as exc:
        raise MirrorError(f"cannot reach S3 at {where}: {exc}; check {endpoint_setting} and the network") from None


def upload_object(client, location: S3Location, name: str, path: Path, sha256: str | None = None) -> bool:
    """Upload `path` as `<prefix>/<name>` unless an object of the same size and sha256 is there.
    Returns whether it was sent."""
    key = location.key(name)

    def send() -> bool:
        if sha256 is not None and _same_object(client, location.bucket, key, path.stat().st_size, sha256):
            return False
        extra = {"Metadata": {SHA_META: sha256}} if sha256 else {}
        client.upload_file(str(path), location.bucket, key, Config=_transfer(), ExtraArgs=extra)
        return True

    return _s3(send, f"upload {path} to s3://{location.bucket}/{key}")


def list_objects(client, location: S3Location, folder: str) -> dict[str, int]:
    """{name relative to `<prefix>/<folder>/`: size} for every object below it."""
    base = location.key(folder) + "/"

    def pages() -> dict[str, int]:
        return {
            item["Key"][len(base) :]: item["Size"]
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=location.bucket, Prefix=base)
            for item in page.get("Contents", [])
        }

    return _s3(pages, f"list s3://{location.bucket}/{base}")


def download_object(client, location: S3Location, name: str, target: Path) -> bool:
    """`<prefix>/<name>` to `target` (atomically); False when there is no such object."""

    def fetch() -> bool:
        with atomic_path(target) as tmp:
            client.download_file(location.bucket, location.key(name), str(tmp), Config=_transfer())
        return True

    return _s3(fetch, f"download s3://{location.bucket}/{location.key(name)}", if_missing=False)


def delete_objects(client, location: S3Location, names: list[str]) -> None:
    for start in range(0, len(names), 1000):  # DeleteObjects takes at most 1000 keys
        batch = [{"Key": location.key(name)} for name in names[start : start + 1000]]
        _s3(
            lambda batch=batch: client.delete_objects(Bucket=location.bucket, Delete={"Objects": batch, "Quiet": True}),  # type: ignore[misc]
            f"delete partial objects under s3://{location.bucket}/{location.prefix}",
        )


class ConditionalWritesUnsupported(MirrorError):
    """The endpoint ignores or rejects S3's If-None-Match / If-Match conditions."""


def put_if(client, location: S3Location, name: str, body: bytes, etag: str | None) -> str | None:
    """Write `<prefix>/<name>` only if it does not exist (`etag` None) or still has `etag`
    (compare-and-swap). Returns the new ETag, or None when the condition did not hold."""
    from botocore.exceptions import BotoCoreError, ClientError

    condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
    try:
        return client.put_object(Bucket=location.bucket, Key=location.key(name), Body=body, **condition)["ETag"]
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code")
        if code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
            return None
        if code in ("NotImplemented", "501"):
            raise ConditionalWritesUnsupported(f"s3://{location.bucket} does not support conditional writes") from None
        raise _failure(f"cannot write s3://{location.bucket}/{location.key(name)}: {exc}", exc) from None
    except BotoCoreError as exc:
        raise _failure(f"cannot write s3://{location.bucket}/{location.key(name)}: {exc}", exc) from None


def etag_of(client, location: S3Location, name: str) -> str | None:
    """The object's ETag, or None when there is no such object."""
    return _s3(
        lambda: client.head_object(Bucket=location.bucket, Key=location.key(name))["ETag"],
        f"read s3://{location.bucket}/{location.key(name)}",
        if_missing=None,
    )


def delete_if(client, location: S3Location, name: str, etag: str) -> None:
    """Delete `<prefix>/<name>` if it still has `etag` (a lease that was taken over stays)."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        client.delete_object(Bucket=location.bucket, Key=location.key(name), IfMatch=etag)
    except (BotoCoreError, ClientError):
        pass  # taken over, or gone: either way no longer ours


# --- an image collection in a bucket: the dataset stage's `s3://` source ------------------------------------------


@functools.lru_cache(maxsize=1)
def collection_client():
    """One client per process for reading a collection (thread-safe; boto3 finds the endpoint in
    AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL and the credentials in its usual chain)."""
    return s3_client()


@dataclass(frozen=True)
class ListedObject:
    key: str  # relative to the listed prefix, '/'-separated
    size: int
    modified_ns: int
    etag: str


def list_collection(url: str) -> list[ListedObject]:
    """Every object under the `s3://bucket/prefix` URL: one paginated ListObjectsV2 walk, with the
    size and ETag the content-hash memo keys each object by."""
    location = S3Location.parse(url)
    client = collection_client()
    check_bucket(client, location, client.meta.endpoint_url, "AWS_ENDPOINT_URL_S3", "AWS_PROFILE, AWS_ACCESS_KEY_ID")
    base = location.prefix + "/" if location.prefix else ""

    def pages() -> list[ListedObject]:
        from lookalike.core.progress import progress

        listed: list[ListedObject] = []
        with progress(None, "dataset: listing", unit="object") as bar:  # up to 1,000 keys a page
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=location.bucket, Prefix=base):
                before = len(listed)
                listed += [
                    ListedObject(
                        item["Key"][len(base) :],
                        item["Size"],
                        int(item["LastModified"].timestamp() * 1e9),
                        item["ETag"],
                    )
                    for item in page.get("Contents", [])
                    if not item["Key"].endswith("/")  # a console-made "folder" marker
                ]
                bar.update(len(listed) - before)
        return listed

    return _s3(pages, f"list s3://{location.bucket}/{base}")


def read_url(url: str) -> bytes:
    """The bytes of the object at an `s3://bucket/key` URL.

    Raises:
        FileNotFoundError: there is no such object (it vanished after it was listed).
        MirrorError: any other failure, in one line.
    """
    location = S3Location.parse(url)
    client = collection_client()
    body = _s3(lambda: client.get_object(Bucket=location.bucket, Key=location.prefix), f"read {url}", if_missing=None)
    if body is None:
        raise FileNotFoundError(url)
    return body["Body"].read()


def collection_has_objects(url: str) -> bool:
    """Whether anything lies under the `s3://bucket/prefix` URL (one request for one key)."""
    location = S3Location.parse(url)
    client = collection_client()
    check_bucket(client, location, client.meta.endpoint_url, "AWS_ENDPOINT_URL_S3", "AWS_PROFILE, AWS_ACCESS_KEY_ID")
    base = location.prefix + "/" if location.prefix else ""
    page = _s3(lambda: client.list_objects_v2(Bucket=location.bucket, Prefix=base, MaxKeys=1), f"list {url}")
    return bool(page.get("KeyCount"))


def check_buckets(urls: list[str]) -> None:
    """`check_bucket` once for each bucket the `s3://` URLs name."""
    client = collection_client()
    for bucket in sorted({S3Location.parse(url).bucket for url in urls}):
        check_bucket(
            client,
            S3Location(bucket, ""),
            client.meta.endpoint_url,
            "AWS_ENDPOINT_URL_S3",
            "AWS_PROFILE, AWS_ACCESS_KEY_ID",
        )


def stat_urls(urls: list[str], workers: int = 10) -> dict[str, ListedObject | None]:
    """Size, time and ETag of the object at each `s3://bucket/key` URL (None: no such object), one HEAD
    request each, `workers` at a time; every bucket named is checked first, so a missing, forbidden or
    unreachable one is one MirrorError instead of a failure per object."""
    from concurrent.futures import ThreadPoolExecutor

    client = collection_client()
    located = [S3Location.parse(url) for url in urls]
    check_buckets(urls)

    def head(location: S3Location) -> ListedObject | None:
        url = f"s3://{location.bucket}/{location.prefix}"
        found = _s3(
            lambda: client.head_object(Bucket=location.bucket, Key=location.prefix), f"read {url}", if_missing=None
        )
        if found is None:
            return None
        modified = int(found["LastModified"].timestamp() * 1e9)
        return ListedObject(location.prefix, found["ContentLength"], modified, found["ETag"])

    # 10: botocore's connection pool (max_pool_connections) holds 10; more threads would only queue for it
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(urls)))) as pool:
        return dict(zip(urls, pool.map(head, located)))
