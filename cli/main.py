"""`lookalike`: the command line, a shell over the same lib calls as the Prefect flow.

lookalike run      build (or reuse) the index for the current settings and summarise it
lookalike reindex index new images with the production encoder (no pretraining)
lookalike query    image or dataset row in, top-k most similar rows out
lookalike duplicates  exact (same bytes) and near-duplicate (within a calibrated distance) groups
lookalike promote  point production at an index by hand; `rollback` moves it back
lookalike serve    the retrieval app (Gradio UI + HTTP API) on the production index
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

from lookalike.cli.render import print_duplicates, print_neighbours, print_summary

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


Dataset = Annotated[
    Optional[str],
    typer.Option(help="'sample', a hub name (food101), an image folder, a .parquet file or a save_to_disk folder."),
]
Split = Annotated[Optional[str], typer.Option(help="Dataset split, e.g. train.")]
MethodOpt = Annotated[
    Optional[MethodChoice],
    typer.Option("--method", help="SSL pretraining method, or distill (with --set encoder.teacher=<model>)."),
]
Epochs = Annotated[
    Optional[int], typer.Option(help="Pretraining length in passes over the collection (instead of --steps).")
]
Steps = Annotated[
    Optional[str],
    typer.Option(
        help="Pretraining optimizer steps, or auto (default): a budget from the collection's size and the "
        "backbone's cost; 0 keeps the random initialisation."
    ),
]
IndexOpt = Annotated[
    Optional[str],
    typer.Option(
        "--index",
        help="Index preset (flat-l2, flat-ip, hnsw, sq8, sq-fp16, ivf-flat, ivf-sq8, ivf-pq, ivf-pqfs-rflat), auto (fits index.memory_budget at index.recall_target) or a FAISS factory string.",
    ),
]
QueryIndexOpt = Annotated[
    Optional[str],
    typer.Option(
        "--index",
        help="Index preset or FAISS factory string of the run to query, or a reference: an index folder (<root>/index/<key>), a mirrored s3://bucket/prefix/index/<key> or s3://bucket/prefix/aliases/<name>, or a W&B artifact path entity/project/<method>-embeddings:<alias> (W&B online); remote ones are downloaded into <artifacts root>/remote and sha256-checked first.",
    ),
]
Root = Annotated[
    Optional[str],
    typer.Option(
        help="Artifacts root: a folder, or s3://bucket/prefix shared between machines (default ./artifacts or "
        "LOOKALIKE_ARTIFACTS_ROOT)."
    ),
]
Sets = Annotated[
    Optional[list[str]],
    typer.Option("--set", help="Any setting as section.field=value, e.g. --set encoder.lr=0.001 (repeatable)."),
]
JsonOut = Annotated[bool, typer.Option("--json", help="Print the result as one JSON object on stdout's last line.")]
Mirror = Annotated[Optional[str], typer.Option(help="Mirror finished stage folders to s3://bucket/prefix.")]
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


def _run_flow(flow_name: str, settings, named: dict[str, Any], overrides: dict[str, Any], json_out: bool) -> None:
    from lookalike.core.errors import LookalikeError
    from lookalike.stages.dataset.sources import check_source

    try:  # mistakes visible without loading anything fail before a server starts or torch imports
        check_source(settings.dataset)
    except LookalikeError as exc:
        _fail(str(exc))
    from lookalike.cli.orchestration import run_pipeline

    try:
        summary = run_pipeline(named, overrides, flow_name)
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
    # escaped: a message's own brackets (pip install 'lookalike[serve]', a --set list) are text, not markup
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


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
) -> None:
    """Run the retrieval pipeline (Prefect flow `retrieval-pipeline`) and summarise it."""
    settings, _, overrides = _settings(dataset, split, method, epochs, index, artifacts_root, mirror, set_, steps)
    named, overrides = _flow_arguments(settings, overrides)
    _run_flow("retrieval", settings, {**named, "promote": promote}, overrides, json_out)


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
) -> None:
    """Index new images with the production encoder, without pretraining (Prefect flow `reindex`)."""
    settings, _, overrides = _settings(dataset, split, None, None, index, artifacts_root, mirror, set_)
    named, overrides = _flow_arguments(settings, overrides, drop=("method", "steps", "epochs"))
    _run_flow("reindex", settings, {**named, "encoder_alias": encoder_alias, "promote": promote}, overrides, json_out)


@app.command()
def promote(
    index_key: Annotated[
        str,
        typer.Argument(
            help="The index stage key to make production (a folder name under index/), or an index folder "
            "of another root (<root>/index/<key>), which is copied in with its chain first."
        ),
    ],
    artifacts_root: Root = None,
    alias: Annotated[str, typer.Option(help="The alias to move.")] = "production",
) -> None:
    """Point an alias (production) at an index a person has checked, bypassing the run's gate."""
    from lookalike.artifacts.aliases import chain_for_index, copy_index_chain, set_alias
    from lookalike.core.errors import LookalikeError
    from lookalike.core.manifest import is_stage_key, not_a_key

    root = _root(artifacts_root)
    try:
        with _warnings_as_lines():
            key, source = index_key, {"command": f"lookalike promote {index_key}"}
            if not is_stage_key(index_key):  # checked before it is joined onto any path
                folder = Path(index_key).expanduser()
                if not (folder / "manifest.json").is_file():
                    _fail(
                        f"{not_a_key(index_key, 'index')} nor a finished index folder (<root>/index/<key>): "
                        f"give a folder name under {root / 'index'}"
                    )
                key = copy_index_chain(root, folder)
                source["copied_from"] = str(folder.resolve())
            moved = set_alias(root, alias, chain_for_index(root, key), source)
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


def _root(artifacts_root: str | None) -> Path:
    from lookalike.core.settings import SettingsError, load_settings

    try:
        return _open_root(load_settings({"artifacts_root": artifacts_root}))
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
    image: Annotated[Optional[Path], typer.Argument(help="Query image file.", show_default=False)] = None,
    row: Annotated[Optional[int], typer.Option(help="Query with a dataset row id instead of a file.")] = None,
    top_k: Annotated[int, typer.Option(min=1, help="How many neighbours.")] = 3,
    alias: Annotated[
        Optional[str],
        typer.Option(
            help="Query the index an alias points at (e.g. production) instead of the one built for these settings."
        ),
    ] = None,
    out: Annotated[
        Optional[Path], typer.Option(help="Where to write the picture (query beside its neighbours).")
    ] = None,
    where: Annotated[
        Optional[list[str]],
        typer.Option(
            "--where",
            help="Only rows matching this filter, e.g. 'label=Sneaker,Sandal', 'width>=64', 'path~*/cats/*' "
            "(terms joined by 'and'; repeat --where to add terms). Fields: row, label, path, split, width, "
            "height, sha256 and dataset.metadata_columns.",
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
) -> None:
    """Find the most similar images in the index built for the current settings."""
    if (image is None) == (row is None):
        _fail("give either an IMAGE_PATH or --row N", code=2)
    settings, chain_of = _index_chain(index, alias, dataset, split, method, epochs, artifacts_root, set_, steps)
    from lookalike.core.errors import LookalikeError
    from lookalike.serving.query import Searcher
    from lookalike.stages.dataset.images import decode_rgb
    from lookalike.stages.pictures import save_image

    try:
        searcher = Searcher(*chain_of())
        if row is not None:
            picture_query, caption = searcher.image_of_row(row), f"query: row {row}"
        else:
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
        if where:
            payload["where"] = " and ".join(where)
        sys.stdout.write(json.dumps(payload) + "\n")
    else:
        print_neighbours(Console(), caption, found)
        Console().print(f"picture: {target}")


@app.command()
def duplicates(
    threshold: Annotated[
        Optional[float],
        typer.Option(
            help="Near-duplicate distance in the index's units (squared L2 after whitening for l2, cosine "
            "similarity for ip) instead of the one calibrated on augmented copies of the collection."
        ),
    ] = None,
    alias: Annotated[
        Optional[str],
        typer.Option(
            help="Use the index an alias points at (e.g. production) instead of the one built for these settings."
        ),
    ] = None,
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
    """Exact duplicates (same bytes) and near-duplicate groups (within a threshold calibrated on
    augmented copies of the collection's own images) of the index built for the current settings."""
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
    gives (artifacts root, Chain) for an --index reference (fetched and verified first), an --alias,
    or the index built for these settings; it raises LookalikeError for the caller to report."""
    ref = None
    if index and _is_reference(index):
        ref, index = index, None
        if alias:
            _fail(
                "give --alias or an --index reference (s3:// URL, W&B artifact path or index folder), not both", code=2
            )
    settings, _, _ = _settings(dataset, split, method, epochs, index, artifacts_root, None, set_, steps)
    _open_root(settings)

    def chain_of():
        from lookalike.serving.query import chain_from_alias, resolve_chain

        root = settings.artifacts_root
        if ref:
            from lookalike.serving.holder import localize, resolve_ref

            root, local_ref = localize(root, ref, settings.mirror.endpoint_url)
            return root, resolve_ref(root, local_ref)[0]
        return root, chain_from_alias(root, alias) if alias else resolve_chain(settings)

    return settings, chain_of


def _is_reference(index: str) -> bool:
    """An --index that names a built index (not a preset or factory string to build)."""
    from lookalike.reporting.tracking import parse_wandb_ref

    return (
        index.startswith("s3://")
        or (Path(index).expanduser() / "manifest.json").is_file()
        or bool(parse_wandb_ref(index))
    )


@app.command()
def serve(
    index: Annotated[
        str,
        typer.Option(
            "--index",
            help="What to serve: an alias (followed when it moves), an index stage key, an index folder "
            "(<root>/index/<key>), a mirrored s3://bucket/prefix/index/<key> or s3://bucket/prefix/aliases/<name>, "
            "or a W&B artifact path entity/project/<method>-embeddings:<alias> (downloaded and sha256-checked first).",
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


if __name__ == "__main__":
    app()
