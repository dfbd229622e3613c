"""The `tracking` (W&B) and `mirror` (S3) sections: where a run is reported and copied."""

from __future__ import annotations

from typing import Literal, cast

from pydantic import (
    Field,
    NonNegativeInt,
    field_validator,
)

from lookalike.core.graph import STAGE_NAMES, StageName
from lookalike.core.settings.base import Section


class TrackingSettings(Section):
    """Weights & Biases. The API key is read by wandb from its usual places, never from here."""

    mode: Literal["auto", "online", "offline", "disabled"] = Field(
        "auto", description="auto = online when a W&B API key is configured, else offline."
    )
    project: str = Field("lookalike", description="W&B project.")
    entity: str | None = Field(None, description="W&B entity (team or user).")
    api_key_secret: str | None = Field(
        None, description="Name of a Prefect Secret block holding the W&B API key (else WANDB_API_KEY / netrc)."
    )


class MirrorSettings(Section):
    """Optional S3 mirror of finished stage folders. Credentials come from boto3's chain."""

    url: str | None = Field(None, description="s3://bucket/prefix to mirror to; empty = off.")
    endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO, moto, ...).")
    stages: tuple[StageName, ...] = Field(
        cast(tuple[StageName, ...], STAGE_NAMES),  # every stage name is a StageName
        description="Which stage folders to mirror; the default is the whole chain a query on another machine needs.",
    )
    retries: NonNegativeInt = Field(
        3, description="Task retries (exponential backoff) before the mirror is reported failed."
    )
    credentials_secret: str | None = Field(
        None,
        description="Name of a Prefect Secret block holding JSON {aws_access_key_id, aws_secret_access_key"
        "[, aws_session_token]} (else boto3's own chain: environment, ~/.aws, instance role).",
    )

    @field_validator("url")
    @classmethod
    def _s3_url(cls, value: str | None) -> str | None:
        if value and not value.startswith("s3://"):
            raise ValueError("must look like s3://bucket/prefix")
        return value or None
