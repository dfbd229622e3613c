"""`lookalike query`: images, folders or dataset rows in, top-k most similar rows out."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from lookalike.cli.app import err
from lookalike.cli.common import check_out, fail, index_chain
from lookalike.cli.options import AliasOpt, Dataset, Epochs, JsonOut, MethodOpt, QueryIndexOpt, Root, Sets, Split, Steps
from lookalike.cli.render import print_neighbours
from lookalike.core.names import MAX_K, QUERY_CHUNK, TOP_K


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
        fail("give either IMAGE paths (files or folders) or --row N", code=2)
    many = jsonl or len(images) > 1 or any(path.is_dir() for path in images)
    if many and out:
        fail("--out writes the picture of one query; several images are answered as JSON lines only", code=2)
    check_out(out)
    settings, chain_of = index_chain(index, alias, dataset, split, method, epochs, artifacts_root, set_, steps)
    from lookalike.core.errors import LookalikeError
    from lookalike.serving.queries import QueryError, decode_image, image_files, read_query_file
    from lookalike.serving.query import Searcher
    from lookalike.stages.pictures import save_image

    try:
        searcher = Searcher(*chain_of())
        if many:
            return _query_many(searcher, image_files(images), top_k, where, settings.dataset.max_image_pixels)
        if row is not None:
            picture_query, caption = searcher.image_of_row(row), f"query: row {row}"
        else:
            (image,) = images
            if not image.is_file():
                fail(f"no such image file: {image}", code=2)
            data = read_query_file(image)
            try:  # full size: the query is drawn beside its neighbours
                picture_query = decode_image(data, settings.dataset.max_image_pixels)
            except QueryError as exc:
                fail(exc.reason)  # the image is the one given: its name needs no repeating
            caption = f"query: {image.name}"
        found = searcher.neighbours(picture_query, top_k, where)
    except LookalikeError as exc:
        fail(str(exc))
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


def _query_many(searcher, files: list[Path], k: int, where: list[str] | None, max_pixels: int) -> None:
    """One JSON line per file, in order, through `Searcher.search_images` (the one inference path) a
    chunk at a time; a file that cannot be read gets an error line and the rest are still answered."""

    from lookalike.core.errors import one_line
    from lookalike.core.filters import parse_filter
    from lookalike.core.progress import progress
    from lookalike.serving.queries import QueryError, read_image

    key, filter_, failed = searcher.chain.index.key, parse_filter(where), 0
    with progress(len(files), "query", unit="img") as bar:
        for start in range(0, len(files), QUERY_CHUNK):
            chunk, decoded, lines = files[start : start + QUERY_CHUNK], [], {}
            for path in chunk:
                try:
                    # at the encoder's size as soon as it is read (JPEG draft): a chunk of camera photos
                    # holds QUERY_CHUNK small images, not QUERY_CHUNK full-size ones
                    decoded.append((path, read_image(path, max_pixels, searcher.embedder.resize)))
                except QueryError as exc:
                    why = exc.reason  # the line names the file already
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
