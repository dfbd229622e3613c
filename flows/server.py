"""Prefect's temporary local server for CLI runs without PREFECT_API_URL.

It is the server Prefect itself starts in that case (`SubprocessASGIServer`): the same
uvicorn app and ephemeral-mode environment. It differs in two ways:

- It starts before the pipeline's imports (torch, lightly, wandb: about 5 s), so the
  server's own ~4 s start overlaps them instead of following them.
- It dies with the CLI process (Linux `PR_SET_PDEATHSIG`, with SIGKILL), so a run killed with
  SIGKILL leaves no orphaned server holding the SQLite database, not even for the time a
  graceful shutdown takes (which waits for any request in flight, however long).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from importlib.util import find_spec
from pathlib import Path

from lookalike.core.errors import LookalikeError

# What to do when the temporary server cannot run: use a server of one's own
_OWN_SERVER = "start one with `prefect server start` and set PREFECT_API_URL=http://127.0.0.1:4200/api"


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        # SIGKILL, not SIGTERM: its run is gone, so nothing is left to shut down gracefully for, and
        # uvicorn's graceful shutdown waits for every request in flight. SQLite survives a kill.
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TemporaryServer:
    # uvicorn exits with 3 when the app fails to start. Servers starting together on a fresh
    # database race on its migrations and the loser exits 3; Prefect's own temporary server
    # restarts in that case, and so does this one.
    STARTUP_FAILED, RESTARTS = 3, 5

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.env = {
            **os.environ,
            **(env or {}),
            "PREFECT_UI_ENABLED": "0",
            "PREFECT__SERVER_EPHEMERAL": "1",
            "PREFECT__SERVER_FINAL": "1",
        }
        self.process: subprocess.Popen | None = None
        self.port = 0
        self.restarts = 0
        self.log = tempfile.TemporaryFile()  # the server's stderr: kept off the terminal, read on failure

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def client_env(self) -> dict[str, str]:
        """What a Prefect client process needs to use this server."""
        # It serves no UI and is gone after the run: no "View at" links.
        return {"PREFECT_API_URL": self.api_url, "PREFECT_UI_URL": ""}

    def start(self) -> TemporaryServer:
        """Launch the server (does not wait for it)."""
        self.port = _free_port()
        self._launch()
        return self

    def _launch(self) -> None:
        prefect_dir = Path(find_spec("prefect").origin).parent
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--app-dir",
                str(prefect_dir.parent),
                "--factory",
                "prefect.server.api.server:create_app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "error",
                "--lifespan",
                "on",
            ],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.log,
            preexec_fn=_die_with_parent,
        )

    def ensure_running(self) -> TemporaryServer:
        """Relaunch it on its own port (where this process's Prefect client points) if it has
        exited since the last run: killed, or out of memory."""
        if self.process is not None and self.process.poll() is not None:
            self.restarts = 0
            self._launch()
        return self

    def wait_until_healthy(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                if self.process.returncode == self.STARTUP_FAILED and self.restarts < self.RESTARTS:
                    self.restarts += 1
                    time.sleep(0.5 * self.restarts)
                    self._launch()  # same port: this process's client is already pointed at it
                    continue
                self.log.seek(0)
                detail = self.log.read().decode(errors="replace").strip().splitlines()[-1:] or [""]
                raise LookalikeError(
                    f"the temporary Prefect server exited ({self.process.returncode}: {detail[0]}): {_OWN_SERVER}"
                )
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.05)
        raise LookalikeError(f"the temporary Prefect server did not answer within {timeout:.0f} s: {_OWN_SERVER}")

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None
        self.log.close()
