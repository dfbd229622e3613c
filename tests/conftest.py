"""Shared fixtures (helpers that are not fixtures live in helpers.py). Everything runs offline, on tiny data, with an isolated PREFECT_HOME.

Prefect's test harness does not isolate persisted results, so PREFECT_HOME points at a
fresh temp dir before prefect is imported: a stale cache must never make a test pass.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

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
from helpers import TINY  # noqa: E402

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
