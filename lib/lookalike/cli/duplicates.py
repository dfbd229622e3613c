"""`lookalike duplicates`: exact and near-duplicate groups of an index."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from lookalike.cli.common import check_out, fail, index_chain
from lookalike.cli.options import (
    AliasOpt,
    Dataset,
    Epochs,
    JsonOut,
    LinkageChoice,
    MethodOpt,
    QueryIndexOpt,
    Root,
    Sets,
    Split,
    Steps,
)
from lookalike.cli.render import print_duplicates


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
    check_out(out)
    settings, chain_of = index_chain(index, alias, dataset, split, method, epochs, artifacts_root, set_, steps)
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
        fail(str(exc))
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
