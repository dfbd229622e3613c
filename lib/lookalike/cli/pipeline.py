"""`lookalike run` and `lookalike reindex`: the Prefect flows, started from the shell."""

from __future__ import annotations

from typing import Annotated

import typer

from lookalike.cli.common import run_flow, run_settings
from lookalike.cli.options import (
    Dataset,
    Epochs,
    IndexOpt,
    JsonOut,
    MethodOpt,
    Mirror,
    Promote,
    Root,
    Sets,
    Split,
    Steps,
    Verbose,
)


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
    settings, request = run_settings(dataset, split, method, epochs, index, artifacts_root, mirror, set_, steps)
    named = request.flow_parameters(settings)
    run_flow("retrieval", settings, {**named, "promote": promote}, request, json_out, verbose)


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
    settings, request = run_settings(dataset, split, None, None, index, artifacts_root, mirror, set_)
    named = request.flow_parameters(settings, drop=("method", "steps", "epochs"))
    named = {**named, "encoder_alias": encoder_alias, "promote": promote}
    run_flow("reindex", settings, named, request, json_out, verbose)
