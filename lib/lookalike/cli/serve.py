"""`lookalike serve`: the retrieval app (Gradio UI + HTTP API) on the production index."""

from __future__ import annotations

from typing import Annotated

import typer

from lookalike.cli.app import err
from lookalike.cli.common import fail, open_root, run_settings
from lookalike.cli.options import REFERENCES, Root, Sets


def serve(
    index: Annotated[
        str,
        typer.Option(
            "--index",
            help=f"What to serve: {REFERENCES}. An alias is followed when it moves.",
        ),
    ] = "production",
    host: Annotated[str, typer.Option(help="Interface to bind; 127.0.0.1 keeps it on this machine.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port.")] = 7860,
    artifacts_root: Root = None,
    poll_seconds: Annotated[float, typer.Option(min=0.1, help="How often to check whether the alias moved.")] = 2.0,
    set_: Sets = None,
) -> None:
    """Serve the retrieval app: Gradio UI at / and the HTTP API under /api."""
    settings, _ = run_settings(None, None, None, None, None, artifacts_root, None, set_)
    _check_can_bind(host, port)  # before the index loads, not after
    from lookalike.core.errors import LookalikeError
    from lookalike.core.extras import check_extra

    try:  # an install without the serve extra says so before anything loads
        check_extra("uvicorn", "lookalike serve")
        check_extra("gradio", "lookalike serve (its UI)")
    except LookalikeError as exc:
        fail(str(exc))
    open_root(settings)
    from lookalike.app.server import create_app

    try:
        application = create_app(
            settings.artifacts_root, index, poll_seconds=poll_seconds, endpoint_url=settings.mirror.endpoint_url
        )
    except LookalikeError as exc:
        fail(str(exc))
    import uvicorn

    info = application.state.holder.info()
    via = f"alias {info['alias']} → " if info["alias"] else ""
    err.print(
        f"serving {via}index {info['index']} ({info['ntotal']} images) from {application.state.holder.root}\n"
        f"  UI http://{host}:{port}/   API http://{host}:{port}/api   docs http://{host}:{port}/docs   (Ctrl-C stops)",
        soft_wrap=True,
    )
    uvicorn.run(application, host=host, port=port, log_level="warning")


def _check_can_bind(host: str, port: int) -> None:
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        fail(f"--host {host!r} does not resolve ({exc.strerror}); give an interface address such as 127.0.0.1")
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as exc:
            fail(f"cannot listen on {host}:{port} ({exc.strerror}); pick another with --port, or stop what uses it")
