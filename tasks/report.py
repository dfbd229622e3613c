"""Task: publish the run summary as Prefect artifacts (visible on the flow run page).

Artifacts keyed so the UI's Artifacts page keeps their history across runs:
`retrieval-summary` (markdown: stages with key, status, seconds; metrics; locations),
`retrieval-metrics` (table, with the clean scores when some queries leaked), `retrieval-grid`
(the grid picture, inlined as a data URL so it shows without the UI having to reach the worker's
disk), `collection-map` (the embeddings in 2-D, coloured by label) and, when the evaluation
found duplicates, `duplicate-groups` (table: one row per group) and `duplicates` (their picture).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_image_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from lookalike.reporting.summary import summary_markdown
from lookalike.stages.duplicates import report_groups
from lookalike.stages.pictures import png_data_url

MAX_INLINE_BYTES = 2 << 20  # a bigger picture is linked by path instead of inlined


@task(name="report", cache_policy=NO_CACHE)
def publish_report(summary: dict[str, Any]) -> None:
    create_markdown_artifact(
        summary_markdown(summary),
        key="retrieval-summary",
        description="Stages (key, status, seconds), metrics and artifact locations",
    )
    baselines = summary.get("baselines") or {}
    create_table_artifact(
        [{"metric": k, "value": v} for k, v in summary["metrics"].items()]
        + [
            {"metric": f"{name}/{k}", "value": v}
            for name, scores in baselines.items()
            for k, v in scores.items()
            if k != "clean"  # a baseline's clean scores: the clean rows below cover the run's
        ]
        + [
            {"metric": f"gain over {name}/{k}", "value": v}
            for name, g in (summary.get("gain") or {}).items()
            for k, v in g.items()
        ]
        + [
            {"metric": f"distillation/{k}", "value": v}
            for k, v in {
                **{
                    f"fraction of the teacher's {m}": f
                    for m, f in (summary.get("distillation") or {}).get("fraction", {}).items()
                },
                **({"speedup": summary["distillation"]["speedup"]} if summary.get("distillation") else {}),
            }.items()
        ]
        + [
            {"metric": f"clean/{k}", "value": v}
            for k, v in (summary.get("clean") or {}).items()
            if k != "gain" and (summary.get("leaks") or {}).get("n_leaked")
        ]
        + [{"metric": f"leaks/{k}", "value": v} for k, v in (summary.get("leaks") or {}).items() if k != "why"],
        key="retrieval-metrics",
        description="Retrieval metrics of this run",
    )
    _publish_picture(summary, "retrieval_grid", "retrieval-grid", "Queries (left) and their nearest neighbours")
    _publish_picture(
        summary, "map", "collection-map", "The collection's embeddings projected to 2-D (t-SNE), coloured by label"
    )
    publish_duplicates(summary)


def _publish_picture(summary: dict[str, Any], name: str, key: str, what: str) -> None:
    """The run's picture `artifacts[name]`, when it drew one, as the image artifact `key`."""
    if picture := summary["artifacts"].get(name):
        create_image_artifact(
            png_data_url(Path(picture), MAX_INLINE_BYTES), key=key, description=f"{what}; file: {picture}"
        )


MAX_GROUP_ROWS = 500  # table rows of the largest groups; the JSON file beside it lists them all


def publish_duplicates(summary: dict[str, Any]) -> None:
    """The evaluation's duplicate groups as a table artifact (one row per group) and their picture."""
    import json

    found = summary["artifacts"].get("duplicates")
    if not found:
        return
    record = json.loads(Path(found).read_text())
    groups = report_groups(record)
    create_table_artifact(
        [
            {
                "group": number,
                "kind": kind,
                "images": len(group["rows"]),
                "rows": " ".join(map(str, group["rows"])),
                "labels": ", ".join(sorted({str(v) for v in group["labels"] if v is not None})),
                "distances": " ".join(f"{d:.4f}" for d in group["distances"][1:]),
            }
            for number, (kind, group) in enumerate(groups[:MAX_GROUP_ROWS], start=1)
        ],
        key="duplicate-groups",
        description=f"{record['n_groups']} groups hold {record['n_images_in_groups']} of {record['n_images']} images; "
        f"threshold {record['threshold_why']}; file: {found}",
    )
    _publish_picture(summary, "duplicates_picture", "duplicates", "The largest duplicate groups (first row outlined)")
