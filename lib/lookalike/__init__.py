"""lookalike: turn an image collection into a versioned, searchable retrieval index.

The package is built in floors, each importing only from the floors below it (tests/test_architecture.py):

    core        errors, manifests, settings, the registry of names, the stage graph (no torch, FAISS, boto3, ...)
    artifacts   where stage folders live and travel: the stage runner, S3, the shared root, aliases, the mirror
    stages      one package per stage (dataset, encoder, embeddings, index, evaluation) and the one inference path
    reporting   the run summary and W&B lineage
    serving     loading an index by reference and answering queries

`lookalike.tasks` and `lookalike.flows` (Prefect), `lookalike.cli` and `lookalike.app` are shells on top.
"""

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from lookalike.core.errors import LookalikeError

if TYPE_CHECKING:  # what editors and type checkers follow; at run time __getattr__ imports it on first use
    from lookalike.api import Index as Index
    from lookalike.api import Neighbour as Neighbour
    from lookalike.api import RunSummary as RunSummary
    from lookalike.api import embed as embed
    from lookalike.api import load as load
    from lookalike.api import run as run

try:
    __version__ = version("lookalike")
except PackageNotFoundError:  # a checkout that was never installed
    __version__ = "0+unknown"

# The Python API (lookalike.api), imported on first use so `import lookalike` stays light.
_API = ("run", "load", "embed", "Index", "Neighbour", "RunSummary")
__all__ = ["LookalikeError", "__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from lookalike import api

        return getattr(api, name)
    raise AttributeError(f"module 'lookalike' has no attribute {name!r}")
