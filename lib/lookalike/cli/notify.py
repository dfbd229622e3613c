"""`lookalike notify`: tell a Prefect server that new images arrived."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from lookalike.cli.common import fail
from lookalike.cli.options import JsonOut, Split


def notify(
    dataset: Annotated[
        str,
        typer.Option(help="Where the new images are, as the worker reads it: a folder, a .parquet file or a hub name."),
    ],
    split: Split = None,
    json_out: JsonOut = False,
) -> None:
    """Announce new images to the Prefect server (PREFECT_API_URL): the `reindex` deployment's trigger indexes them."""
    from lookalike.core.errors import LookalikeError
    from lookalike.core.settings import DatasetSettings
    from lookalike.flows.notify import send_images_added

    try:
        event = send_images_added(dataset, split or DatasetSettings.model_fields["split"].default)
    except LookalikeError as exc:
        fail(str(exc))
    if json_out:
        sys.stdout.write(json.dumps({"event": event.event, "id": str(event.id), **event.payload}) + "\n")
    else:
        print(f"sent {event.event} for {event.payload['dataset']} (split {event.payload['split']}), id {event.id}")
