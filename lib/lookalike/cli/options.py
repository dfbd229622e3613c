"""The command-line option types the commands share (typer `Annotated` options), with their help and defaults."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Optional

import typer

from lookalike.core.settings import RUN_PARAMETERS, env_name, setting_default


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
# everywhere, read and resolved by `lookalike.serving.refs.IndexRef`.
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
