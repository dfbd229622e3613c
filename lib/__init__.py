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

try:
    __version__ = version("lookalike")
except PackageNotFoundError:  # a checkout that was never installed
    __version__ = "0+unknown"
