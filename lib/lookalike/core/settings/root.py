"""The root `Settings`: every section, the artifacts root, and an s3:// root's local working copy."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pydantic import (
    Field,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from lookalike.core.settings.base import DEFAULT_CACHE, Section
from lookalike.core.settings.dataset import DatasetSettings
from lookalike.core.settings.embeddings import EmbeddingsSettings
from lookalike.core.settings.encoder import EncoderSettings
from lookalike.core.settings.evaluation import EvaluationSettings, PromotionSettings
from lookalike.core.settings.index import IndexSettings
from lookalike.core.settings.outputs import MirrorSettings, TrackingSettings


class Settings(BaseSettings):
    """The root: everything a run needs, one section per stage."""

    model_config = SettingsConfigDict(
        env_prefix="LOOKALIKE_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="forbid",
        frozen=True,
        allow_inf_nan=False,  # as in every Section
    )

    artifacts_root: Path = Field(
        Path("artifacts"),
        description="Where every stage folder goes: a folder, or s3://bucket/prefix to share "
        "stage folders (and Prefect's cached results) between machines, each working in a copy under "
        "artifacts_cache.",
    )
    artifacts_store: str | None = Field(
        None,
        description="Set from an s3:// artifacts_root (not by hand): the bucket every stage folder is shared "
        "through; artifacts_root is then this machine's copy of it.",
    )
    artifacts_cache: str = Field(
        DEFAULT_CACHE,
        description="Where each machine keeps its copy of an s3:// artifacts_root "
        "(~ is the home of the machine that opens it).",
    )
    artifacts_lease_seconds: float = Field(
        60.0,
        ge=1.0,
        description="With an s3:// artifacts_root: how long a machine that stopped renewing its lease "
        "on a stage it was building (killed, cut off) keeps it; a retry elsewhere waits this long after a kill.",
    )
    dataset: DatasetSettings = DatasetSettings()
    encoder: EncoderSettings = EncoderSettings()
    embeddings: EmbeddingsSettings = EmbeddingsSettings()
    index: IndexSettings = IndexSettings()
    evaluation: EvaluationSettings = EvaluationSettings()
    promotion: PromotionSettings = PromotionSettings()
    tracking: TrackingSettings = TrackingSettings()
    mirror: MirrorSettings = MirrorSettings()

    @model_validator(mode="before")
    @classmethod
    def _shared_root(cls, data: Any) -> Any:
        """`artifacts_root=s3://bucket/prefix` -> artifacts_store = that URL and artifacts_root
        = this machine's copy of it (`working_copy`)."""
        if not isinstance(data, dict):
            return data
        root, store = data.get("artifacts_root"), data.get("artifacts_store")
        url = url_of(root)
        if store and url and store.rstrip("/") != url.rstrip("/"):
            raise ValueError(f"artifacts_store {store!r} and artifacts_root {url!r} differ: set artifacts_root only")
        url = url or store
        if not url:
            return data
        if not url.startswith("s3://") or len(url) <= len("s3://") or url[len("s3://")] == "/":
            raise ValueError(f"artifacts_root {url!r}: a shared root must look like s3://bucket/prefix")
        copy = working_copy(url, data.get("artifacts_cache") or cls.model_fields["artifacts_cache"].default)
        if root and not url_of(root) and Path(root) != copy:
            raise ValueError(
                f"artifacts_store is set from artifacts_root=s3://...; also setting artifacts_root={root} "
                "is ambiguous: set artifacts_root to the s3:// URL only"
            )
        return {**data, "artifacts_root": copy, "artifacts_store": url.rstrip("/")}

    @field_validator("artifacts_root")
    @classmethod
    def _root_is_a_folder(cls, value: Path) -> Path:
        """A root that is a file (or lies below one) would fail only once a stage writes, as a
        crash that a re-run repeats; it is refused here, before anything runs."""
        for path in (value.expanduser(), *value.expanduser().parents):
            if path.exists() or path.is_symlink():
                if not path.is_dir():
                    raise ValueError(
                        f"{path} is a file, not a folder: point --artifacts-root (LOOKALIKE_ARTIFACTS_ROOT) "
                        "at a folder, which is created if missing"
                    )
                break
        return value


# The settings tree's sections (encoder, index, ...), as opposed to its top-level fields.
SECTIONS = frozenset(
    name
    for name, field in Settings.model_fields.items()
    if isinstance(field.annotation, type) and issubclass(field.annotation, Section)
)


def working_copy(url: str, cache: str | Path = DEFAULT_CACHE) -> Path:
    """The local root that mirrors a shared `url`: `<cache>/s3/<bucket>/<prefix>`; the one place
    a machine's copy of a bucket (a shared root, an S3 mirror read back) is worked out."""
    parsed = urlparse(url)
    return Path(cache).expanduser() / "s3" / parsed.netloc / (parsed.path.strip("/") or "_")


def url_of(root: Any) -> str | None:
    return str(root) if isinstance(root, str) and root.startswith("s3://") else None
