"""The served application: the HTTP API under /api and the Gradio UI at /."""

from __future__ import annotations

from pathlib import Path

from lookalike.app.api import create_api
from lookalike.app.ui import mount_ui
from lookalike.serving.holder import IndexHolder


def create_app(root: Path | str, ref: str = "production", poll_seconds: float = 2.0, endpoint_url: str | None = None):
    """FastAPI app serving `ref` (an alias, followed when it moves, an index stage key, or an
    s3://bucket/prefix/index/<key> mirror, fetched into the root's cache first)."""
    holder = IndexHolder(root, ref, poll_seconds=poll_seconds, endpoint_url=endpoint_url)
    api = create_api(holder)
    api.state.holder = holder
    return mount_ui(api, holder)
