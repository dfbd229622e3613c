"""Optional parts of lookalike, installed as extras (pyproject's `[project.optional-dependencies]`):
the one place that turns a missing one into a line naming the extra that brings it."""

from __future__ import annotations

import importlib
import importlib.util
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


def check_extra(module: str, needed_by: str) -> None:
    """A MissingExtra, `needed_by needs the <extra> extra: pip install ...`, unless `module` is
    installed; found without importing it, so a command can check before it loads anything."""
    if importlib.util.find_spec(module) is None:
        extra = EXTRA_OF[module]
        raise MissingExtra(
            f"{needed_by} needs the {extra} extra ({module} is not installed): pip install 'lookalike[{extra}]'"
        )


def import_extra(module: str, needed_by: str) -> ModuleType:
    """`import module`, after `check_extra`."""
    check_extra(module, needed_by)
    return importlib.import_module(module)
