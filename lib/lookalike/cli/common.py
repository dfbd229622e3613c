"""What the commands share: --set parsing, run settings, running the flow, one-line failures, the artifacts root."""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from lookalike.cli.app import err
from lookalike.cli.render import print_summary


def parse_sets(sets: list[str] | None) -> dict[str, Any]:
    from lookalike.core.errors import brief

    out: dict[str, Any] = {}
    for item in sets or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            fail(f"--set {brief(item)}: expected section.field=value, e.g. encoder.lr=0.001", code=2)
        try:
            out[name.strip()] = json.loads(value)
        except ValueError:
            out[name.strip()] = value
    return out


def run_settings(dataset, split, method, epochs, index, root, mirror, sets, steps=None):
    """(settings, the run request); invalid settings exit 2."""
    from lookalike.core.settings import RunRequest, SettingsError

    request = RunRequest(
        dataset=dataset,
        split=split,
        method=method.value if method else None,
        steps=steps,
        epochs=epochs,
        index=index,
        artifacts_root=str(root) if root else None,
        mirror=mirror,
        overrides=parse_sets(sets),
    )
    try:
        return request.settings(), request
    except SettingsError as exc:
        fail(str(exc), code=2)


def run_flow(flow_name: str, settings, named: dict[str, Any], request, json_out: bool, verbose: bool) -> None:
    """Run flow `flow_name` with the named parameters that reproduce `settings` plus `named`, and the request's
    free overrides; print its summary (or one JSON line)."""
    from lookalike.core.errors import LookalikeError
    from lookalike.stages.dataset.sources import check_source

    try:  # mistakes visible without loading anything fail before a server starts or torch imports
        check_source(settings.dataset)
    except LookalikeError as exc:
        fail(str(exc))
    from lookalike.cli.crash import reported_native_crashes
    from lookalike.flows.runner import run_pipeline

    try:
        with reported_native_crashes():  # a FAISS abort or a segfault: one error line naming the stage
            summary = run_pipeline(named, request.free_overrides(), flow_name, verbose=verbose)
    except LookalikeError as exc:
        fail(str(exc))
    except Exception as exc:  # a crash, not a user mistake: Prefect has logged its traceback above
        fail(
            f"the run failed ({type(exc).__name__}: {exc}). Finished stages, epochs and shards are kept: "
            "run the same command again to resume from where it stopped."
        )
    if json_out:
        sys.stdout.write(json.dumps(summary, default=str) + "\n")
    else:
        print_summary(Console(), summary)


@contextmanager
def warnings_as_lines() -> Iterator[None]:
    """Print the warnings raised inside (e.g. a skipped torn line of the alias history) as one
    `warning:` line each, instead of Python's two-line format with a source location."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            for message in dict.fromkeys(str(w.message) for w in caught):
                err.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)


def fail(message: str, code: int = 1) -> NoReturn:
    from lookalike.core.errors import redact_urls

    # escaped: a message's own brackets (pip install 'lookalike[serve]', a --set list) are text, not markup;
    # redacted: a server's URL (PREFECT_API_URL, an S3 endpoint) may carry a password
    err.print(f"[bold red]error:[/] {escape(redact_urls(message))}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def root_folder(artifacts_root: str | None) -> Path:
    return open_root(root_settings(artifacts_root))


def root_settings(artifacts_root: str | None):
    """The settings of a command that takes only --artifacts-root (the rest from .env and the environment)."""
    from lookalike.core.settings import SettingsError, load_settings

    try:
        return load_settings({"artifacts_root": artifacts_root})
    except SettingsError as exc:
        fail(str(exc), code=2)


def open_root(settings) -> Path:
    """The local root; for an s3:// root, this machine's copy with the bucket's aliases pulled."""
    from lookalike.artifacts.shared_root import open_root
    from lookalike.core.errors import LookalikeError

    try:
        return open_root(settings)
    except LookalikeError as exc:
        fail(str(exc))


def index_chain(index, alias, dataset, split, method, epochs, artifacts_root, set_, steps):
    """(settings, chain_of) for the commands that read a built index (query, duplicates). `chain_of()`
    gives (artifacts root, Chain) for an --index reference (an alias, a key, a folder, s3:// or W&B:
    fetched and verified first) or the index built for these settings (--index a preset or FAISS
    factory string); it raises LookalikeError for the caller to report."""
    if alias:
        err.print("[yellow]warning:[/] --alias is deprecated: give the alias to --index (--index production)")
        if index:
            fail(f"give the index once: --index {alias} (--alias is its old spelling), not both", code=2)
    settings, _ = run_settings(dataset, split, method, epochs, None, artifacts_root, None, set_, steps)
    root = open_root(settings)
    from lookalike.serving.refs import IndexRef

    ref = IndexRef.parse(index) if index else None
    if index and ref and not ref.names_index(root):  # a preset or factory string: the index built for these settings
        from lookalike.core.names import check_index_type

        try:
            check_index_type(index)
        except ValueError as exc:
            fail(f"--index {index!r} names no alias, index key or index folder under {root}, and {exc}", code=2)
        settings, _ = run_settings(dataset, split, method, epochs, index, artifacts_root, None, set_, steps)
        ref = None

    def chain_of():
        from lookalike.serving.refs import alias_chain, resolve_chain

        if alias:  # missing, it says how to make one
            return root, alias_chain(root, alias)
        if ref:
            where, chain, _ = ref.resolve(root, settings.mirror.endpoint_url)
            return where, chain
        return root, resolve_chain(settings)

    return settings, chain_of


def check_out(out: Path | None) -> None:
    """An --out picture goes into a folder that exists: a typo in its folder is refused before any
    work, not made into new folders (the default place under the artifacts root is made as needed)."""
    if out is None:
        return
    from lookalike.core.errors import brief

    if out.is_dir():
        fail(f"--out {brief(str(out))} is a folder; give the picture's file name, e.g. {out / 'picture.png'}", code=2)
    if not out.parent.is_dir():
        fail(f"--out {brief(str(out))}: no folder {brief(str(out.parent))}; create it first or pick another", code=2)
