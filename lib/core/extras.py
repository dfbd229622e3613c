"""Optional parts of lookalike, installed as extras (pyproject's `[project.optional-dependencies]`):
the one place that turns a missing one into a line naming the extra that brings it."""

from __future__ import annotations

import importlib
from types import ModuleType

from lookalike.core.errors import LookalikeError

# The import name of each optional package our code imports, and the extra that installs it.
EXTRA_OF = {
    "gradio": "serve",
    "uvicorn": "serve",
    "prefect_dask": "dask",
    "s3fs": "s3",
    "timm": "pretrained",
    "transformers": "pretrained",
    "safetensors": "pretrained",
}


class MissingExtra(LookalikeError):
    """An optional package is not installed; the message names the extra and the install command."""


def import_extra(module: str, needed_by: str) -> ModuleType:
    """`import module`, or a MissingExtra saying `needed_by needs the <extra> extra: pip install ...`."""
    extra = EXTRA_OF[module]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if exc.name is not None and exc.name.split(".")[0] != module:
            raise  # the extra is there but one of its own dependencies is broken: not ours to rename
        raise MissingExtra(
            f"{needed_by} needs the {extra} extra ({module} is not installed): pip install 'lookalike[{extra}]'"
        ) from None
