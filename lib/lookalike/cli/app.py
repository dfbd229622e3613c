"""The `lookalike` Typer app, its console for errors and its global options (--version); each command
registers on it from its own module (`lookalike.cli.main` imports them in help order)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Turn an image collection into a searchable retrieval index, then query it.",
)
err = Console(stderr=True)


def _print_version(asked: bool) -> None:
    """`lookalike --version`: this package's version, then the versions of the parts that decide
    results (read from the installed metadata: nothing heavy is imported)."""
    if not asked:
        return
    from importlib.metadata import PackageNotFoundError, version

    from lookalike import __version__

    def installed(*distributions: str) -> str:
        for name in distributions:
            try:
                return version(name)
            except PackageNotFoundError:
                continue
        return "not installed"

    parts = {"torch": ("torch",), "prefect": ("prefect",), "faiss": ("faiss-cpu", "faiss-gpu", "faiss")}
    sys.stdout.write(f"lookalike {__version__}\n")
    sys.stdout.write(", ".join(f"{name} {installed(*dists)}" for name, dists in parts.items()) + "\n")
    raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the versions of lookalike, torch, prefect and faiss, and exit.",
        ),
    ] = False,
) -> None:
    """Turn an image collection into a searchable retrieval index, then query it."""
