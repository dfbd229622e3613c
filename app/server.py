"""The served application: the HTTP API under /api and the Gradio UI at /."""

from __future__ import annotations

from pathlib import Path

from app.api import create_api
from app.ui import mount_ui
from lib.serving import IndexHolder


def create_app(root: Path | str, ref: str = "production", poll_seconds: float = 2.0):
    """FastAPI app serving `ref` (an alias, followed when it moves, or an index stage key)."""
    holder = IndexHolder(root, ref, poll_seconds=poll_seconds)
    api = create_api(holder)
    api.state.holder = holder
    return mount_ui(api, holder)
