"""S3 mirror of finished stage folders, and the object calls a shared `s3://` artifacts root
(lib.shared_root) is made of: the only module that imports boto3.

Files go up first and `manifest.json` last, so a reader that sees the manifest on S3
sees a complete folder. Objects already present with the same size and sha256
(recorded in object metadata) are skipped, so a re-run uploads only what is missing.
Credentials come from boto3's normal chain; the endpoint from the `endpoint_url`
setting or boto3's own AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL variables.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable
from pathlib import Path
from urllib.parse import urlparse

from lib.aliases import ALIASES, Alias, alias_path
from lib.config import MirrorSettings
from lib.errors import LookalikeError
from lib.manifest import (MANIFEST, IntegrityError, Manifest, atomic_path, atomic_write_bytes, complete_manifest,
                          install_stage, stage_dir)

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
    def parse(cls, url: str) -> "S3Location":
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

    return TransferConfig(multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_THRESHOLD,
                          max_concurrency=4)


def mirror_stage(section: MirrorSettings, root: Path, manifest: Manifest, client=None) -> dict:
    """Upload one finished stage folder to `<url>/<stage>/<key>/`.

    Returns:
        {"url": ..., "uploaded": n, "skipped": n, "bytes": n}
    """
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    if not section.url:
        raise MirrorError("no mirror configured (set --mirror s3://bucket/prefix)")
    location = S3Location.parse(section.url)
    client = client or s3_client(section.endpoint_url)
    folder = stage_dir(root, manifest.stage, manifest.key)
    transfer = _transfer()
    uploaded = skipped = sent = 0
    try:
        for entry in manifest.files:
            key = location.key(manifest.stage, manifest.key, entry.path)
            if _same_object(client, location.bucket, key, entry.bytes, entry.sha256):
                skipped += 1
                continue
            client.upload_file(str(folder / entry.path), location.bucket, key, Config=transfer,
                               ExtraArgs={"Metadata": {SHA_META: entry.sha256}})
            uploaded += 1
            sent += entry.bytes
        client.upload_file(str(folder / MANIFEST), location.bucket, location.key(manifest.stage, manifest.key, MANIFEST),
                           ExtraArgs={"ContentType": "application/json"})
    except (Boto3Error, BotoCoreError, ClientError) as exc:
        raise _failure(f"mirror to {section.url} failed: {exc}", exc) from None
    return {
        "url": f"s3://{location.bucket}/{location.key(manifest.stage, manifest.key)}/",
        "uploaded": uploaded, "skipped": skipped, "bytes": sent,
    }


def mirror_aliases(section: MirrorSettings, root: Path, names: list[str], client=None) -> list[str]:
    """Upload `aliases/<name>.json` after the stage folders it names, so another machine can load
    `s3://bucket/prefix/aliases/<name>`. Returns the alias URLs."""
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    location = S3Location.parse(section.url)
    client = client or s3_client(section.endpoint_url)
    urls = []
    try:
        for name in names:
            key = location.key(ALIASES, f"{name}.json")
            client.upload_file(str(alias_path(root, name)), location.bucket, key,
                               ExtraArgs={"ContentType": "application/json"})
            urls.append(f"s3://{location.bucket}/{key}")
    except (Boto3Error, BotoCoreError, ClientError) as exc:
        raise MirrorError(f"mirroring aliases to {section.url} failed: {exc}") from None
    return urls


def _same_object(client, bucket: str, key: str, size: int, sha256: str) -> bool:
    from botocore.exceptions import ClientError

    try:
        head = client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if _missing(exc):
            return False
        raise
    return head.get("ContentLength") == size and head.get("Metadata", {}).get(SHA_META) == sha256


# --- reading a mirror back: load by reference -------------------------------------------------

CHAIN_STAGES = ("index", "embeddings", "encoder", "dataset")  # the order each one names the next


def parse_ref_url(url: str) -> tuple[S3Location, str, str]:
    """`s3://bucket/prefix/index/<key>` or `s3://bucket/prefix/aliases/<name>` ->
    (the mirror's location, "index" or "aliases", the key or alias name)."""
    location = S3Location.parse(url)
    for kind in ("index", ALIASES):
        head, sep, name = location.prefix.rpartition(f"{kind}/")
        if sep and name and "/" not in name and (not head or head.endswith("/")):
            return S3Location(location.bucket, head.rstrip("/")), kind, name.removesuffix(".json")
    raise MirrorError(f"{url!r} names no mirrored index: use s3://bucket/prefix/index/<index key> "
                      "or s3://bucket/prefix/aliases/<alias>")


def cache_root_for(cache: Path, location: S3Location) -> Path:
    """A local artifacts root that mirrors one S3 prefix (same <stage>/<key>/ layout)."""
    from lib.shared_root import working_copy  # the same copy a shared s3:// root works in

    return working_copy(f"s3://{location.bucket}/{location.prefix}", cache)


def fetch_index_chain(url: str, cache: Path, endpoint_url: str | None = None, client=None) -> tuple[Path, str]:
    """Download the index (or the alias) at `url` and everything it was built from (embeddings,
    encoder, dataset) into a local cache, each file checked against its manifest's sha256.

    Returns:
        (local artifacts root holding the chain, the index key or the alias name, as a
        reference under that root)
    """
    location, kind, name = parse_ref_url(url)
    root = cache_root_for(cache, location)
    client = client or s3_client(endpoint_url)
    alias = _fetch_alias(client, location, name) if kind == ALIASES else None
    wanted = {"index": alias.stages.get("index", "") if alias else name}
    for stage in CHAIN_STAGES:
        manifest = fetch_stage(client, location, stage, wanted[stage], root)
        wanted.update(manifest.inputs)
    if alias is None:
        return root, name
    if any(alias.stages.get(stage) != wanted[stage] for stage in CHAIN_STAGES):
        raise IntegrityError(f"{url} names stage keys that are not one chain: {alias.stages}")
    if "evaluation" in alias.stages:  # its metrics, when it was mirrored too
        try:
            fetch_stage(client, location, "evaluation", alias.stages["evaluation"], root)
        except MirrorError:
            pass
    atomic_write_bytes(alias_path(root, name), alias.model_dump_json(indent=2).encode())
    return root, name


def _fetch_alias(client, location: S3Location, name: str) -> Alias:
    from botocore.exceptions import BotoCoreError, ClientError

    where = f"s3://{location.bucket}/{location.key(ALIASES, name + '.json')}"
    alias_path(".", name)  # validates the name
    try:
        raw = client.get_object(Bucket=location.bucket, Key=location.key(ALIASES, f"{name}.json"))["Body"].read()
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            raise MirrorError(f"{where} does not exist: runs mirror their aliases when --mirror is set") from None
        raise MirrorError(f"cannot read {where}: {exc}") from None
    except BotoCoreError as exc:
        raise MirrorError(f"cannot read {where}: {exc}") from None
    try:
        return Alias.model_validate_json(raw)
    except ValueError:
        raise IntegrityError(f"{where} is not a lookalike alias file") from None


def fetch_stage(client, location: S3Location, stage: str, key: str, root: Path) -> Manifest:
    """One mirrored stage folder into `root/<stage>/<key>/`: files verified, manifest last.

    Files already in the cache with the right sha256 are not downloaded again; a file whose
    bytes do not match the mirrored manifest is refused and never left in the cache.
    """
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    manifest = find_stage(client, location, stage, key, root)
    if manifest is None:
        raise MirrorError(
            f"s3://{location.bucket}/{location.key(stage, key)}/ is not in the mirror (no {MANIFEST}); mirror it with "
            f"--set 'mirror.stages=[\"dataset\", \"encoder\", \"embeddings\", \"index\"]'"
        )
    return manifest


def find_stage(client, location: S3Location, stage: str, key: str, root: Path) -> Manifest | None:
    """`fetch_stage`, but None when the bucket holds no manifest for the stage key."""
    cached = complete_manifest(root, stage, key)
    if cached is not None:
        return cached
    where = f"s3://{location.bucket}/{location.key(stage, key)}/"
    raw = _s3(lambda: client.get_object(Bucket=location.bucket, Key=location.key(stage, key, MANIFEST))["Body"].read(),
              f"read {where}{MANIFEST}", if_missing=None)
    if raw is None:
        return None
    return install_stage(root, raw, lambda name, tmp: _download(client, location, stage, key, name, tmp, where),
                         where, expect=(stage, key))


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
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        client.download_file(location.bucket, location.key(stage, key, name), str(target), Config=_transfer())
    except (Boto3Error, BotoCoreError, ClientError) as exc:
        raise _failure(f"cannot download {where}{name}: {exc}", exc) from None


# --- a shared artifacts root: single objects, listed and synced by lib.shared_root --------------

def check_bucket(client, location: S3Location, endpoint_url: str | None) -> None:
    """One clear error when the bucket is missing, forbidden or its endpoint unreachable."""
    from botocore.exceptions import BotoCoreError, ClientError

    where = endpoint_url or "AWS (boto3's default endpoint)"
    try:
        client.head_bucket(Bucket=location.bucket)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code")
        if code in ("404", "NoSuchBucket", "NotFound"):
            raise MirrorError(f"bucket {location.bucket!r} does not exist at {where}: create it "
                              f"(aws s3 mb s3://{location.bucket}) or fix the s3:// URL") from None
        if code in ("403", "AccessDenied", "Forbidden"):
            raise MirrorError(f"no access to bucket {location.bucket!r} at {where}: check the credentials boto3 "
                              "finds (AWS_PROFILE, AWS_ACCESS_KEY_ID, mirror.credentials_secret)") from None
        raise _failure(f"cannot open bucket {location.bucket!r} at {where}: {exc}", exc) from None
    except BotoCoreError as exc:
        raise MirrorError(f"cannot reach S3 at {where}: {exc}; check mirror.endpoint_url (or "
                          "AWS_ENDPOINT_URL_S3) and the network") from None


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
        return {item["Key"][len(base):]: item["Size"]
                for page in client.get_paginator("list_objects_v2").paginate(Bucket=location.bucket, Prefix=base)
                for item in page.get("Contents", [])}

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
        batch = [{"Key": location.key(name)} for name in names[start:start + 1000]]
        _s3(lambda: client.delete_objects(Bucket=location.bucket, Delete={"Objects": batch, "Quiet": True}),
            f"delete partial objects under s3://{location.bucket}/{location.prefix}")


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
    return _s3(lambda: client.head_object(Bucket=location.bucket, Key=location.key(name))["ETag"],
               f"read s3://{location.bucket}/{location.key(name)}", if_missing=None)


def delete_if(client, location: S3Location, name: str, etag: str) -> None:
    """Delete `<prefix>/<name>` if it still has `etag` (a lease that was taken over stays)."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        client.delete_object(Bucket=location.bucket, Key=location.key(name), IfMatch=etag)
    except (BotoCoreError, ClientError):
        pass  # taken over, or gone: either way no longer ours
