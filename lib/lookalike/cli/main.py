"""`lookalike`: the command line, a shell over the same lib calls as the Prefect flow.

lookalike run      build (or reuse) the index for the current settings and summarise it
lookalike reindex index new images with the production encoder (no pretraining)
lookalike query    images, folders or dataset rows in, top-k most similar rows out (JSON Lines for many)
lookalike ls       the built indexes with their scores, baselines and aliases (--history: alias moves)
lookalike duplicates  exact (same bytes) and near-duplicate (within a calibrated distance) groups
lookalike promote  point production at an index by hand; `rollback` moves it back
lookalike serve    the retrieval app (Gradio UI + HTTP API) on the production index
lookalike notify   tell a Prefect server new images arrived: its `reindex` deployment's trigger runs
lookalike gc       list (--delete: remove) the shared dataset parts no kept dataset version uses
"""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape

from lookalike.cli.render import print_duplicates, print_indexes, print_neighbours, print_summary
from lookalike.core.names import MAX_K, QUERY_CHUNK, TOP_K
from lookalike.core.settings import RUN_PARAMETERS, env_name, setting_default

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Turn an image collection into a searchable retrieval index, then query it.",
)
err = Console(stderr=True)


class MethodChoice(str, Enum):
    dino = "dino"
    simclr = "simclr"
    byol = "byol"
    distill = "distill"  # with --set encoder.teacher=<model>


class LinkageChoice(str, Enum):
    leader = "leader"
    components = "components"


def _from_settings(parameter: str, unset: str = "none") -> str:
    """typer's `show_default` for an option that defaults to None so that the settings decide
    (defaults < .env < environment < --set < the option): the settings model's own default and
    the environment variable that changes it. Not typer's `envvar`: typer would read it itself
    and pass it as the option, above --set."""
    dotted = RUN_PARAMETERS[parameter]
    default = setting_default(dotted)
    return f"{unset if default is None else default}; env: {env_name(dotted)}"


Dataset = Annotated[
    Optional[str],
    typer.Option(
        help="'sample', a hub name (food101), an image folder, an s3:// prefix, a .parquet file, a table of image "
        "paths or URLs (.csv, .jsonl, .parquet) or a save_to_disk folder.",
        show_default=_from_settings("dataset"),
    ),
]
Split = Annotated[Optional[str], typer.Option(help="Dataset split, e.g. train.", show_default=_from_settings("split"))]
MethodOpt = Annotated[
    Optional[MethodChoice],
    typer.Option(
        "--method",
        help="SSL pretraining method, or distill (with --set encoder.teacher=<model>).",
        show_default=_from_settings("method"),
    ),
]
Epochs = Annotated[
    Optional[int],
    typer.Option(
        help="Pretraining length in passes over the collection (instead of --steps).",
        show_default=_from_settings("epochs", unset="none: --steps decides"),
    ),
]
Steps = Annotated[
    Optional[str],
    typer.Option(
        help="Pretraining optimizer steps, or auto: a budget from the collection's size and the "
        "backbone's cost; 0 keeps the random initialisation.",
        show_default=_from_settings("steps"),
    ),
]
IndexOpt = Annotated[
    Optional[str],
    typer.Option(
        "--index",
        help="Index preset (flat-l2, flat-ip, hnsw, sq8, sq-fp16, ivf-flat, ivf-sq8, ivf-pq, ivf-pqfs-rflat), auto (fits index.memory_budget at index.recall_target) or a FAISS factory string.",
        show_default=_from_settings("index"),
    ),
]
# What `--index` (query, duplicates, serve) and `promote` take to name a built index: one spelling
# everywhere, resolved by `lookalike.serving.holder.localize` and `resolve_ref`.
REFERENCES = (
    "an alias (production, latest), an index stage key (a folder name under index/), an index folder of any "
    "root (<root>/index/<key>), a mirrored s3://bucket/prefix/index/<key> or s3://bucket/prefix/aliases/<name>, "
    "or a W&B artifact path entity/project/<method>-embeddings:<alias> (W&B online); remote ones are downloaded "
    "into <artifacts root>/remote and sha256-checked first"
)
QueryIndexOpt = Annotated[
    Optional[str],
    typer.Option(
        "--index",
        help=f"The index to use: {REFERENCES}. Anything else is an index preset or FAISS factory string, as for "
        "`lookalike run`: the index built for these settings. An existing alias or reference wins over a preset of "
        "the same name.",
        show_default=_from_settings("index", unset="none"),
    ),
]
AliasOpt = Annotated[  # the old spelling of `--index <alias>`
    Optional[str], typer.Option(hidden=True, help="Deprecated: give the alias to --index.")
]
Root = Annotated[
    Optional[str],
    typer.Option(
        help="Artifacts root: a folder, or s3://bucket/prefix shared between machines.",
        show_default=_from_settings("artifacts_root"),
    ),
]
Sets = Annotated[
    Optional[list[str]],
    typer.Option(
        "--set",
        help="Any setting as section.field=value, e.g. --set encoder.lr=0.001 (repeatable); in the environment "
        "LOOKALIKE_SECTION__FIELD, e.g. LOOKALIKE_ENCODER__LR=0.001. Precedence: defaults < .env < environment "
        "< --set < the options above.",
        show_default=False,
    ),
]
JsonOut = Annotated[bool, typer.Option("--json", help="Print the result as one JSON object on stdout's last line.")]
Mirror = Annotated[
    Optional[str],
    typer.Option(
        help="Mirror finished stage folders to s3://bucket/prefix.", show_default=_from_settings("mirror", unset="off")
    ),
]
Verbose = Annotated[
    bool,
    typer.Option(
        "--verbose",
        "-v",
        help="Also print Prefect's INFO lines (flow and task runs and their states); without it the terminal "
        "shows warnings, errors, progress bars and the result. The Prefect UI keeps every line either way.",
    ),
]
Promote = Annotated[
    bool,
    typer.Option("--promote/--no-promote", help="Move the 'production' alias to this run's index when it completes."),
]


def _parse_sets(sets: list[str] | None) -> dict[str, Any]:
    from lookalike.core.errors import brief

    out: dict[str, Any] = {}
    for item in sets or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            _fail(f"--set {brief(item)}: expected section.field=value, e.g. encoder.lr=0.001", code=2)
        try:
            out[name.strip()] = json.loads(value)
        except ValueError:
            out[name.strip()] = value
    return out


def _settings(dataset, split, method, epochs, index, root, mirror, sets, steps=None):
    """(settings, named run parameters, --set overrides); invalid settings exit 2."""
    from lookalike.core.settings import SettingsError, settings_for_run

    named = {
        "dataset": dataset,
        "split": split,
        "method": method.value if method else None,
        "steps": steps,
        "epochs": epochs,
        "index": index,
        "artifacts_root": str(root) if root else None,
        "mirror": mirror,
    }
    overrides = _parse_sets(sets)
    try:
        return settings_for_run(overrides, **named), named, overrides
    except SettingsError as exc:
        _fail(str(exc), code=2)


def _flow_arguments(
    settings, overrides: dict[str, Any], drop: tuple[str, ...] = ()
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(named flow parameters, overrides) reproducing `settings`: every named parameter is
    passed explicitly, so the flow's defaults never shadow the environment read here."""
    from lookalike.core.settings import RUN_PARAMETERS, run_parameters

    named = {k: v for k, v in run_parameters(settings).items() if k not in drop}
    owned = set(RUN_PARAMETERS.values())
    return named, {k: v for k, v in overrides.items() if k not in owned}


def _run_flow(
    flow_name: str, settings, named: dict[str, Any], overrides: dict[str, Any], json_out: bool, verbose: bool
) -> None:
    from lookalike.core.errors import LookalikeError
    from lookalike.stages.dataset.sources import check_source

    try:  # mistakes visible without loading anything fail before a server starts or torch imports
        check_source(settings.dataset)
    except LookalikeError as exc:
        _fail(str(exc))
    from lookalike.cli.crash import reported_native_crashes
    from lookalike.flows.runner import run_pipeline

    try:
        with reported_native_crashes():  # a FAISS abort or a segfault: one error line naming the stage
            summary = run_pipeline(named, overrides, flow_name, verbose=verbose)
    except LookalikeError as exc:
        _fail(str(exc))
    except Exception as exc:  # a crash, not a user mistake: Prefect has logged its traceback above
        _fail(
            f"the run failed ({type(exc).__name__}: {exc}). Finished stages, epochs and shards are kept: "
            "run the same command again to resume from where it stopped."
        )
    if json_out:
        sys.stdout.write(json.dumps(summary, default=str) + "\n")
    else:
        print_summary(Console(), summary)


@contextmanager
def _warnings_as_lines() -> Iterator[None]:
    """Print the warnings raised inside (e.g. a skipped torn line of the alias history) as one
    `warning:` line each, instead of Python's two-line format with a source location."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            for message in dict.fromkeys(str(w.message) for w in caught):
                err.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)


def _fail(message: str, code: int = 1) -> None:
    from lookalike.core.errors import redact_urls

    # escaped: a message's own brackets (pip install 'lookalike[serve]', a --set list) are text, not markup;
    # redacted: a server's URL (PREFECT_API_URL, an S3 endpoint) may carry a password
    err.print(f"[bold red]error:[/] {escape(redact_urls(message))}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


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


@app.command()
def run(
    dataset: Dataset = None,
    split: Split = None,
    method: MethodOpt = None,
    steps: Steps = None,
    epochs: Epochs = None,
    index: IndexOpt = None,
    artifacts_root: Root = None,
    mirror: Mirror = None,
    promote: Promote = True,
    set_: Sets = None,
    json_out: JsonOut = False,
    verbose: Verbose = False,
) -> None:
    """Run the retrieval pipeline (Prefect flow `retrieval-pipeline`) and summarise it."""
    settings, _, overrides = _settings(dataset, split, method, epochs, index, artifacts_root, mirror, set_, steps)
    named, overrides = _flow_arguments(settings, overrides)
    _run_flow("retrieval", settings, {**named, "promote": promote}, overrides, json_out, verbose)


@app.command()
def reindex(
    dataset: Dataset = None,
    split: Split = None,
    encoder_alias: Annotated[str, typer.Option(help="Alias whose encoder embeds the images.")] = "production",
    index: IndexOpt = None,
    artifacts_root: Root = None,
    mirror: Mirror = None,
    promote: Promote = True,
    set_: Sets = None,
    json_out: JsonOut = False,
    verbose: Verbose = False,
) -> None:
    """Index new images with the production encoder, without pretraining (Prefect flow `reindex`)."""
    settings, _, overrides = _settings(dataset, split, None, None, index, artifacts_root, mirror, set_)
    named, overrides = _flow_arguments(settings, overrides, drop=("method", "steps", "epochs"))
    named = {**named, "encoder_alias": encoder_alias, "promote": promote}
    _run_flow("reindex", settings, named, overrides, json_out, verbose)


@app.command()
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

    settings = _root_settings(artifacts_root)
    root = _open_root(settings)
    if not _is_reference(index_ref, root):  # checked before it is joined onto any path
        _fail(
            f"{not_a_key(index_ref, 'index')} nor an alias under {root}, a finished index folder "
            f"(<root>/index/<key>), an s3:// or a W&B reference: give a folder name under {root / 'index'}"
        )
    try:
        with _warnings_as_lines():
            source = {"command": f"lookalike promote {index_ref}"}
            folder = Path(index_ref).expanduser()
            if is_stage_key(index_ref):
                stages = chain_for_index(root, index_ref)
            elif (folder / "manifest.json").is_file():  # an index folder, of this root or another one
                key = copy_index_chain(root, folder)
                if folder.resolve().parents[1] != root.resolve():
                    source["copied_from"] = str(folder.resolve())
                stages = chain_for_index(root, key)
            elif "/" not in index_ref:  # an alias of this root: its whole chain, evaluation included
                stages = dict(read_alias(root, index_ref).stages)
            else:  # s3:// or W&B: fetched and verified into <root>/remote first (this one loads torch)
                from lookalike.serving.holder import localize

                where, local_ref = localize(root, index_ref, settings.mirror.endpoint_url)
                key = local_ref if is_stage_key(local_ref) else read_alias(where, local_ref).stages["index"]
                key = copy_index_chain(root, Path(where) / "index" / key)
                source["copied_from"] = index_ref
                stages = chain_for_index(root, key)
            moved = set_alias(root, alias, stages, source)
    except LookalikeError as exc:
        _fail(str(exc))
    err.print(f"{alias} -> index {moved.stages['index']} (encoder {moved.stages['encoder']})", highlight=False)


@app.command()
def rollback(
    artifacts_root: Root = None,
    alias: Annotated[str, typer.Option(help="The alias to move back.")] = "production",
) -> None:
    """Move an alias (production) back to the index it pointed at before its current one."""
    from lookalike.artifacts.aliases import previous_position, read_alias, set_alias
    from lookalike.core.errors import LookalikeError

    root = _root(artifacts_root)
    try:
        with _warnings_as_lines():
            current = read_alias(root, alias).stages["index"]
            before = previous_position(root, alias)
            set_alias(root, alias, before.stages, {"command": "lookalike rollback", "rolled_back_from": current})
    except LookalikeError as exc:
        _fail(str(exc))
    err.print(f"{alias} -> index {before.stages['index']} (was {current}; set {before.set_at})", highlight=False)


@app.command("ls")
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

    root = _root(artifacts_root)
    try:
        with _warnings_as_lines():
            aliases = list_aliases(root)
            listing = {
                "root": str(root),
                "indexes": [entry.model_dump(mode="json") for entry in indexes_under(root, aliases)],
                "aliases": {name: alias.model_dump(mode="json") for name, alias in aliases.items()},
                "history": [move.model_dump(mode="json") for move in alias_history(root)] if history else None,
            }
    except LookalikeError as exc:
        _fail(str(exc))
    if json_out:
        sys.stdout.write(json.dumps(listing) + "\n")
    else:
        print_indexes(Console(), listing)


@app.command()
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

    root = _root(artifacts_root)
    try:
        found = collect(root, delete=delete, versions=versions, min_age=min_age_hours * 3600)
    except LookalikeError as exc:
        _fail(str(exc))
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
            _fail(message)
        err.print(f"[yellow]warning:[/] {escape(message)}", highlight=False)
    if not delete and (found.parts or found.versions) and not json_out:
        err.print("dry run: nothing was removed; add --delete to remove it", highlight=False)


def _root(artifacts_root: str | None) -> Path:
    return _open_root(_root_settings(artifacts_root))


def _root_settings(artifacts_root: str | None):
    """The settings of a command that takes only --artifacts-root (the rest from .env and the environment)."""
    from lookalike.core.settings import SettingsError, load_settings

    try:
        return load_settings({"artifacts_root": artifacts_root})
    except SettingsError as exc:
        _fail(str(exc), code=2)


def _open_root(settings) -> Path:
    """The local root; for an s3:// root, this machine's copy with the bucket's aliases pulled."""
    from lookalike.artifacts.shared_root import open_root
    from lookalike.core.errors import LookalikeError

    try:
        return open_root(settings)
    except LookalikeError as exc:
        _fail(str(exc))


@app.command()
def query(
    images: Annotated[
        Optional[list[Path]],
        typer.Argument(
            metavar="IMAGE",
            help="Query image files, or folders of them (their image files, recursively). One image: a table and "
            "a picture; several, a folder or --jsonl: one JSON line per image on stdout, all in this one process.",
            show_default=False,
        ),
    ] = None,
    row: Annotated[Optional[int], typer.Option(help="Query with a dataset row id instead of a file.")] = None,
    top_k: Annotated[int, typer.Option(min=1, max=MAX_K, help="How many neighbours.")] = TOP_K,
    alias: AliasOpt = None,
    out: Annotated[
        Optional[Path], typer.Option(help="Where to write the picture (query beside its neighbours).")
    ] = None,
    where: Annotated[
        Optional[list[str]],
        typer.Option(
            "--where",
            help="Only rows matching this filter, e.g. 'label=Sneaker,Sandal', 'width>=64', 'path~*/cats/*', "
            "'label=Bag or (label=Sneaker and width>=64)' (terms joined by and / or, parentheses group, quotes keep "
            "a value whole; repeat --where for filters that must all hold). Fields: row, label, path, split, "
            "width, height, sha256 and dataset.metadata_columns.",
            show_default=False,
        ),
    ] = None,
    dataset: Dataset = None,
    split: Split = None,
    method: MethodOpt = None,
    steps: Steps = None,
    epochs: Epochs = None,
    index: QueryIndexOpt = None,
    artifacts_root: Root = None,
    set_: Sets = None,
    json_out: JsonOut = False,
    jsonl: Annotated[
        bool,
        typer.Option(
            "--jsonl",
            help='One JSON line per image: {"query": path, "neighbours": [...], "index": key}, or {"query": path, '
            '"error": why, "index": key} for a file that cannot be read (the others are still answered; the exit '
            "status is then 1). The default for several images or a folder.",
        ),
    ] = False,
) -> None:
    """Find the most similar images in an index: the one built for the current settings, or --index."""
    images = images or []
    if bool(images) == (row is not None):
        _fail("give either IMAGE paths (files or folders) or --row N", code=2)
    many = jsonl or len(images) > 1 or any(path.is_dir() for path in images)
    if many and out:
        _fail("--out writes the picture of one query; several images are answered as JSON lines only", code=2)
    _check_out(out)
    settings, chain_of = _index_chain(index, alias, dataset, split, method, epochs, artifacts_root, set_, steps)
    from lookalike.core.errors import LookalikeError
    from lookalike.serving.query import Searcher
    from lookalike.stages.dataset.images import decode_rgb
    from lookalike.stages.pictures import save_image

    try:
        searcher = Searcher(*chain_of())
        if many:
            return _query_many(searcher, _image_files(images), top_k, where, settings.dataset.max_image_pixels)
        if row is not None:
            picture_query, caption = searcher.image_of_row(row), f"query: row {row}"
        else:
            (image,) = images
            if not image.is_file():
                _fail(f"no such image file: {image}", code=2)
            picture_query = decode_rgb(image.read_bytes(), settings.dataset.max_image_pixels)
            caption = f"query: {image.name}"
        found = searcher.neighbours(picture_query, top_k, where)
    except LookalikeError as exc:
        _fail(str(exc))
    target = out or settings.artifacts_root / "queries" / (f"row-{row}.png" if row is not None else f"{image.stem}.png")
    save_image(target, searcher.picture(picture_query, caption, found))
    if json_out:
        payload = {"neighbours": found, "picture": str(target), "index": searcher.chain.index.key}
        if where:  # as read: `--where 'a=1 or b=2' --where c=3` is (a=1 or b=2) and c=3
            from lookalike.core.filters import parse_filter

            payload["where"] = str(parse_filter(where))
        sys.stdout.write(json.dumps(payload) + "\n")
    else:
        print_neighbours(Console(), caption, found)
        Console().print(f"picture: {target}")


def _check_out(out: Path | None) -> None:
    """An --out picture goes into a folder that exists: a typo in its folder is refused before any
    work, not made into new folders (the default place under the artifacts root is made as needed)."""
    if out is None:
        return
    from lookalike.core.errors import brief

    if out.is_dir():
        _fail(f"--out {brief(str(out))} is a folder; give the picture's file name, e.g. {out / 'picture.png'}", code=2)
    if not out.parent.is_dir():
        _fail(f"--out {brief(str(out))}: no folder {brief(str(out.parent))}; create it first or pick another", code=2)


def _image_files(paths: list[Path]) -> list[Path]:
    """The files to query: each file as given, and a folder's image files (by the extensions
    Pillow reads), recursively in name order, hidden ones left out."""
    from PIL import Image

    readable = set(Image.registered_extensions())
    files = []
    for path in paths:
        if path.is_dir():
            files += sorted(
                p
                for p in path.rglob("*")
                if p.suffix.lower() in readable
                and p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
        else:
            files.append(path)  # a missing or unreadable one is answered with its error
    return files


def _query_many(searcher, files: list[Path], k: int, where: list[str] | None, max_pixels: int) -> None:
    """One JSON line per file, in order, through `Searcher.search_images` (the one inference path) a
    chunk at a time; a file that cannot be read gets an error line and the rest are still answered."""
    from rich.markup import escape

    from lookalike.core.errors import LookalikeError, one_line
    from lookalike.core.filters import parse_filter
    from lookalike.core.progress import progress

    key, filter_, failed = searcher.chain.index.key, parse_filter(where), 0
    with progress(len(files), "query", unit="img") as bar:
        for start in range(0, len(files), QUERY_CHUNK):
            chunk, decoded, lines = files[start : start + QUERY_CHUNK], [], {}
            for path in chunk:
                try:
                    # at the encoder's size as soon as it is read (JPEG draft): a chunk of camera photos
                    # holds QUERY_CHUNK small images, not QUERY_CHUNK full-size ones
                    decoded.append((path, searcher.decode_query(path.read_bytes(), max_pixels)))
                except (LookalikeError, OSError) as exc:
                    why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                    lines[path] = {"query": str(path), "error": one_line(why), "index": key}
                    err.print(
                        f"[yellow]warning:[/] {escape(one_line(str(path)))}: {escape(one_line(why))}",
                        highlight=False,
                        soft_wrap=True,
                    )
            hits = searcher.search_images([image for _, image in decoded], k, filter_)
            lines.update(
                {
                    path: {"query": str(path), "neighbours": found, "index": key}
                    for (path, _), found in zip(decoded, hits)
                }
            )
            for path in chunk:
                sys.stdout.write(json.dumps(lines[path]) + "\n")
            failed += len(chunk) - len(decoded)
            bar.update(len(chunk))
    if failed:
        err.print(f"{failed} of {len(files)} images could not be read", highlight=False)
        raise typer.Exit(1)


@app.command()
def duplicates(
    threshold: Annotated[
        Optional[float],
        typer.Option(
            help="Near-duplicate distance in the index's units (squared L2 after whitening for l2, cosine "
            "similarity for ip) instead of the one calibrated on augmented copies of the collection."
        ),
    ] = None,
    alias: AliasOpt = None,
    out: Annotated[Optional[Path], typer.Option(help="Where to write the picture of the largest groups.")] = None,
    linkage: Annotated[
        LinkageChoice,
        typer.Option(
            help="leader: every member within the threshold of its group's first row; components: any chain "
            "of rows within the threshold of each other is one group."
        ),
    ] = LinkageChoice.leader,
    dataset: Dataset = None,
    split: Split = None,
    method: MethodOpt = None,
    steps: Steps = None,
    epochs: Epochs = None,
    index: QueryIndexOpt = None,
    artifacts_root: Root = None,
    set_: Sets = None,
    json_out: JsonOut = False,
) -> None:
    """Find exact and near-duplicate groups in an index.

    Exact: the same bytes. Near: within a threshold calibrated on augmented copies of the
    collection's own images. The index is the one built for the current settings, or --index."""
    _check_out(out)
    settings, chain_of = _index_chain(index, alias, dataset, split, method, epochs, artifacts_root, set_, steps)
    from lookalike.core.errors import LookalikeError
    from lookalike.stages.duplicates import duplicates_picture, find_duplicates
    from lookalike.stages.pictures import save_image

    try:
        root, chain = chain_of()
        report = find_duplicates(
            root,
            chain.dataset,
            chain.encoder,
            chain.embeddings,
            chain.index,
            threshold=threshold,
            linkage=linkage.value,
        )
    except LookalikeError as exc:
        _fail(str(exc))
    target = out or settings.artifacts_root / "duplicates" / f"{chain.index.key}.png"
    if report.groups:
        save_image(target, duplicates_picture(root, chain.dataset, report))
    if json_out:
        payload = {**report.to_json(), "picture": str(target) if report.groups else None}
        sys.stdout.write(json.dumps(payload) + "\n")
    else:
        print_duplicates(Console(), report.to_json())
        if report.groups:
            Console().print(f"picture: {target}")


def _index_chain(index, alias, dataset, split, method, epochs, artifacts_root, set_, steps):
    """(settings, chain_of) for the commands that read a built index (query, duplicates). `chain_of()`
    gives (artifacts root, Chain) for an --index reference (an alias, a key, a folder, s3:// or W&B:
    fetched and verified first) or the index built for these settings (--index a preset or FAISS
    factory string); it raises LookalikeError for the caller to report."""
    if alias:
        err.print("[yellow]warning:[/] --alias is deprecated: give the alias to --index (--index production)")
        if index:
            _fail(f"give the index once: --index {alias} (--alias is its old spelling), not both", code=2)
    settings, _, _ = _settings(dataset, split, method, epochs, None, artifacts_root, None, set_, steps)
    root = _open_root(settings)
    ref = alias or (index if index and _is_reference(index, root) else None)
    if index and not ref:  # a preset or factory string: the index built for these settings
        from lookalike.core.names import check_index_type

        try:
            check_index_type(index)
        except ValueError as exc:
            _fail(f"--index {index!r} names no alias, index key or index folder under {root}, and {exc}", code=2)
        settings, _, _ = _settings(dataset, split, method, epochs, index, artifacts_root, None, set_, steps)

    def chain_of():
        from lookalike.serving.query import chain_from_alias, resolve_chain

        if alias:  # missing, it says how to make one
            return root, chain_from_alias(root, alias)
        if ref:
            from lookalike.serving.holder import localize, resolve_ref

            where, local_ref = localize(root, ref, settings.mirror.endpoint_url)
            return where, resolve_ref(where, local_ref)[0]
        return root, resolve_chain(settings)

    return settings, chain_of


def _is_reference(index: str, root: Path) -> bool:
    """Whether `index` names a built index (`REFERENCES`): an alias or index stage key under `root`,
    an index folder, s3:// or a W&B artifact path; else it can only be a preset or factory string."""
    from lookalike.artifacts.aliases import AliasError, alias_path
    from lookalike.core.manifest import is_stage_key
    from lookalike.reporting.tracking import parse_wandb_ref

    if index.startswith("s3://") or is_stage_key(index) or parse_wandb_ref(index):
        return True
    if (Path(index).expanduser() / "manifest.json").is_file():
        return True
    try:
        return alias_path(root, index).is_file()
    except AliasError:  # not an alias name
        return False


@app.command()
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
    settings, _, _ = _settings(None, None, None, None, None, artifacts_root, None, set_)
    _check_can_bind(host, port)  # before the index loads, not after
    from lookalike.core.errors import LookalikeError
    from lookalike.core.extras import check_extra

    try:  # an install without the serve extra says so before anything loads
        check_extra("uvicorn", "lookalike serve")
        check_extra("gradio", "lookalike serve (its UI)")
    except LookalikeError as exc:
        _fail(str(exc))
    _open_root(settings)
    from lookalike.app.server import create_app

    try:
        application = create_app(
            settings.artifacts_root, index, poll_seconds=poll_seconds, endpoint_url=settings.mirror.endpoint_url
        )
    except LookalikeError as exc:
        _fail(str(exc))
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
        _fail(f"--host {host!r} does not resolve ({exc.strerror}); give an interface address such as 127.0.0.1")
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as exc:
            _fail(f"cannot listen on {host}:{port} ({exc.strerror}); pick another with --port, or stop what uses it")


@app.command()
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
        _fail(str(exc))
    if json_out:
        sys.stdout.write(json.dumps({"event": event.event, "id": str(event.id), **event.payload}) + "\n")
    else:
        print(f"sent {event.event} for {event.payload['dataset']} (split {event.payload['split']}), id {event.id}")


if __name__ == "__main__":
    app()
