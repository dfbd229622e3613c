"""Tasks: the promotion gate, then moving `latest` (always) and `production` (when promoted)."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import deployment, flow_run

from lookalike.artifacts.aliases import PRODUCTION, set_alias
from lookalike.artifacts.promotion import promotion_decision
from lookalike.artifacts.stage_runner import StageReport
from lookalike.core.settings import PromotionSettings


@task(name="promotion-gate", cache_policy=NO_CACHE)
def check_promotion(section: PromotionSettings, root: Path, reports: dict[str, StageReport], requested: bool) -> dict:
    """Whether this run's index may become `production`, and if not, why."""
    decision = promotion_decision(section, root, reports["index"].manifest, reports["evaluation"].manifest, requested)
    if requested and not decision["promoted"]:
        get_run_logger().warning("not promoted: %s", "; ".join(decision["reasons"]))
    return decision


@task(name="aliases", cache_policy=NO_CACHE)
def promote_chain(root: Path, reports: dict[str, StageReport], promote: bool) -> list[str]:
    """Point the aliases at this run's stage keys; the alias names moved."""
    stages = {name: r.manifest.key for name, r in reports.items()}
    source = {
        "flow_run_id": str(flow_run.id),
        "flow_run_name": flow_run.name,
        "flow": flow_run.flow_name,
        "deployment": deployment.name,
    }
    names = ["latest", PRODUCTION] if promote else ["latest"]
    for name in names:
        set_alias(root, name, stages, source)
    get_run_logger().info("aliases %s -> index %s", ", ".join(names), stages["index"])
    return names
