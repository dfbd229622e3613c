"""Task: publish the run summary as Prefect artifacts (visible on the flow run page)."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from lib.summary import summary_markdown


@task(name="report", cache_policy=NO_CACHE)
def publish_report(summary: dict[str, Any]) -> None:
    create_markdown_artifact(summary_markdown(summary), key="retrieval-summary",
                             description="Stages (key, status, seconds), metrics and artifact locations")
    create_table_artifact([{"metric": k, "value": v} for k, v in summary["metrics"].items()],
                          key="retrieval-metrics", description="Retrieval metrics of this run")
