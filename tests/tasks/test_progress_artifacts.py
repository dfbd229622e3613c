"""tasks/progress.py without a Prefect server: each top-level bar is one progress artifact, updated as it
reports, and a failing API stops the artifacts, never the work. Prefect's artifact calls are recorded
here instead of sent; the bars themselves: tests/core/test_progress.py."""

from __future__ import annotations

import logging
from uuid import UUID, uuid4

import pytest

import lookalike.tasks.progress as task_progress
from lookalike.core.progress import progress


@pytest.fixture
def calls(monkeypatch) -> list[tuple]:
    """What reached Prefect's artifact API: ("create", id, percent, description) / ("update", ...)."""
    sent: list[tuple] = []

    def create(progress: float, description: str | None = None) -> UUID:
        artifact = uuid4()
        sent.append(("create", artifact, progress, description))
        return artifact

    def update(artifact_id: UUID, progress: float, description: str | None = None) -> None:
        sent.append(("update", artifact_id, progress, description))

    monkeypatch.setattr(task_progress, "create_progress_artifact", create)
    monkeypatch.setattr(task_progress, "update_progress_artifact", update)
    monkeypatch.setattr(task_progress, "get_run_logger", lambda: logging.getLogger("lookalike.tests.progress"))
    return sent


def test_each_top_level_bar_is_one_artifact_updated_until_it_finishes(calls):
    with task_progress.progress_artifacts():
        with progress(4, "embeddings", unit="img") as first:
            with progress(2, "nested") as inner:  # inside a reporting bar: terminal only
                inner.update(2)
            first.update(4)
        with progress(None, "listing", unit="file") as second:
            second.update(3)
    with progress(1, "after the block") as outside:
        outside.update()
    created = [call for call in calls if call[0] == "create"]
    assert [(percent, text.split(" · ")[0]) for _, _, percent, text in created] == [
        (0.0, "embeddings"),
        (0.0, "listing"),
    ]
    first_id, second_id = created[0][1], created[1][1]
    updates = {
        artifact: [call[2:] for call in calls if call[:2] == ("update", artifact)] for artifact in (first_id, second_id)
    }
    assert updates[first_id][-1][0] == 100.0 and updates[first_id][-1][1].startswith("embeddings · 4/4 images")
    assert "took" in updates[first_id][-1][1]
    assert updates[second_id][-1][0] == 100.0 and updates[second_id][-1][1].startswith("listing · 3 files")
    assert not any("nested" in str(call) or "after the block" in str(call) for call in calls)


def test_a_failing_api_is_logged_once_and_the_work_goes_on(calls, monkeypatch, caplog):
    def refuse(*args, **kwargs):
        calls.append(("refused",))
        raise ConnectionError("server gone")

    monkeypatch.setattr(task_progress, "create_progress_artifact", refuse)
    with caplog.at_level(logging.WARNING, "lookalike.tests.progress"), task_progress.progress_artifacts():
        for bar in range(2):
            with progress(10, f"bar {bar}") as counting:
                counting.update(10)
    assert calls == [("refused",)]
    assert [record.getMessage() for record in caplog.records] == [
        "progress in the Prefect UI stopped here (the work goes on): server gone"
    ]
