"""`lookalike promote`, `rollback` and `ls`: the aliases (production, latest) and the indexes they point at."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from lookalike.cli.app import err
from lookalike.cli.common import fail, open_root, root_folder, root_settings, warnings_as_lines
from lookalike.cli.options import REFERENCES, Root
from lookalike.cli.render import print_indexes


def promote(
    index_ref: Annotated[
        str,
        typer.Argument(
            metavar="INDEX",
            help=f"The index to point the alias at: {REFERENCES}. An index from another root or a remote one is "
            "copied in with its chain first.",
            show_default=False,
        ),
    ],
    artifacts_root: Root = None,
    alias: Annotated[str, typer.Option(help="The alias to move.")] = "production",
) -> None:
    """Point an alias (production) at an index a person has checked, bypassing the run's gate."""
    from lookalike.artifacts.aliases import chain_for_index, copy_index_chain, read_alias, set_alias
    from lookalike.core.errors import LookalikeError
    from lookalike.core.manifest import is_stage_key, not_a_key
    from lookalike.serving.refs import IndexRef

    settings = root_settings(artifacts_root)
    root = open_root(settings)
    ref = IndexRef.parse(index_ref)
    if not ref.names_index(root):  # checked before it is joined onto any path
        fail(
            f"{not_a_key(index_ref, 'index')} nor an alias under {root}, a finished index folder "
            f"(<root>/index/<key>), an s3:// or a W&B reference: give a folder name under {root / 'index'}"
        )
    try:
        with warnings_as_lines():
            source = {"command": f"lookalike promote {index_ref}"}
            if ref.kind == "key":
                stages = chain_for_index(root, index_ref)
            elif ref.kind == "folder":  # an index folder, of this root or another one
                folder = Path(index_ref).expanduser()
                key = copy_index_chain(root, folder)
                if folder.resolve().parents[1] != root.resolve():
                    source["copied_from"] = str(folder.resolve())
                stages = chain_for_index(root, key)
            elif ref.kind == "alias":  # an alias of this root: its whole chain, evaluation included
                stages = dict(read_alias(root, index_ref).stages)
            else:  # s3:// or W&B: fetched and verified into <root>/remote first (this one loads torch)
                where, local_ref = ref.localize(root, settings.mirror.endpoint_url)
                key = local_ref if is_stage_key(local_ref) else read_alias(where, local_ref).stages["index"]
                key = copy_index_chain(root, Path(where) / "index" / key)
                source["copied_from"] = index_ref
                stages = chain_for_index(root, key)
            moved = set_alias(root, alias, stages, source)
    except LookalikeError as exc:
        fail(str(exc))
    err.print(f"{alias} -> index {moved.stages['index']} (encoder {moved.stages['encoder']})", highlight=False)


def rollback(
    artifacts_root: Root = None,
    alias: Annotated[str, typer.Option(help="The alias to move back.")] = "production",
) -> None:
    """Move an alias (production) back to the index it pointed at before its current one."""
    from lookalike.artifacts.aliases import previous_position, read_alias, set_alias
    from lookalike.core.errors import LookalikeError

    root = root_folder(artifacts_root)
    try:
        with warnings_as_lines():
            current = read_alias(root, alias).stages["index"]
            before = previous_position(root, alias)
            set_alias(root, alias, before.stages, {"command": "lookalike rollback", "rolled_back_from": current})
    except LookalikeError as exc:
        fail(str(exc))
    err.print(f"{alias} -> index {before.stages['index']} (was {current}; set {before.set_at})", highlight=False)


def list_indexes(
    artifacts_root: Root = None,
    history: Annotated[
        bool, typer.Option("--history", help="Also list every move of every alias, oldest first.")
    ] = False,
    json_out: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print one JSON object: root, indexes (key, created, type, chosen, metric, n_images, dim, bytes, "
            "dataset, encoder, embeddings, method, evaluation, metrics, baselines, gain, aliases), aliases (name -> "
            "alias file) and history (null without --history).",
        ),
    ] = False,
) -> None:
    """List the built indexes with their scores, baselines and aliases.

    Newest first; each index's scores beside the raw-pixel and starting-point baselines', and the
    aliases pointing at it. For an s3:// root: what this machine's copy holds, with the bucket's aliases."""
    from lookalike.artifacts.aliases import alias_history, list_aliases
    from lookalike.artifacts.catalog import list_indexes as indexes_under
    from lookalike.core.errors import LookalikeError

    root = root_folder(artifacts_root)
    try:
        with warnings_as_lines():
            aliases = list_aliases(root)
            listing = {
                "root": str(root),
                "indexes": [entry.model_dump(mode="json") for entry in indexes_under(root, aliases)],
                "aliases": {name: alias.model_dump(mode="json") for name, alias in aliases.items()},
                "history": [move.model_dump(mode="json") for move in alias_history(root)] if history else None,
            }
    except LookalikeError as exc:
        fail(str(exc))
    if json_out:
        sys.stdout.write(json.dumps(listing) + "\n")
    else:
        print_indexes(Console(), listing)
