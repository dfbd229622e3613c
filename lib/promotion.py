"""The promotion gate: may a finished run's index become `production`?

A run asks to be promoted (`promote=True`, the default); the gate then checks its measured
quality against `PromotionSettings`: self-retrieval@1 and recall@10 vs exact search from the
index stage, and its kNN accuracy against the current `production` index's (when both were
evaluated on labels). A refused run still completes and moves `latest`; `production` stays.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lib.aliases import PRODUCTION, AliasError, read_alias
from lib.config import PromotionSettings
from lib.manifest import Manifest, read_manifest


def promotion_decision(section: PromotionSettings, root: Path, index: Manifest, evaluation: Manifest,
                       requested: bool = True) -> dict[str, Any]:
    """{"requested", "promoted", "reasons" (why not, one line each), "production" (the index
    key production pointed at before), "checks" (what was compared)}."""
    decision: dict[str, Any] = {"requested": requested, "promoted": False, "reasons": [], "production": None,
                                "checks": {}}
    if not requested:
        return decision
    reasons = decision["reasons"]
    self_at_1 = index.stats.get("self_retrieval_at_1")
    recall = index.stats.get("recall_at_10")
    decision["checks"] = {"self_retrieval_at_1": [self_at_1, section.min_self_retrieval_at_1],
                          "recall_at_10": [recall, section.min_recall_at_10]}
    if self_at_1 is not None and self_at_1 < section.min_self_retrieval_at_1:
        reasons.append(f"self_retrieval_at_1 {self_at_1:.4f} < promotion.min_self_retrieval_at_1 "
                       f"{section.min_self_retrieval_at_1}")
    if recall is not None and recall < section.min_recall_at_10:
        reasons.append(f"recall_at_10 {recall:.4f} vs exact search < promotion.min_recall_at_10 {section.min_recall_at_10}")

    current = _production_evaluation(root)
    if current is not None:
        decision["production"] = current.inputs.get("index")
        before, after = current.stats.get("knn_accuracy"), evaluation.stats.get("knn_accuracy")
        if before is not None and after is not None and decision["production"] != index.key:
            decision["checks"]["knn_accuracy"] = [after, before, section.max_knn_drop]
            if before - after > section.max_knn_drop:
                reasons.append(f"knn_accuracy {after:.4f} is {before - after:.4f} below production's {before:.4f} "
                               f"(index {decision['production']}); promotion.max_knn_drop is {section.max_knn_drop}")
    decision["promoted"] = not reasons
    return decision


def refused(summary: dict[str, Any]) -> bool:
    """The run summary says the run asked to be promoted and the gate said no."""
    promotion = summary.get("promotion") or {}
    return bool(promotion.get("requested")) and not promotion.get("promoted")


def _production_evaluation(root: Path) -> Manifest | None:
    try:
        alias = read_alias(root, PRODUCTION)
    except AliasError:
        return None
    key = alias.stages.get("evaluation")
    return read_manifest(root, "evaluation", key) if key else None
