"""S3 mirror of finished stage folders: the only module that imports boto3.

Files go up first and `manifest.json` last, so a reader that sees the manifest on S3
sees a complete folder. Objects already present with the same size and sha256
(recorded in object metadata) are skipped, so a re-run uploads only what is missing.
Credentials come from boto3's normal chain; the endpoint from the `endpoint_url`
setting or boto3's own AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL variables.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from lib.config import MirrorSettings
from lib.errors import LookalikeError
from lib.manifest import MANIFEST, Manifest, stage_dir

SHA_META = "sha256"


class MirrorError(LookalikeError, RuntimeError):
    """The mirror could not be written; the local result is unaffected."""


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


def mirror_stage(section: MirrorSettings, root: Path, manifest: Manifest, client=None) -> dict:
    """Upload one finished stage folder to `<url>/<stage>/<key>/`.

    Returns:
        {"url": ..., "uploaded": n, "skipped": n, "bytes": n}
    """
    from boto3.exceptions import Boto3Error
    from boto3.s3.transfer import TransferConfig
    from botocore.exceptions import BotoCoreError, ClientError

    if not section.url:
        raise MirrorError("no mirror configured (set --mirror s3://bucket/prefix)")
    location = S3Location.parse(section.url)
    client = client or s3_client(section.endpoint_url)
    folder = stage_dir(root, manifest.stage, manifest.key)
    transfer = TransferConfig(multipart_threshold=64 * 1024 * 1024, max_concurrency=4)
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
        raise MirrorError(f"mirror to {section.url} failed: {exc}") from None
    return {
        "url": f"s3://{location.bucket}/{location.key(manifest.stage, manifest.key)}/",
        "uploaded": uploaded, "skipped": skipped, "bytes": sent,
    }


def _same_object(client, bucket: str, key: str, size: int, sha256: str) -> bool:
    from botocore.exceptions import ClientError

    try:
        head = client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    return head.get("ContentLength") == size and head.get("Metadata", {}).get(SHA_META) == sha256
