"""One `error:` line when native code kills a `lookalike run`, naming the stage and the index type.

A C++ library can end the process where Python cannot catch it: FAISS throwing inside an OpenMP region
makes the C++ runtime call std::terminate, which aborts (issue 44), and a segmentation fault ends it the
same way. No code of the dying process runs after that, so a small watcher process does the reporting:
the run holds one end of a pipe, and the watcher reads until the run says it is done or is gone. The
run's `faulthandler` writes the Python traceback of a fatal signal (SIGABRT, SIGSEGV, SIGBUS, SIGFPE,
SIGILL) into a file, and the stage runner keeps a note of the stages it is building (`note_builds_in`);
when the pipe closes without "done" and the traceback file is not empty, the watcher prints the line. A
run that ends any other way (done, an exception, SIGKILL) leaves the watcher silent. Stage folders are
as after any kill (the unfinished one has no manifest, the locks die with the process), so the next
run resumes (`lookalike.artifacts.stage_runner`).

This module imports only the standard library at the top: the watcher starts in a fresh interpreter.
"""

from __future__ import annotations

import faulthandler
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

FAULT = "fault.txt"  # faulthandler's traceback of the fatal signal
BUILDING = "building.json"  # the stage runner's note of the builds in progress
SIGNALS = {  # faulthandler's first line for each fatal signal it handles
    "Aborted": "SIGABRT",
    "Segmentation fault": "SIGSEGV",
    "Bus error": "SIGBUS",
    "Floating-point exception": "SIGFPE",
    "Floating point exception": "SIGFPE",
    "Illegal instruction": "SIGILL",
}
DONE = b"done"  # what the run writes before it closes the pipe when it ends by itself


@contextmanager
def reported_native_crashes() -> Iterator[None]:
    """While inside, a fatal signal in this process ends in one `error:` line on stderr (see module)."""
    from lookalike.artifacts.stage_runner import note_builds_in

    folder = Path(tempfile.mkdtemp(prefix="lookalike-crash-"))
    echo = faulthandler.is_enabled()  # PYTHONFAULTHANDLER=1 / -X faulthandler: the traceback goes to stderr too
    fault = open(folder / FAULT, "w")  # noqa: SIM115 - open until the process ends or the block does
    faulthandler.enable(file=fault, all_threads=True)
    note_builds_in(folder / BUILDING)
    read, write = os.pipe()
    watcher = subprocess.Popen(
        [sys.executable, "-c", f"from lookalike.cli.crash import watch; watch({read}, {str(folder)!r}, {echo})"],
        pass_fds=(read,),
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # Ctrl-C in a terminal reaches the run only; the watcher ends with it
    )
    os.close(read)
    try:
        yield
    finally:
        note_builds_in(None)
        faulthandler.disable()
        if echo:
            faulthandler.enable()
        fault.close()
        # said, not only closed: a child forked by the run (a DataLoader worker) may still hold the pipe open
        os.write(write, DONE)
        os.close(write)
        try:
            watcher.wait(timeout=10)
        except subprocess.TimeoutExpired:
            watcher.kill()


def watch(pipe: int, folder: str, echo: bool = False) -> None:
    """The watcher: wait until the run closes (or loses) its end of `pipe`, then report a native crash."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    said = b""
    while not said.endswith(DONE) and (chunk := os.read(pipe, 64)):
        said += chunk
    where = Path(folder)
    traceback = (where / FAULT).read_text(errors="replace") if (where / FAULT).exists() else ""
    if said.endswith(DONE) or not traceback.strip():
        shutil.rmtree(where, ignore_errors=True)
        return
    if echo:
        sys.stderr.write(traceback)
    sys.stderr.write(f"error: {crash_message(traceback, _building(where), where / FAULT)}\n")
    sys.stderr.flush()


def crash_message(traceback: str, building: list[dict], saved: Path) -> str:
    """The sentence for a native crash with faulthandler's `traceback` during the `building` stages."""
    first = traceback.strip().splitlines()[0].removeprefix("Fatal Python error: ").strip()
    what = SIGNALS.get(first, first)
    if building:
        where = " and ".join(f"the {b['stage']} stage{_index_of(b)}" for b in building)
    else:
        where = "the run, outside any stage,"
    return (
        f"{where} crashed in native code ({what}). Finished stages are kept: run the same command again to "
        f"resume, or with another --index if the index type is what crashes. Python traceback: {saved}"
    )


def _index_of(build: dict) -> str:
    """' with index type <type> (<factory>)' for a build that has an index, else ''."""
    if build["stage"] == "index":
        kind = build["settings"].get("type")
        return f" with index type {kind}" if kind else ""
    key = build["inputs"].get("index")
    if not key:
        return ""
    from lookalike.core.manifest import MANIFEST, stage_dir

    try:
        stats = json.loads((stage_dir(build["root"], "index", key) / MANIFEST).read_text())["stats"]
    except (OSError, ValueError, KeyError):
        return f" with index {key}"
    return f" with index type {stats.get('chosen') or stats.get('type')} ({stats.get('factory')})"


def _building(folder: Path) -> list[dict]:
    try:
        return json.loads((folder / BUILDING).read_text())
    except (OSError, ValueError):
        return []
