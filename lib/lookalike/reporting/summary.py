"""The run summary: one dict shared by the CLI (`--json`), Prefect artifacts and W&B.

Keys are a contract other tools rely on: `stages` (name -> key, status, seconds),
`metrics`, `artifacts`, `skipped`, `aliases` (the alias names this run moved to its
chain, e.g. ['latest', 'production']), `promotion` (the gate's decision), `index` (what
was built and, for `index.type=auto`, why), `sampled` (the evaluation's sample, when it took one).
Extend, never rename. A `resumed` stage says what it reused
(`reused`: '3/10 shards', '2/3 epochs'). The `embeddings` stage also says how many images
this run sent through the encoder (`images_embedded`) and how many it took from earlier
embeddings stages by content hash (`images_reused`, the incremental add); both are 0 when
the stage was cached.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lookalike.artifacts.catalog import score_name, scores
from lookalike.artifacts.promotion import knn_not_compared, refused
from lookalike.artifacts.stage_runner import StageReport
from lookalike.core.errors import one_line
from lookalike.core.manifest import Manifest, stage_dir
from lookalike.stages.dataset.profile import describe_profile
from lookalike.stages.duplicates import PICTURE as DUPLICATES_PICTURE
from lookalike.stages.duplicates import REPORT as DUPLICATES
from lookalike.stages.encoder.checkpoint import ENCODER_FILE
from lookalike.stages.encoder.training import LOSS_CURVE
from lookalike.stages.evaluation.collection_map import MAP_PICTURE, MAP_POINTS_FILE
from lookalike.stages.evaluation.stage import GRID
from lookalike.stages.index.factory import INDEX_FILE


def build_summary(
    root: Path,
    reports: dict[str, StageReport],
    tracking: dict[str, Any] | None = None,
    mirror: dict[str, Any] | None = None,
    aliases: list[str] | None = None,
    promotion: dict[str, Any] | None = None,
) -> dict[str, Any]:
    dataset, index, evaluation = (reports[s].manifest for s in ("dataset", "index", "evaluation"))
    metrics = {
        **scores(index, evaluation),  # the index's own and its evaluation's, as `lookalike ls` shows them
        "n_images": dataset.stats["n_images"],
        "n_skipped": dataset.stats["n_skipped"],
        # what the images are like: sizes (min, median, max) and grayscale or colour
        "images": describe_profile(dataset.stats.get("profile")),
        "dim": index.stats["dim"],
        "index_bytes": index.stats["bytes"],
    }

    def path(stage: str, name: str) -> str | None:
        file = stage_dir(root, stage, reports[stage].manifest.key) / name
        return str(file) if any(f.path == name for f in reports[stage].manifest.files) else None

    artifacts = {
        "root": str(root),
        "encoder": path("encoder", ENCODER_FILE),
        "index": path("index", INDEX_FILE),
        "retrieval_grid": path("evaluation", GRID),
        "duplicates": path("evaluation", DUPLICATES),
        "duplicates_picture": path("evaluation", DUPLICATES_PICTURE),
        "map": path("evaluation", MAP_PICTURE),  # the collection's embeddings in 2-D, coloured by label
        "map_points": path("evaluation", MAP_POINTS_FILE),
        "loss_curve": path("encoder", LOSS_CURVE),
        "wandb_run_dir": (tracking or {}).get("run_dir"),
        "wandb_mode": (tracking or {}).get("mode"),
        "wandb_url": (tracking or {}).get("url"),
        # the runs that logged this flow run's stage artifacts (lineage), by stage
        "wandb_stage_runs": (tracking or {}).get("stage_runs"),
        "mirror": mirror,
    }
    stages = {
        name: {"key": r.manifest.key, "status": r.status, "seconds": r.seconds, "reused": reused(r)}
        for name, r in reports.items()
    }
    if "embeddings" in stages:
        stages["embeddings"].update(embedding_counts(reports["embeddings"]))
    # Unreadable images the dataset stage skipped (row_id, path, reason); the manifest lists
    # the same (up to its cap) and `metrics.n_skipped` counts them all.
    skipped = list(dataset.stats.get("skipped", []))
    return {
        "stages": stages,
        "metrics": metrics,
        "artifacts": artifacts,
        "skipped": skipped,
        "aliases": list(aliases or []),
        "promotion": promotion,
        "index": index_choice(index.stats),
        "encoder": encoder_recipe(reports["encoder"].manifest) if "encoder" in reports else None,
        # the same scores for raw pixels and the untrained encoder on the same queries, and the run's gain over each
        "baselines": evaluation.stats.get("baselines"),
        "gain": evaluation.stats.get("gain"),
        # method=distill: the student's scores as fractions of its teacher's, and how much faster it embeds
        "distillation": evaluation.stats.get("distillation"),
        # evaluation.duplicates: group counts, the near-duplicate threshold and why (the groups: artifacts.duplicates)
        "duplicates": evaluation.stats.get("duplicates"),
        # held-out queries with an exact or near copy in the index, and the scores without them
        "leaks": evaluation.stats.get("leaks"),
        "clean": evaluation.stats.get("clean"),
        # {"n": rows searched, "of": rows indexed} when the evaluation ran on a sample (evaluation.sample_size)
        "sampled": evaluation.stats.get("sampled"),
    }


def encoder_recipe(encoder: Manifest) -> dict[str, Any]:
    """How the encoder was trained and why: `steps` (and `steps_why`: the budget's reason),
    `pretrain_seconds`, and `recipe`: each setting chosen from the data (`auto`) with its value and reason."""
    stats, settings = encoder.stats, encoder.settings
    why = dict(stats.get("recipe") or {})
    steps_why = why.pop("steps", stats.get("steps_why"))
    return {
        "steps": stats.get("steps"),
        "steps_why": steps_why,
        "pretrain_seconds": stats.get("pretrain_seconds"),
        "recipe": {name: {"value": settings.get(name), "why": reason} for name, reason in why.items()},
    }


def recipe_lines(summary: dict[str, Any]) -> list[str]:
    """'encoder: 700 steps (100 passes of 7 steps), 213 s', one 'input_size 32: why' line per auto
    setting, and the index's whitening."""
    encoder = summary.get("encoder") or {}
    whitening = (summary.get("index") or {}).get("whitening")
    tail = [f"index whitening: {whitening['why']}"] if whitening else []
    if encoder.get("steps") is None:
        return tail
    seconds = f", {encoder['pretrain_seconds']:.0f} s of pretraining" if encoder.get("pretrain_seconds") else ""
    lines = [f"encoder: {encoder['steps']} steps ({encoder['steps_why']}){seconds}"]
    lines += [f"  {name} {v['value']}: {v['why']}" for name, v in encoder.get("recipe", {}).items()]
    return lines + tail


def index_choice(stats: dict[str, Any]) -> dict[str, Any]:
    """What was built and, for `auto`, why: `type` (as configured), `chosen` (the preset),
    `factory`, `search_params`, `whitening` (power, applied, dim, why), and `reason` / `target_met` / `heldout_recall_at_10` for auto."""
    auto = stats.get("auto") or {}
    return {
        "type": stats.get("type"),
        "chosen": stats.get("chosen", stats.get("type")),
        "factory": stats.get("factory"),
        "search_params": stats.get("search_params", {}),
        "whitening": stats.get("whitening"),
        "reason": auto.get("reason"),
        "target_met": auto.get("target_met"),
        "heldout_recall_at_10": auto.get("heldout_recall_at_10"),
    }


def reused(report: StageReport) -> str | None:
    """What a `resumed` stage took over from an interrupted attempt, e.g. '3/10 shards'."""
    if report.status != "resumed":
        return None
    stats = report.manifest.stats
    if "shards_reused" in stats:
        return f"{stats['shards_reused']}/{stats['n_shards']} shards"
    if "resumed_from_epoch" in stats:
        return f"{stats['resumed_from_epoch']}/{len(stats['losses'])} epochs"
    return None


def embedding_counts(report: StageReport) -> dict[str, int]:
    """Images this run embedded and took over by content hash (0 and 0 when cached: none of either ran)."""
    if report.status == "cached":
        return {"images_embedded": 0, "images_reused": 0}
    stats = report.manifest.stats
    return {"images_embedded": stats.get("images_embedded", 0), "images_reused": stats.get("images_reused", 0)}


def embedding_counts_line(summary: dict[str, Any]) -> str | None:
    """'embeddings: 3 images embedded, 29 reused by content hash', or None when nothing ran."""
    stage = summary["stages"].get("embeddings", {})
    if stage.get("status") in (None, "cached"):
        return None
    return (
        f"embeddings: {stage.get('images_embedded', 0)} images embedded, "
        f"{stage.get('images_reused', 0)} reused by content hash"
    )


def baseline_rows(summary: dict[str, Any]) -> tuple[list[str], list[list[Any]]] | None:
    """(header, rows): each score of the run beside every baseline's and the gain over it; None
    when no baseline was measured."""
    measured = summary.get("baselines") or {}
    if not measured:
        return None
    names = list(measured)
    header = ["score", "this run", *names, *(f"gain over {n}" for n in names)]
    # clean: leaks_line; n_indexed: the rows each baseline searched (sample_line says when it is a sample)
    scores = [s for s in next(iter(measured.values())) if s not in ("what", "clean", "n_indexed")]
    rows = [
        [
            score,
            summary["metrics"].get(score),
            *(measured[n].get(score) for n in names),
            *((summary.get("gain") or {}).get(n, {}).get(score) for n in names),
        ]
        for score in scores
    ]
    return header, rows


def baselines_line(summary: dict[str, Any]) -> str | None:
    """'baselines (same queries, exact search): pixels = pixels 28x28; init = ...'."""
    measured = summary.get("baselines") or {}
    if not measured:
        return None
    return "baselines (same queries, exact search): " + "; ".join(
        f"{n} = {m.get('what', n)}" for n, m in measured.items()
    )


def distillation_line(summary: dict[str, Any]) -> str | None:
    """'distilled from X: 0.97 of its precision@10, 0.95 of its kNN@10, at 3.7x its embedding speed (...)'."""
    report = summary.get("distillation")
    if not report:
        return None
    fractions = ", ".join(
        f"{v:.3f} of its {'kNN accuracy' if name == 'knn_accuracy' else name.replace('_at_', '@')}"
        for name, v in report["fraction"].items()
        if v is not None
    )
    speed = report["images_per_second"]
    return (
        f"distilled from {report['teacher']}: {fractions or 'no labelled queries to compare'}; "
        f"{report['speedup']}x its embedding speed ({speed['student']:.0f} vs {speed['teacher']:.0f} images/s "
        f"on {report['speed_images']} images)"
    )


def duplicates_line(summary: dict[str, Any]) -> str | None:
    """'3 groups (1 exact, 2 near) hold 7 of 96 images; threshold 0.04183: ...', or None when not computed."""
    found = summary.get("duplicates")
    if not found:
        return None
    return (
        f"{found['n_groups']} groups ({found['n_exact_groups']} exact, {found['n_near_groups']} near) hold "
        f"{found['n_images_in_groups']} of {found['n_images']} images; threshold {found['threshold_why']}"
    )


def sample_line(summary: dict[str, Any]) -> str | None:
    """'scores, baselines, leaks and map on a sample of 50000 of 1000000 images (evaluation.sample_size);
    duplicates of those images in all of them', or None when the evaluation searched every indexed image."""
    sampled = summary.get("sampled")
    if not sampled:
        return None
    return (
        f"scores, baselines, leaks and map on a sample of {sampled['n']} of {sampled['of']} images "
        "(evaluation.sample_size); duplicates of those images in all of them"
    )


def leaks_line(summary: dict[str, Any]) -> str | None:
    """'3 of 64 held-out queries leak (2 exact, 1 near); clean precision@10 0.7100 (raw 0.7300), ...
    over 61 queries', or None when not measured (no labelled queries, or an older evaluation)."""
    leaks, clean = summary.get("leaks"), summary.get("clean")
    if not leaks or not clean:
        return None
    metrics = summary["metrics"]
    protocol = metrics.get("evaluation_protocol") or ""
    kind = "held-out" if protocol.startswith("held-out") else "leave-one-out"
    n = clean.get("n_queries", 0) + leaks["n_leaked"]
    scores = ", ".join(
        f"{score_name(name)} {_fmt(clean.get(name))} (raw {_fmt(metrics.get(name))})"
        for name in clean
        if name not in ("n_queries", "gain")
    )
    return (
        f"{leaks['n_leaked']} of {n} {kind} queries leak ({leaks['exact']} exact, {leaks['near']} near); "
        f"clean {scores} over {clean.get('n_queries', 0)} queries"
    )


def summary_markdown(summary: dict[str, Any]) -> str:
    """The summary as a markdown report (Prefect UI artifact)."""
    lines = ["# Retrieval pipeline", "", "| stage | key | status | reused | seconds |", "|---|---|---|---|---|"]
    for name, s in summary["stages"].items():
        lines.append(f"| {name} | `{s['key']}` | {s['status']} | {s.get('reused') or ''} | {s['seconds']:.1f} |")
    if counts := embedding_counts_line(summary):
        lines += ["", counts]
    lines += ["", "| metric | value |", "|---|---|"]
    for name, value in summary["metrics"].items():
        lines.append(f"| {name} | {_fmt(value)} |")
    if table := baseline_rows(summary):
        header, rows = table
        lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
        lines += ["", baselines_line(summary)]
    if sample := sample_line(summary):
        lines += ["", f"**Evaluation**: {sample}"]
    if distilled := distillation_line(summary):
        lines += ["", distilled]
    if summary.get("aliases"):
        lines += ["", f"Aliases moved to this index: {', '.join(summary['aliases'])}"]
    if refused(summary):
        lines += ["", f"**Not promoted**: {'; '.join(summary['promotion']['reasons'])}. `production` is unchanged."]
    if knn_not_compared(summary):
        lines += ["", f"kNN accuracy was {knn_not_compared(summary)}."]
    if recipe := recipe_lines(summary):
        lines += ["", f"**Encoder**: {recipe[0].removeprefix('encoder: ')}", ""]
        lines += [f"- `{line.strip().split(' ', 1)[0]}` {line.strip().split(' ', 1)[1]}" for line in recipe[1:]]
    choice = summary.get("index") or {}
    if choice.get("reason"):
        lines += ["", f"**Index** ({choice['type']}): {choice['reason']}."]
    if found := duplicates_line(summary):
        lines += ["", f"**Duplicates**: {found}"]
    if leaked := leaks_line(summary):
        lines += ["", f"**Leaks**: {leaked}; near threshold {summary['leaks']['why']}"]
    lines += ["", "## Artifacts", ""]
    for name, value in summary["artifacts"].items():
        if value:
            lines.append(f"- **{name}**: `{value}`")
    if summary.get("skipped"):
        lines += [
            "",
            f"## Skipped images ({summary['metrics']['n_skipped']})",
            "",
            "| row | path | reason |",
            "|---|---|---|",
        ]
        for s in summary["skipped"]:
            lines.append(f"| {s['row_id']} | `{one_line(s['path'] or '')}` | {s['reason']} |")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "—" if value is None else str(value)
