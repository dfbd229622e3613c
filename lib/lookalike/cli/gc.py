"""`lookalike gc`: the shared dataset parts (and versions) nothing keeps, listed or removed."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from lookalike.cli.app import err
from lookalike.cli.common import fail, root_folder
from lookalike.cli.options import Root


def gc(
    artifacts_root: Root = None,
    delete: Annotated[bool, typer.Option("--delete", help="Remove what is listed (without it: a dry run).")] = False,
    versions: Annotated[
        bool,
        typer.Option(
            "--versions",
            help="Also remove finished dataset versions that no alias (nor its history) and no finished stage "
            "folder references, with the parts only they use.",
        ),
    ] = False,
    min_age_hours: Annotated[
        float, typer.Option(help="Leave alone anything written or reused more recently than this.")
    ] = 24.0,
    json_out: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print one JSON object: root, deleted, parts and versions (each path, bytes, why), bytes, "
            "kept_parts, kept_versions, busy.",
        ),
    ] = False,
) -> None:
    """List (or with --delete remove) the shared dataset parts no kept dataset version uses.

    A dry run by default. Every dataset version folder in the root keeps its parts; an alias keeps the
    versions it names (--versions). For an s3:// root: this machine's copy; the bucket is not touched."""
    from lookalike.artifacts.gc import collect
    from lookalike.core.errors import LookalikeError

    root = root_folder(artifacts_root)
    try:
        found = collect(root, delete=delete, versions=versions, min_age=min_age_hours * 3600)
    except LookalikeError as exc:
        fail(str(exc))
    if json_out:
        sys.stdout.write(json.dumps(found.as_dict()) + "\n")
    else:
        verb = "removed" if delete and not found.busy else "would remove"
        for item in [*found.versions, *found.parts]:
            Console().print(
                f"{verb} {escape(item.path)} ({item.bytes:,} bytes): {item.why}", highlight=False, soft_wrap=True
            )
        Console().print(
            f"{verb} {len(found.versions)} version(s) and {len(found.parts)} part file(s), {found.bytes:,} bytes; "
            f"kept {found.kept_versions} version(s) and {found.kept_parts} part(s) under {escape(str(root))}",
            highlight=False,
            soft_wrap=True,
        )
    if found.busy:
        message = f"builds in progress ({', '.join(found.busy)}): nothing was removed; run gc when they finish"
        if delete:
            fail(message)
        err.print(f"[yellow]warning:[/] {escape(message)}", highlight=False)
    if not delete and (found.parts or found.versions) and not json_out:
        err.print("dry run: nothing was removed; add --delete to remove it", highlight=False)
