"""What tests share that is not a fixture: the TINY settings, the CLI in a subprocess (`run_cli`, with
`cli_env`), small images, ports, and chains built through the stage runners. Fixtures stay in conftest.py,
which also cleans the environment before anything imports Prefect."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


LOOKALIKE = str(Path(sys.executable).with_name("lookalike"))


FAULTS_DIR = REPO / "tests" / "faults"


# Small enough for seconds on 2 CPU cores, large enough for 3 shards and real kNN.
TINY = {
    "dataset.limit": 48,
    "encoder.epochs": 1,
    "encoder.input_size": 16,
    "encoder.batch_size": 16,
    "embeddings.shard_size": 16,
    "embeddings.batch_size": 8,
    "evaluation.grid_queries": 2,
    "evaluation.grid_neighbours": 3,
    "evaluation.max_queries": 64,  # of the sample's 500 held-out test images
    # a 1-epoch encoder of 48 images need not beat raw pixels: tests of everything else still promote it
    # (tests/artifacts/test_promotion.py holds the gate to the defaults)
    "promotion.min_gain_over_pixels": -1.0,
    "promotion.min_gain_over_init": -1.0,
}


# What the dataset stage records of the bundled sample's train split, as far as the encoder's recipe reads it
SAMPLE_STATS = {
    "n_images": 3000,
    "profile": {
        "width": {"median": 28},
        "height": {"median": 28},
        "colour": "grayscale",
        "layout": "aligned",
        "layout_share": 0.34,
    },
}


def default_encoder(settings: dict[str, Any] | None = None) -> tuple[str, str, int]:
    """(method, backbone, feature_dim) of the default encoder on the bundled sample under `settings`
    (e.g. TINY, whose small inputs read out a smaller grid), so tests follow the defaults instead of
    restating them."""
    from lookalike.core.settings import load_settings
    from lookalike.stages.encoder.backbones import build_backbone
    from lookalike.stages.encoder.stage import resolve
    from lookalike.stages.encoder.training import readout

    section = load_settings(settings or {}).encoder
    section, _, _ = resolve(section, type("D", (), {"stats": SAMPLE_STATS, "key": "d" * 16})())
    pooling, cells = readout(section)
    dim = build_backbone(section.backbone, section.input_size, section.width, pooling=pooling, grid_cells=cells)[1]
    return section.method, section.backbone, dim


def flow_arguments(settings: dict[str, Any]) -> dict[str, Any]:
    """Flow keyword arguments for dotted settings: those with their own flow parameter
    (encoder.epochs -> epochs) become parameters, the rest go to `overrides` (`RunRequest.from_dotted`)."""
    from lookalike.core.settings import RunRequest

    return RunRequest.from_dotted(settings).flow_arguments()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for servers a test starts)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_MIGRATED = Path(tempfile.mkdtemp(prefix="lookalike-tests-prefect-template-"))


def seed_prefect_home(prefect_home: Path) -> None:
    """Give a fresh PREFECT_HOME a copy of a Prefect database with every migration applied, made
    once per test process. A temporary server on a fresh database spends ~5 s of CPU on Prefect's
    migrations, paid again by every test with a home of its own; a user pays it once, on their first
    run. The first-run path itself is tested on fresh databases (tests/e2e/test_cli.py,
    `test_temporary_servers_started_together_on_a_fresh_database_all_come_up`)."""
    import shutil

    target = prefect_home / "prefect.db"
    if target.exists():
        return
    template = _MIGRATED / "prefect.db"
    if not template.exists():
        subprocess.run(
            [str(Path(sys.executable).with_name("prefect")), "server", "database", "upgrade", "-y"],
            env={**os.environ, "PREFECT_HOME": str(_MIGRATED)},
            check=True,
            capture_output=True,
            timeout=300,
        )
    prefect_home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, target)


def started_no_prefect(home: Path) -> bool:
    """Whether no Prefect server or client has used `home`'s PREFECT_HOME: it is absent, or holds only the
    database `seed_prefect_home` copied there (a server adds its WAL, memo store and storage folder)."""
    prefect_home = home / "prefect"
    return not prefect_home.exists() or sorted(p.name for p in prefect_home.iterdir()) == ["prefect.db"]


def cli_env(
    home: Path, api_url: str | None = None, faults: dict | None = None, extra: dict[str, str] | None = None
) -> dict[str, str]:
    """Environment for a `lookalike` subprocess: its own PREFECT_HOME, the temporary server
    unless `api_url` is given, and faults from tests/faults when asked for."""
    env = {**os.environ, "PREFECT_HOME": str(home / "prefect"), **(extra or {})}
    env.pop("PREFECT_LOGGING_LEVEL", None)
    env.pop("PREFECT_API_URL", None)
    if api_url:
        env["PREFECT_API_URL"] = api_url
    else:
        seed_prefect_home(Path(env["PREFECT_HOME"]))
    if faults:
        env["PYTHONPATH"] = os.pathsep.join([str(FAULTS_DIR), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env["FAULT_INJECTION"] = json.dumps(faults)
    return env


def evaluated_chain(root: Path, **changes):
    """(encoder, evaluation) manifests of a TINY + `changes` chain through the stage runners, with
    held-out queries: dataset -> encoder -> embeddings -> index -> evaluation (stages already there are reused)."""
    from lookalike.core.settings import load_settings
    from lookalike.stages.dataset.stage import run_dataset_stage
    from lookalike.stages.embeddings.stage import run_embeddings_stage
    from lookalike.stages.encoder.stage import run_encoder_stage
    from lookalike.stages.evaluation.stage import query_dataset_section, run_evaluation_stage
    from lookalike.stages.index.stage import run_index_stage

    settings = load_settings({**TINY, **changes, "artifacts_root": str(root)})
    dataset = run_dataset_stage(settings.dataset, root).manifest
    queries = run_dataset_stage(query_dataset_section(settings.dataset, settings.evaluation, root), root).manifest
    encoder = run_encoder_stage(settings.encoder, dataset, root).manifest
    embeddings = run_embeddings_stage(settings.embeddings, dataset, encoder, root).manifest
    index = run_index_stage(settings.index, embeddings, root).manifest
    return encoder, run_evaluation_stage(settings.evaluation, dataset, embeddings, index, root, queries).manifest


def kill_when(proc: subprocess.Popen, ready, timeout: float = 300) -> None:
    """SIGKILL the run's process group as soon as `ready()` holds."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"run ended before the kill point: {proc.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, "kill point never reached"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def make_png(path: Path, value: int, size: int = 20, mode: str = "L") -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(value)
    pixels = rng.integers(0, 255, (size, size), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, "L").convert(mode).save(path)
    return path


def served_rows(holder) -> list[int]:
    """The dataset row ids an IndexHolder serves (TINY indexes a seeded subset, so not 0..n-1)."""
    return sorted(holder.searcher.position)


def server_errors(client, operation: str, fail: set[int]):
    """Make the endpoint answer HTTP 500 to the listed calls (1-based) of one operation.

    A botocore `before-send` hook returns the response instead of sending the request, so
    botocore's own retry logic sees a real 500 (the way a flaky S3 endpoint behaves).
    """
    from botocore.awsrequest import AWSResponse

    calls = []

    class Raw:
        def stream(self, **_):
            yield b"<Error><Code>InternalError</Code><Message>injected</Message></Error>"

    def hook(request, **_):
        calls.append(request.url)
        if len(calls) in fail:
            return AWSResponse(request.url, 500, {}, Raw())
        return None

    client.meta.events.register(f"before-send.s3.{operation}", hook)
    return calls


def run_cli(
    *args: str,
    home: Path,
    api_url: str | None = None,
    faults: dict | None = None,
    env_extra: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess:
    """`lookalike *args` in a fresh process with `cli_env(home, ...)`: its own PREFECT_HOME, the temporary
    server unless `api_url` is given; output captured as text."""
    return subprocess.run(
        [LOOKALIKE, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=cli_env(home, api_url=api_url, faults=faults, extra=env_extra),
    )
