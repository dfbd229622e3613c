"""Task: hand secrets from Prefect Secret blocks to wandb and boto3, never through parameters.

Only block *names* are settings. The values go into this process's environment under the
names wandb (`WANDB_API_KEY`) and boto3 (`AWS_ACCESS_KEY_ID`, ...) already read, so the
libraries' own credential handling stays in charge. A process worker runs every flow run
in its own process, so nothing leaks between runs.
"""

from __future__ import annotations

import os

from prefect import get_run_logger, task
from prefect.blocks.system import Secret
from prefect.cache_policies import NO_CACHE

from lookalike.core.errors import LookalikeError
from lookalike.core.settings import Settings

_AWS_KEYS = {
    "aws_access_key_id": "AWS_ACCESS_KEY_ID",
    "aws_secret_access_key": "AWS_SECRET_ACCESS_KEY",
    "aws_session_token": "AWS_SESSION_TOKEN",
}


class SecretBlockError(LookalikeError, LookupError):
    """A configured Secret block is missing or holds the wrong shape."""


@task(name="secrets", cache_policy=NO_CACHE, persist_result=False)
def load_secret_blocks(settings: Settings) -> list[str]:
    """Export the configured Secret blocks; returns the variable names set (never values)."""
    names = export_secret_blocks(settings)
    if names:
        get_run_logger().info("credentials from Prefect Secret blocks: %s", ", ".join(names))
    return names


def export_secret_blocks(settings: Settings) -> list[str]:
    """Put the configured Secret blocks' values into this process's environment."""
    exported: dict[str, str] = {}
    if settings.tracking.api_key_secret:
        value = _load("tracking.api_key_secret", settings.tracking.api_key_secret)
        if not isinstance(value, str) or not value:
            raise SecretBlockError(
                f"tracking.api_key_secret: Secret block {settings.tracking.api_key_secret!r} "
                "must hold the W&B API key as a plain string"
            )
        exported["WANDB_API_KEY"] = value
    if settings.mirror.credentials_secret:
        name = settings.mirror.credentials_secret
        value = _load("mirror.credentials_secret", name)
        missing = {"aws_access_key_id", "aws_secret_access_key"} - set(value if isinstance(value, dict) else {})
        if missing:
            raise SecretBlockError(
                f"mirror.credentials_secret: Secret block {name!r} must hold JSON with "
                f"{', '.join(sorted(_AWS_KEYS)[:2])} (missing: {', '.join(sorted(missing))})"
            )
        exported.update({env: str(value[key]) for key, env in _AWS_KEYS.items() if value.get(key)})
    os.environ.update(exported)
    return sorted(exported)


def _load(setting: str, name: str):
    try:
        return Secret.load(name).get()
    except ValueError as exc:
        raise SecretBlockError(
            f"{setting}: no Prefect Secret block named {name!r} on this server ({exc}); create it in the UI "
            f"(Blocks → Secret) or with `Secret(value=...).save({name!r})`, or unset the setting"
        ) from None
