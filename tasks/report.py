"""Task: publish the run summary as Prefect artifacts (visible on the flow run page).

Three artifacts, keyed so the UI's Artifacts page keeps their history across runs:
`retrieval-summary` (markdown: stages with key, status, seconds; metrics; locations),
`retrieval-metrics` (table) and `retrieval-grid` (the grid picture, inlined as a data
URL so it shows without the UI having to reach the worker's disk).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_image_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from lookalike.reporting.summary import summary_markdown
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
        + [{"metric": f"{name}/{k}", "value": v} for name, scores in baselines.items() for k, v in scores.items()]
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
        ],
        key="retrieval-metrics",
        description="Retrieval metrics of this run",
    )
    grid = summary["artifacts"].get("retrieval_grid")
    if grid:
        create_image_artifact(
            png_data_url(Path(grid), MAX_INLINE_BYTES),
            key="retrieval-grid",
            description=f"Queries (left) and their nearest neighbours; file: {grid}",
        )
