"""The promotion gate: may a finished run's index become `production`?

A run asks to be promoted (`promote=True`, the default); the gate then checks its measured
quality against `PromotionSettings`: self-retrieval@1 and recall@10 vs exact search from the
index stage, its precision@k against the evaluation's baselines (raw pixels and the untrained
encoder, on the same queries: an encoder that learned nothing is not promoted), and its kNN accuracy against the current `production` index's, when both were
evaluated on labels with the same queries: the same protocol (held-out or leave-one-out), k
and query set. Otherwise the two numbers measure different things; `checks.knn_accuracy`
then says why they were not compared, and the gate does not refuse on them. A refused run
still completes and moves `latest`; `production` stays.

When some of the evaluation's queries leak (an exact or near copy of them is indexed:
`stats["leaks"]`), every comparison is made on the clean numbers (`stats["clean"]`, the same
scores over the queries that do not leak), on both sides, and `checks.scored_on` says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lookalike.artifacts.aliases import PRODUCTION, AliasError, read_alias
from lookalike.core.manifest import IntegrityError, Manifest
from lookalike.core.settings import PromotionSettings


def promotion_decision(
    section: PromotionSettings, root: Path, index: Manifest, evaluation: Manifest, requested: bool = True
) -> dict[str, Any]:
    """{"requested", "promoted", "reasons" (why not, one line each), "production" (the index
    key production pointed at before), "checks" (what was compared)}."""
    decision: dict[str, Any] = {
        "requested": requested,
        "promoted": False,
        "reasons": [],
        "production": None,
        "checks": {},
    }
    if not requested:
        return decision
    reasons = decision["reasons"]
    self_at_1 = index.stats.get("self_retrieval_at_1")
    recall = index.stats.get("recall_at_10")
    decision["checks"] = {
        "self_retrieval_at_1": [self_at_1, section.min_self_retrieval_at_1],
        "recall_at_10": [recall, section.min_recall_at_10],
    }
    if self_at_1 is not None and self_at_1 < section.min_self_retrieval_at_1:
        reasons.append(
            f"self_retrieval_at_1 {self_at_1:.4f} < promotion.min_self_retrieval_at_1 {section.min_self_retrieval_at_1}"
        )
    if recall is not None and recall < section.min_recall_at_10:
        reasons.append(
            f"recall_at_10 {recall:.4f} vs exact search < promotion.min_recall_at_10 {section.min_recall_at_10}"
        )

    scored = gate_scores(evaluation)
    if scored is not evaluation.stats:
        leaks = evaluation.stats["leaks"]
        decision["checks"]["scored_on"] = (
            f"clean queries: {leaks['n_leaked']} of {evaluation.stats.get('n_queries')} leak "
            f"({leaks['exact']} exact, {leaks['near']} near)"
        )
    reasons += _baseline_reasons(section, scored, decision["checks"])

    try:
        current = _production_evaluation(root)
    except IntegrityError as exc:
        # production's own numbers cannot be trusted (edited, or its folder rebuilt since it was promoted):
        # nothing to compare with, which must not stop a good run from replacing it
        current = None
        decision["production"] = read_alias(root, PRODUCTION).stages.get("index")
        decision["checks"]["knn_accuracy"] = f"not compared with production's: {exc}"
    if current is not None:
        decision["production"] = current.inputs.get("index")
        before, after = gate_scores(current).get("knn_accuracy"), scored.get("knn_accuracy")
        if before is not None and after is not None and decision["production"] != index.key:
            apart = query_set_difference(current, evaluation)
            if apart:  # other queries: the two numbers measure different things
                decision["checks"]["knn_accuracy"] = f"not compared with production's: {apart}"
            else:
                decision["checks"]["knn_accuracy"] = [after, before, section.max_knn_drop]
                if before - after > section.max_knn_drop:
                    reasons.append(
                        f"knn_accuracy {after:.4f} is {before - after:.4f} below production's "
                        f"{before:.4f} (index {decision['production']}); promotion.max_knn_drop is "
                        f"{section.max_knn_drop}"
                    )
    decision["promoted"] = not reasons
    return decision


BASELINE_MARGINS = {"pixels": "min_gain_over_pixels", "init": "min_gain_over_init"}


def gate_scores(evaluation: Manifest) -> dict[str, Any]:
    """The scores the gate compares: `stats["clean"]` (with each baseline's clean scores) when some
    queries leaked, else the evaluation's own stats."""
    stats = evaluation.stats
    if not (stats.get("leaks") or {}).get("n_leaked") or not stats.get("clean"):
        return stats
    baselines = {
        name: {"what": m.get("what"), **m.get("clean", {})} for name, m in (stats.get("baselines") or {}).items()
    }
    return {**stats["clean"], "k": stats.get("k"), "baselines": baselines, "clean": True}


def _baseline_reasons(section: PromotionSettings, stats: dict[str, Any], checks: dict[str, Any]) -> list[str]:
    """The encoder against its baselines on precision@k (the same queries; `stats` from `gate_scores`):
    one reason line per baseline it does not beat by the configured margin. `checks` records each comparison."""
    k = stats.get("k", 10)
    score = f"precision_at_{k}"
    run = stats.get(score)
    on = " on the clean queries" if stats.get("clean") is True else ""
    reasons = []
    for baseline, setting in BASELINE_MARGINS.items():
        measured = (stats.get("baselines") or {}).get(baseline) or {}
        margin = getattr(section, setting)
        if run is None or measured.get(score) is None:
            checks[f"gain_over_{baseline}"] = (
                "not measured (no labelled queries, or evaluation.baselines leaves it out)"
            )
            continue
        gain = run - measured[score]
        checks[f"gain_over_{baseline}"] = [round(gain, 6), margin]
        if gain < margin:
            reasons.append(
                f"{score} {run:.4f} is {gain:+.4f} over the {baseline} baseline's {measured[score]:.4f} "
                f"({measured.get('what', baseline)}){on}; promotion.{setting} is {margin}"
            )
    teacher = (stats.get("baselines") or {}).get("teacher") or {}
    if section.min_teacher_fraction and run is not None and teacher.get(score):
        fraction = run / teacher[score]
        checks["teacher_fraction"] = [round(fraction, 4), section.min_teacher_fraction]
        if fraction < section.min_teacher_fraction:
            reasons.append(
                f"{score} {run:.4f} keeps {fraction:.3f} of the teacher's {teacher[score]:.4f} "
                f"({teacher.get('what', 'teacher')}); promotion.min_teacher_fraction is {section.min_teacher_fraction}"
            )
    return reasons


def query_set(evaluation: Manifest) -> dict[str, Any]:
    """What an evaluation's scores were measured on: protocol, k, the dataset key of the
    queries (the held-out snapshot, or the indexed dataset for leave-one-out) and their number."""
    protocol = evaluation.stats.get("protocol", "leave-one-out")
    queries = evaluation.inputs.get("dataset") if protocol == "leave-one-out" else evaluation.inputs.get("queries")
    return {
        "protocol": protocol,
        "k": evaluation.stats.get("k"),
        "queries": queries,
        "n_queries": evaluation.stats.get("n_queries"),
    }


def query_set_difference(before: Manifest, after: Manifest) -> str | None:
    """None when two evaluations used the same queries, else what differs, e.g.
    'protocol held-out:test vs leave-one-out; queries 3f2a.. vs 9c0d..'."""
    a, b = query_set(before), query_set(after)
    differ = [f"{name} {a[name]} vs {b[name]}" for name in a if a[name] != b[name]]
    return "; ".join(differ) or None


def knn_not_compared(summary: dict[str, Any]) -> str | None:
    """Why the gate did not compare this run's kNN accuracy with production's, if it did not."""
    check = ((summary.get("promotion") or {}).get("checks") or {}).get("knn_accuracy")
    return check if isinstance(check, str) else None


def refused(summary: dict[str, Any]) -> bool:
    """The run summary says the run asked to be promoted and the gate said no."""
    promotion = summary.get("promotion") or {}
    return bool(promotion.get("requested")) and not promotion.get("promoted")


def _production_evaluation(root: Path) -> Manifest | None:
    try:
        alias = read_alias(root, PRODUCTION)
    except AliasError:
        return None
    # through the alias: production's metrics are checked against the sha256 it recorded
    return alias.manifest(root, "evaluation") if "evaluation" in alias.stages else None
