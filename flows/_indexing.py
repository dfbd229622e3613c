"""What both flows do once they have an encoder: embed, index, evaluate, mirror, publish;
and the held-out query split both snapshot beside their dataset.

Called from inside a flow; wires tasks only (no computation, no I/O of its own).
"""

from __future__ import annotations

from typing import Any

from lookalike.artifacts.stage_runner import StageReport
from lookalike.core.settings import Settings
from lookalike.reporting.summary import build_summary
from lookalike.tasks.aliases import check_promotion, promote_chain
from lookalike.tasks.dataset import snapshot_dataset
from lookalike.tasks.embeddings import embed_images
from lookalike.tasks.evaluation import evaluate_index, resolve_query_split
from lookalike.tasks.index import index_embeddings
from lookalike.tasks.mirror import mirror_aliases_to_s3, mirror_to_s3
from lookalike.tasks.report import publish_report
from lookalike.tasks.stage import call_stage
from lookalike.tasks.tracking import publish_to_wandb, track_stage


def snapshot_queries(settings: Settings) -> StageReport | None:
    """The evaluation's held-out query split, snapshotted by the dataset stage (task run
    `dataset-queries`), or None for leave-one-out. Run before pretraining, so a wrong split
    name fails the run in seconds."""
    section = resolve_query_split(settings.dataset, settings.evaluation, settings.artifacts_root)
    if section is None:
        return None
    return call_stage(
        snapshot_dataset.with_options(task_run_name="dataset-queries"), section=section, root=settings.artifacts_root
    )


def index_and_publish(
    settings: Settings,
    reports: dict[str, StageReport],
    tracking: dict[str, Any],
    promote: bool,
    queries: StageReport | None = None,
    stage_runs: dict[str, str | None] | None = None,
) -> dict[str, Any]:
    """Run embeddings → index → evaluation (+ mirror), then promote and report; the run summary.

    `queries` is the held-out split's snapshot (`snapshot_queries`); None evaluates leave-one-out.
    `stage_runs` holds where the W&B runs of the stages already done logged them (`track_stage`).
    """
    stage_runs = dict(stage_runs or {})
    root = settings.artifacts_root
    reports["embeddings"] = call_stage(
        embed_images.with_options(retries=settings.embeddings.retries),
        section=settings.embeddings,
        dataset=reports["dataset"].manifest,
        encoder=reports["encoder"].manifest,
        root=root,
    )
    stage_runs["embeddings"] = track_stage(settings, tracking, reports, "embeddings")
    reports["index"] = call_stage(
        index_embeddings, section=settings.index, embeddings=reports["embeddings"].manifest, root=root
    )
    stage_runs["index"] = track_stage(settings, tracking, reports, "index")
    reports["evaluation"] = call_stage(
        evaluate_index,
        section=settings.evaluation,
        dataset=reports["dataset"].manifest,
        embeddings=reports["embeddings"].manifest,
        index=reports["index"].manifest,
        root=root,
        queries=queries.manifest if queries is not None else None,
    )

    mirrored = None
    if settings.mirror.url:
        stages = [reports[s].manifest for s in settings.mirror.stages if s in reports]
        mirror_task = mirror_to_s3.with_options(retries=settings.mirror.retries)
        state = mirror_task(settings.mirror, root, stages, return_state=True)
        # A failed mirror never loses the local result: report it and carry on.
        mirrored = state.result() if state.is_completed() else {"failed": str(state.message)}

    promotion = check_promotion(settings.promotion, root, reports, promote)
    aliases = promote_chain(root, reports, promotion["promoted"])
    if isinstance(mirrored, list):  # the stage folders went up: now the aliases that name them
        alias_task = mirror_aliases_to_s3.with_options(retries=settings.mirror.retries)
        alias_state = alias_task(settings.mirror, root, aliases, return_state=True)
        if not alias_state.is_completed():
            mirrored = [*mirrored, {"failed": str(alias_state.message)}]
    logged = {stage: where for stage, where in stage_runs.items() if where}
    summary = build_summary(root, reports, {**tracking, "stage_runs": logged or None}, mirrored, aliases, promotion)
    published = publish_to_wandb(settings, reports, summary, return_state=True)
    if not published.is_completed():  # W&B never costs the local result
        summary["artifacts"]["wandb_error"] = str(published.message)
    publish_report(summary)
    return summary
