"""Shared fixtures. Everything runs offline, on tiny data, with an isolated PREFECT_HOME.

Prefect's test harness does not isolate persisted results, so PREFECT_HOME points at a
fresh temp dir before prefect is imported: a stale cache must never make a test pass.
"""

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

_HOME = Path(tempfile.mkdtemp(prefix="lookalike-tests-"))
os.environ["PREFECT_HOME"] = str(_HOME / "prefect")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
os.environ["WANDB_SILENT"] = "true"
if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test`: workers share the cores, so one math thread each
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # (and for the CLI processes the tests start)
for var in list(os.environ):
    if var.startswith("LOOKALIKE_") or var in ("WANDB_API_KEY", "WANDB_DIR", "WANDB_MODE", "PREFECT_API_URL"):
        del os.environ[var]

import pytest  # noqa: E402

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
    (encoder.epochs -> epochs) become parameters, the rest go to `overrides`."""
    from typing import get_args

    from lookalike.core.settings import RUN_PARAMETERS, IndexPreset

    owner = {dotted: name for name, dotted in RUN_PARAMETERS.items() if name != "index_factory"}
    named, overrides = {}, {}
    for key, value in settings.items():
        if key == "index.type" and value not in get_args(IndexPreset):
            named["index_factory"] = value
        elif key in owner:
            named[owner[key]] = value
        else:
            overrides[key] = value
    return {**named, "overrides": overrides or None}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for servers a test starts)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_MIGRATED = _HOME / "migrated-prefect-home"


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


E2E = Path(__file__).resolve().parent / "e2e"


# The longest test files (setup included, measured on 2 idle cores), longest first. `make test` hands
# whole files to its workers in collection order, so these start first and the short ones fill the
# gaps at the end, instead of one worker idling while the other runs a long file last.
LONGEST_FIRST = [
    "e2e/test_resume.py",
    "e2e/test_deployments.py",
    "stages/test_pretraining_ddp.py",
    "e2e/test_hostile_inputs.py",
    "e2e/test_shared_root.py",
    "e2e/test_cli.py",
    "e2e/test_duplicates_cli.py",
    "e2e/test_remote.py",
    "e2e/test_hardening_inputs.py",
    "e2e/test_scale_out.py",
    "e2e/test_packaging.py",
    "e2e/test_hardening_artifacts.py",
    "e2e/test_flow.py",
    "e2e/test_orchestration.py",
    "e2e/test_app.py",
    "stages/test_index_presets.py",  # one worker process runs all 16 index types (~35-65 s)
    "e2e/test_aliases.py",
    "test_api.py",
]


def pytest_collection_modifyitems(items) -> None:
    """Tests under tests/e2e (the CLI, flows, deployments, resume, shared roots) are marked `e2e`,
    so `pytest -m "not e2e"` runs the unit tests alone in about two minutes. The longest files
    run first (LONGEST_FIRST); within a file, tests keep their order."""
    for item in items:
        if E2E in Path(item.fspath).parents:
            item.add_marker(pytest.mark.e2e)
    tests = Path(__file__).resolve().parent
    rank = {name: n for n, name in enumerate(LONGEST_FIRST)}

    def file_rank(item) -> int:
        return rank.get(Path(item.fspath).resolve().relative_to(tests).as_posix(), len(rank))

    items.sort(key=file_rank)  # stable: every other file keeps its place


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "artifacts"


@pytest.fixture
def tiny(root: Path):
    from lookalike.core.settings import load_settings

    return load_settings({**TINY, "artifacts_root": str(root)})


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


@pytest.fixture(scope="session")
def tiny_chain(tmp_path_factory) -> Path:
    """A TINY dataset → encoder → embeddings → index chain, built once per test run through the
    stage runners (no Prefect). Read-only: a test that changes files copies the root first."""
    from lookalike.core.settings import load_settings
    from lookalike.stages.dataset.stage import run_dataset_stage
    from lookalike.stages.embeddings.stage import run_embeddings_stage
    from lookalike.stages.encoder.stage import run_encoder_stage
    from lookalike.stages.index.stage import run_index_stage

    root = tmp_path_factory.mktemp("tiny-chain") / "artifacts"
    settings = load_settings({**TINY, "artifacts_root": str(root)})
    dataset = run_dataset_stage(settings.dataset, root).manifest
    encoder = run_encoder_stage(settings.encoder, dataset, root).manifest
    embeddings = run_embeddings_stage(settings.embeddings, dataset, encoder, root).manifest
    run_index_stage(settings.index, embeddings, root)
    return root


@pytest.fixture(scope="session")
def prefect_server():
    """A real Prefect server (subprocess, fresh SQLite database) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def prefect_api_url(prefect_server) -> str:
    """The session server's URL, for subprocesses (`lookalike run`, `prefect flow-run retry`)."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


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


@pytest.fixture(scope="session")
def s3_endpoint():
    import os
    import socket

    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


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
