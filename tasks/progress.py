"""Progress artifacts: a stage task's progress bars, shown on its Prefect run page as they advance.

The stage code reports through `lookalike.core.progress` (no Prefect there); a task wraps its lib
call in `progress_artifacts()`, and each bar the call opens at the top level becomes one progress
artifact of the task run, updated as the bar reports (about every 2 s or 5 %), its description
saying where it stands (e.g. `encoder: pass 2/3 · 40/100 steps · 512 img/s · ETA 00:12`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from uuid import UUID

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from lookalike.core.progress import ProgressReport, listen_to_progress


class ProgressArtifacts:
    """A progress listener: one progress artifact per bar. Showing progress never fails the work:
    the first failed call to the API is logged as a warning and the artifacts stop there."""

    def __init__(self) -> None:
        self._ids: dict[int, UUID] = {}
        self._broken = False

    def __call__(self, report: ProgressReport) -> None:
        if self._broken:
            return
        try:
            if report.bar in self._ids:
                update_progress_artifact(self._ids[report.bar], report.percent, description=report.describe())
            else:
                self._ids[report.bar] = create_progress_artifact(report.percent, description=report.describe())
        except Exception as exc:  # the API unreachable for a moment: the stage goes on
            self._broken = True
            get_run_logger().warning("progress in the Prefect UI stopped here (the work goes on): %s", exc)


@contextmanager
def progress_artifacts() -> Iterator[None]:
    """Inside a task run: its top-level progress bars become progress artifacts."""
    with listen_to_progress(ProgressArtifacts()):
        yield
