"""Human-readable output for the CLI (rich tables on stderr-friendly consoles)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from lookalike.artifacts.catalog import score_name
from lookalike.artifacts.promotion import knn_not_compared, refused
from lookalike.core.errors import one_line

STATUS_STYLE = {"computed": "yellow", "cached": "green", "resumed": "cyan"}


def print_summary(console: Console, summary: dict[str, Any]) -> None:
    from lookalike.reporting.summary import (  # imports torch and faiss: only once there is a summary
        baseline_rows,
        baselines_line,
        distillation_line,
        duplicates_line,
        embedding_counts_line,
        leaks_line,
        recipe_lines,
        sample_line,
    )

    stages = Table(title="stages", title_justify="left")
    for column in ("stage", "key", "status", "reused", "seconds"):
        stages.add_column(column, justify="right" if column == "seconds" else "left")
    for name, s in summary["stages"].items():
        style = STATUS_STYLE.get(s["status"], "")
        stages.add_row(name, s["key"], f"[{style}]{s['status']}[/]", s.get("reused") or "", f"{s['seconds']:.1f}")
    console.print(stages)
    if counts := embedding_counts_line(summary):
        console.print(counts, highlight=False)

    metrics = Table(title="metrics", title_justify="left")
    metrics.add_column("metric")
    metrics.add_column("value", justify="right")
    for name, value in summary["metrics"].items():
        metrics.add_row(name, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(metrics)
    if table := baseline_rows(summary):
        header, rows = table
        against = Table(title="against baselines", title_justify="left")
        for column in header:  # the score names stay whole; the numbers share what width is left
            against.add_column(column, justify="left" if column == "score" else "right", no_wrap=column == "score")
        for row in rows:
            against.add_row(
                *(
                    f"{v:+.4f}"
                    if isinstance(v, float) and c.startswith("gain")
                    else f"{v:.4f}"
                    if isinstance(v, float)
                    else "—"
                    if v is None
                    else str(v)
                    for c, v in zip(header, row)
                )
            )
        console.print(against)
        console.print(baselines_line(summary), highlight=False, soft_wrap=True)
    if sample := sample_line(summary):
        console.print(f"evaluation: {sample}", highlight=False, soft_wrap=True, markup=False)
    if distilled := distillation_line(summary):
        console.print(distilled, highlight=False, soft_wrap=True, markup=False)
    if leaked := leaks_line(summary):
        console.print(f"leaks: {leaked}", highlight=False, soft_wrap=True, markup=False)

    skipped = summary.get("skipped") or []
    if skipped:
        console.print(f"[bold yellow]skipped {summary['metrics']['n_skipped']} unreadable image(s)[/]")
        for s in skipped[:10]:
            where = one_line(s["path"]) if s["path"] else f"row {s['row_id']}"
            console.print(f"  {where}: {s['reason']}", highlight=False, soft_wrap=True, markup=False)
        if len(skipped) > 10:
            console.print("  ... (all listed in the dataset manifest)")
    if found := duplicates_line(summary):
        console.print(f"duplicates: {found}", highlight=False, soft_wrap=True, markup=False)
    for line in recipe_lines(summary):
        console.print(line, highlight=False, soft_wrap=True, markup=False)
    choice = summary.get("index") or {}
    if choice.get("reason"):
        console.print(f"[bold]index[/] {choice['type']}: {choice['reason']}", highlight=False, soft_wrap=True)
    if summary.get("aliases"):
        console.print(f"[bold]aliases[/] moved here: {', '.join(summary['aliases'])}")
    if refused(summary):
        console.print(
            f"[bold yellow]not promoted[/]: {'; '.join(summary['promotion']['reasons'])}; production is unchanged",
            soft_wrap=True,
        )
    if knn_not_compared(summary):
        console.print(f"kNN accuracy was {knn_not_compared(summary)}", soft_wrap=True, highlight=False)
    console.print("[bold]artifacts[/]")
    stage_runs = summary["artifacts"].get("wandb_stage_runs") or {}
    for name, value in summary["artifacts"].items():
        if value and name != "wandb_stage_runs":
            console.print(f"  {name}: {value}", soft_wrap=True)
    if stage_runs:
        console.print(f"  wandb lineage runs: {', '.join(stage_runs)}", soft_wrap=True)
    run_dir = summary["artifacts"].get("wandb_run_dir")
    if run_dir and summary["artifacts"].get("wandb_mode") == "offline":
        runs = " ".join([run_dir, *stage_runs.values()])
        console.print(f"  (W&B offline runs; upload later with: wandb sync {runs})", soft_wrap=True)


def print_neighbours(console: Console, caption: str, neighbours: list[dict[str, Any]]) -> None:
    table = Table(title=caption, title_justify="left")
    for column in ("rank", "row", "distance", "label", "path"):
        table.add_column(column)
    for rank, n in enumerate(neighbours, start=1):
        table.add_row(str(rank), str(n["row"]), f"{n['distance']:.4f}", str(n["label"] or ""), str(n["path"] or ""))
    console.print(table)


def print_duplicates(console: Console, report: dict[str, Any], max_rows: int = 30) -> None:
    """The groups of `lookalike duplicates`, largest first (at most `max_rows`), then the threshold and why."""
    table = Table(title="duplicate groups", title_justify="left")
    for column in ("kind", "images", "rows", "labels", "distances from the first"):
        table.add_column(column)
    from lookalike.stages.duplicates import report_groups

    groups = report_groups(report)
    for kind, g in groups[:max_rows]:
        labels = sorted({str(v) for v in g["labels"] if v is not None})
        table.add_row(
            kind,
            str(len(g["rows"])),
            " ".join(map(str, g["rows"][:12])) + (" …" if len(g["rows"]) > 12 else ""),
            ", ".join(labels[:4]),
            " ".join(f"{d:.3f}" for d in g["distances"][1:8]),
        )
    console.print(table)
    if len(groups) > max_rows:
        console.print(f"... and {len(groups) - max_rows} smaller groups (--json lists them all)")
    console.print(
        f"{report['n_groups']} groups ({report['n_exact_groups']} exact, {report['n_near_groups']} near) "
        f"hold {report['n_images_in_groups']} of {report['n_images']} images; threshold {report['threshold_why']}",
        highlight=False,
        soft_wrap=True,
    )


def print_indexes(console: Console, listing: dict[str, Any]) -> None:
    """`lookalike ls`: each index with its scores beside the baselines', then where each alias points."""
    table = Table(title=f"indexes under {listing['root']}", title_justify="left")
    for column in ("index", "created", "type", "images", "method", "scores (baselines)", "aliases"):
        table.add_column(column, no_wrap=column in ("index", "created"))
    for entry in listing["indexes"]:
        baselines = entry["baselines"] or {}
        lines = []
        for name, value in entry["metrics"].items():
            if not isinstance(value, float) or name in ("self_retrieval_at_1", "recall_at_10"):
                continue
            against = ", ".join(
                f"{b} {m[name]:.3f}" for b, m in baselines.items() if isinstance(m.get(name), (int, float))
            )
            lines.append(f"{score_name(name)} {value:.3f}" + (f" ({against})" if against else ""))
        table.add_row(
            entry["key"],
            _when(entry["created"]),
            entry["chosen"] if entry["type"] == "auto" else str(entry["type"]),
            str(entry["n_images"]),
            str(entry["method"] or ""),
            "\n".join(lines) or "not evaluated",
            ", ".join(entry["aliases"]),
        )
    if listing["indexes"]:
        console.print(table)
    else:
        console.print(f"no finished index under {listing['root']} yet: `lookalike run` builds one", highlight=False)
    for name, alias in listing["aliases"].items():
        console.print(
            f"[bold]{name}[/] -> index {alias['stages'].get('index')} (set {_when(alias['set_at'])}"
            f"{_moved_by(alias['source'])})",
            highlight=False,
            soft_wrap=True,
        )
    if listing.get("history") is not None:
        history = Table(title="alias history (oldest first)", title_justify="left")
        for column in ("set", "alias", "index", "evaluation", "by"):
            history.add_column(column)
        for move in listing["history"]:
            stages = move["stages"]
            history.add_row(
                _when(move["set_at"]),
                move["name"],
                stages.get("index", ""),
                stages.get("evaluation", ""),
                _moved_by(move["source"]).removeprefix(", by "),
            )
        console.print(history)


def _when(timestamp: str) -> str:
    """'2026-12-04T15:35:22+00:00' -> '2026-12-04 15:35' (UTC, as recorded)."""
    return timestamp[:16].replace("T", " ")


def _moved_by(source: dict[str, Any]) -> str:
    """Who moved an alias, from what it recorded: a command, or a flow run."""
    if source.get("command"):
        return f", by {source['command']}"
    if source.get("flow_run_name"):
        return f", by flow run {source['flow_run_name']}"
    return ""
