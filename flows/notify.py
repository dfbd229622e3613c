"""`lookalike notify`: tell a Prefect server that new images arrived, so its `reindex` deployment runs.

It sends the Prefect event `lookalike.images.added` about the resource `lookalike.dataset.<reference>`,
payload `{"dataset": <reference>, "split": <split>}`. The trigger on the `reindex` deployment in
prefect.yaml expects that event and templates the run's `dataset` and `split` from the payload.
Anything else can send the same event (`prefect event emit`, a webhook, an S3 notification relay).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from lookalike.core.errors import LookalikeError, redact_urls

IMAGES_ADDED = "lookalike.images.added"
# The most a notification may take, connecting and retrying included: the client's own timeouts end a
# refused or unreachable connection, but not a server that accepts it and then never answers.
SEND_TIMEOUT_S = 30.0


def images_added_event(dataset: str, split: str):
    """The event for new images at `dataset`; a path that exists here is sent absolute (the worker
    does not share this shell's working directory), any other reference as it is."""
    from prefect.events import Event

    path = Path(dataset).expanduser()
    reference = str(path.resolve()) if path.exists() else dataset
    return Event(
        event=IMAGES_ADDED,
        resource={"prefect.resource.id": f"lookalike.dataset.{reference}", "prefect.resource.name": reference},
        payload={"dataset": reference, "split": split},
    )


def send_images_added(dataset: str, split: str):
    """Send the event to the configured Prefect server (PREFECT_API_URL, from the environment or the
    Prefect profile) and return it once the server has it. A temporary server, which `lookalike run`
    starts by itself, has no deployments and no triggers, so there must be a configured one."""
    from prefect.events.clients import get_events_client
    from prefect.settings import get_current_settings

    from lookalike.core.settings import named_source

    try:
        named_source(dataset)
    except ValueError as exc:
        raise LookalikeError(f"--dataset {exc}") from None
    api_url = get_current_settings().api.url
    if not api_url:
        raise LookalikeError(
            "no Prefect server to notify: set PREFECT_API_URL to the server that runs the reindex deployment, "
            "e.g. export PREFECT_API_URL=http://127.0.0.1:4200/api (see deployments/README.md)"
        )
    event = images_added_event(dataset, split)

    async def send() -> None:
        async with get_events_client(reconnection_attempts=2) as events:
            await events.emit(event)

    async def send_in_time() -> None:
        try:
            await asyncio.wait_for(send(), SEND_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise TimeoutError(f"no answer within {SEND_TIMEOUT_S:g} s") from None

    # the client warns about a failed connection before raising: the one line below says it instead
    quiet = logging.getLogger("prefect.events.clients")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        asyncio.run(send_in_time())
    except Exception as exc:  # refused, unreachable, a proxy's error page: all mean the same to the user
        raise LookalikeError(  # the URL (and the error, which may quote it) without its password
            redact_urls(
                f"could not reach the Prefect server at {api_url} ({type(exc).__name__}: {exc}); start it "
                "(prefect server start) or correct PREFECT_API_URL"
            )
        ) from None
    finally:
        quiet.setLevel(level)
    return event
