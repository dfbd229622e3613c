"""The S3 mirror of finished stage folders and aliases, and loading an index back by reference
(`s3://bucket/prefix/index/<key>` or `.../aliases/<name>`), every file verified against its manifest.
The object calls are `lookalike.artifacts.s3`'s.
"""

from __future__ import annotations

from pathlib import Path

from lookalike.artifacts.aliases import ALIASES, Alias, alias_path
from lookalike.artifacts.s3 import (
    MirrorError,
    S3Location,
    fetch_stage,
    read_object,
    s3_client,
    upload_file,
    upload_stage,
)
from lookalike.core.graph import CHAIN, walk_chain
from lookalike.core.manifest import IntegrityError, Manifest, atomic_write_bytes
from lookalike.core.settings import MirrorSettings, working_copy


def mirror_stage(section: MirrorSettings, root: Path, manifest: Manifest, client=None) -> dict:
    """Upload one finished stage folder to `<url>/<stage>/<key>/` (manifest last).

    Returns:
        {"url": ..., "uploaded": n, "skipped": n, "bytes": n}
    """
    if not section.url:
        raise MirrorError("no mirror configured (set --mirror s3://bucket/prefix)")
    location = S3Location.parse(section.url)
    return upload_stage(client or s3_client(section.endpoint_url), location, root, manifest)


def mirror_aliases(section: MirrorSettings, root: Path, names: list[str], client=None) -> list[str]:
    """Upload `aliases/<name>.json` after the stage folders it names, so another machine can load
    `s3://bucket/prefix/aliases/<name>`. Returns the alias URLs."""
    location = S3Location.parse(section.url)
    client = client or s3_client(section.endpoint_url)
    return [
        upload_file(client, location, f"{ALIASES}/{name}.json", alias_path(root, name), "application/json")
        for name in names
    ]


def parse_ref_url(url: str) -> tuple[S3Location, str, str]:
    """`s3://bucket/prefix/index/<key>` or `s3://bucket/prefix/aliases/<name>` ->
    (the mirror's location, "index" or "aliases", the key or alias name)."""
    location = S3Location.parse(url)
    for kind in ("index", ALIASES):
        head, sep, name = location.prefix.rpartition(f"{kind}/")
        if sep and name and "/" not in name and (not head or head.endswith("/")):
            return S3Location(location.bucket, head.rstrip("/")), kind, name.removesuffix(".json")
    raise MirrorError(
        f"{url!r} names no mirrored index: use s3://bucket/prefix/index/<index key> "
        "or s3://bucket/prefix/aliases/<alias>"
    )


def cache_root_for(cache: Path, location: S3Location) -> Path:
    """A local artifacts root that mirrors one S3 prefix (same <stage>/<key>/ layout)."""
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
    index_key = alias.stages.get("index", "") if alias else name
    chain = walk_chain(lambda stage, key: fetch_stage(client, location, stage, key, root), "index", index_key, root)
    if alias is None:
        return root, name
    if any(alias.stages.get(stage) != chain[stage].key for stage in CHAIN):
        raise IntegrityError(f"{url} names stage keys that are not one chain: {alias.stages}")
    if "evaluation" in alias.stages:  # its metrics, when it was mirrored too
        try:
            fetch_stage(client, location, "evaluation", alias.stages["evaluation"], root)
        except MirrorError:
            pass
    atomic_write_bytes(alias_path(root, name), alias.model_dump_json(indent=2).encode())
    return root, name


def _fetch_alias(client, location: S3Location, name: str) -> Alias:
    where = f"s3://{location.bucket}/{location.key(ALIASES, name + '.json')}"
    alias_path(".", name)  # validates the name
    raw = read_object(client, location, f"{ALIASES}/{name}.json", f"read {where}")
    if raw is None:
        raise MirrorError(f"{where} does not exist: runs mirror their aliases when --mirror is set")
    try:
        return Alias.model_validate_json(raw)
    except ValueError:
        raise IntegrityError(f"{where} is not a lookalike alias file") from None
