"""Running the Prefect flow from the CLI: quiet logs (warnings and errors; -v for INFO), clean exit, user
errors without tracebacks."""

from __future__ import annotations

import atexit
import gc
import logging
import os
import time
from typing import Any

from lookalike.core.errors import LookalikeError


class _DropUserErrorTracebacks(logging.Filter):
    """Prefect logs a failed task with its traceback; for user errors the message is enough."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], LookalikeError):
            record.exc_info = None
            record.exc_text = None
        return True


_USER_ERRORS = _DropUserErrorTracebacks()


def _uses_temporary_server() -> bool:
    return not os.environ.get("PREFECT_API_URL")


def _quiet_temporary_server() -> None:
    """Before prefect is imported: the throwaway server's telemetry only produces noise
    (and 'database is locked' tracebacks on a fresh database) when offline."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


# Prefect reads overrides of its logging.yml from PREFECT_LOGGING_[PATH]_[KEY]: this one is the level
# of the console handler (handlers.console.level), which prints the flow and task runs' lines.
CONSOLE_LEVEL = "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"


def _console_logs(verbose: bool) -> None:
    """Before prefect is imported: its console shows warnings and errors only, unless `verbose`
    (or the user's own PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL). Only the console handler is
    quietened, not the loggers, so every INFO line still reaches the Prefect API and the UI's logs."""
    if verbose:
        os.environ[CONSOLE_LEVEL] = "NOTSET"  # what logging.yml sets: each logger's own level decides
    else:
        os.environ.setdefault(CONSOLE_LEVEL, "WARNING")


def skip_final_collections() -> None:
    """Let this process exit without CPython's final garbage collections.

    As the interpreter shuts down, it runs full collections over every object the imports made
    (torch, lightly, Prefect, wandb, datasets): about 2 s on a 2-core CPU, after the run's work
    is done. An exit handler freezes the heap (`gc.freeze`) first, so those collections have
    nothing to scan. Nothing is lost: Python does not promise to finalize objects still alive
    at exit, and what must happen then (W&B's teardown, logging's flush, Prefect's workers)
    are exit handlers of their own, which run as before. Registered once per process; an
    in-process caller (a test) is only affected when its own process exits.
    """
    global _final_collections_skipped
    if not _final_collections_skipped:
        atexit.register(gc.freeze)
        _final_collections_skipped = True


_final_collections_skipped = False


def _wait_until_recorded(flow_run_id, timeout: float = 15.0) -> None:
    """Let the temporary server record every task run before it is stopped.

    The server may still be writing task-run events when the flow returns; stopping it
    mid-write prints tracebacks and loses task-run history.
    """
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    EventsWorker.drain_all(timeout=10)
    deadline, last = time.monotonic() + timeout, None
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                sort=TaskRunSort.EXPECTED_START_TIME_DESC,
                limit=200,
            )
            snapshot = sorted((str(r.id), r.state_type) for r in runs)
            if snapshot and snapshot == last and all(r.state and r.state.is_final() for r in runs):
                return
            last = snapshot
            time.sleep(0.25)


_server = None  # this process's temporary server (a TemporaryServer), kept for its later runs


def _temporary_server():
    """The temporary server for this run, or None when PREFECT_API_URL names a server of the user's.

    One per process, started by its first run and stopped when the process exits: Prefect reads
    its API URL once, when it is imported, so a second run (a notebook's second `lookalike.run`)
    must find the first run's server at the same address, relaunched there if it has died.
    """
    global _server
    from lookalike.flows.server import TemporaryServer

    if _server is not None:
        return _server.ensure_running()
    if not _uses_temporary_server():
        return None
    _quiet_temporary_server()
    _server = TemporaryServer().start()  # boots while the pipeline's modules import
    os.environ.update(_server.client_env())
    atexit.register(_server.stop)  # before Prefect's own exit handlers, so it runs after them: they still reach it
    return _server


def run_pipeline(
    named: dict[str, Any], overrides: dict[str, Any], flow_name: str = "retrieval", verbose: bool = False
) -> dict[str, Any]:
    """Run a flow (`retrieval` or `reindex`) in this process with the CLI's named parameters
    and --set overrides; Prefect's INFO lines are printed only when `verbose`.

    Without PREFECT_API_URL, every run of the process uses one temporary server (see _temporary_server).

    Raises:
        LookalikeError: a user mistake in the run, or the temporary server did not start.
    """
    skip_final_collections()
    _console_logs(verbose)
    server = _temporary_server()
    if flow_name == "reindex":
        from lookalike.flows.reindex import reindex as pipeline
    else:
        from lookalike.flows.retrieval import retrieval_pipeline as pipeline

    for name in ["prefect", *logging.root.manager.loggerDict]:  # flow/task run loggers have own handlers
        if name.startswith("prefect"):
            for handler in logging.getLogger(name).handlers:
                handler.addFilter(_USER_ERRORS)  # once per handler, however many runs
    params = {k: v for k, v in named.items() if v is not None}
    if server:
        server.wait_until_healthy()
    state = pipeline(**params, overrides=overrides or None, return_state=True)
    if server:
        _wait_until_recorded(state.state_details.flow_run_id)
    return state.result()
