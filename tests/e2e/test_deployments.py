"""prefect.yaml's deployments on a real `prefect server`, a process worker and the real UI.

One server, pool, worker and `prefect deploy` for the module, exactly as the runbook in
deployments/README.md does it; the docker work-pool variants are deployed beside them (with a
fixed image in place of their build step: no container engine runs here) and checked, never run. Runs are started through the API the way the UI's Run
button starts them (`POST /deployments/{id}/create_flow_run`), and once through the UI itself.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest
import yaml
from helpers import LOOKALIKE, REPO, cli_env, free_port, make_png
from prefect.client.base import PrefectHttpxSyncClient

from lookalike.core.graph import STAGE_NAMES
from lookalike.core.names import METHOD_NAMES

PREFECT = str(Path(sys.executable).with_name("prefect"))
POOL = "lookalike-process"
DOCKER_POOL = "lookalike-docker"
DOCKER_IMAGE = "lookalike:deployments-test"
FLOW = "retrieval-pipeline"
SCREENSHOTS = REPO / "test-output" / "ui"
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        args, cwd=REPO, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True
    )


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Server + pool + deployments + worker, torn down at the end; yields what tests need."""
    home = tmp_path_factory.mktemp("deployments")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = cli_env(
        home,
        api_url=f"{url}/api",
        extra={
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "1",
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_WORKER_PREFETCH_SECONDS": "0",
            # SQLite under a worker, a scheduler and the tests on 2 busy cores: wait for locks longer
            # than the 10 s default before answering 503
            "PREFECT_SERVER_DATABASE_TIMEOUT": "60",
        },
    )
    server = _start([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env, home / "server.log")
    worker = None
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, (home / "server.log").read_text()[-3000:]
            time.sleep(0.5)
        # The docker pool as `prefect work-pool create --type docker` makes it (the server's bundled
        # template of Prefect's docker worker), without another CLI start.
        with httpx.Client(base_url=f"{url}/api", timeout=30) as client:
            workers = client.get("/collections/views/aggregate-worker-metadata").raise_for_status().json()
            template = workers["prefect-docker"]["docker"]["default_base_job_configuration"]
            pool = {"name": DOCKER_POOL, "type": "docker", "base_job_template": template}
            client.post("/work_pools/", json=pool).raise_for_status()
        deploy_file = home / "prefect.yaml"
        deploy_file.write_text(yaml.safe_dump(without_image_build(REPO / "prefect.yaml"), sort_keys=False))
        for args in (
            ["work-pool", "create", POOL, "--type", "process"],
            ["--no-prompt", "deploy", "--all", "--prefect-file", str(deploy_file)],
        ):
            done = subprocess.run([PREFECT, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        artifacts = home / "artifacts"
        # The pull step resolves {{ $PWD }} on the worker: start it in the checkout, as a shell would.
        worker_env = {**env, "PWD": str(REPO), "LOOKALIKE_ARTIFACTS_ROOT": str(artifacts)}
        worker = _start([PREFECT, "worker", "start", "--pool", POOL], worker_env, home / "worker.log")
        # Prefect's own HTTP client: it retries 502/503/429 with backoff as every Prefect client
        # does, since SQLite under a worker, the scheduler and these tests answers 503 on a lock.
        with PrefectHttpxSyncClient(base_url=f"{url}/api", timeout=30, raise_on_all_errors=False) as client:
            yield {"url": url, "api": f"{url}/api", "env": env, "home": home, "artifacts": artifacts, "client": client}
    finally:
        for proc in (worker, server):
            if proc is not None:
                _stop(proc)


def without_image_build(path: Path) -> dict:
    """prefect.yaml with each `*-docker` deployment's build and push steps replaced by the image they
    would have made: `prefect deploy -n retrain-weekly -n reindex -n smoke` and
    `prefect deploy -n '*-docker'` of the runbook in one call. The docker ones get no triggers here:
    they are checked, never run (no docker worker), and must not take events meant for `reindex`."""
    spec = yaml.safe_load(path.read_text())
    for entry in spec["deployments"]:
        if entry["work_pool"]["name"] == DOCKER_POOL:
            entry["build"] = entry["push"] = None
            entry["work_pool"]["job_variables"]["image"] = DOCKER_IMAGE
            entry.pop("triggers", None)
    return spec


def api(stack, method: str, path: str, **kwargs):
    response = stack["client"].request(method, path, **kwargs)
    assert response.status_code < 400, response.text
    return response.json()


def deployment(stack, name: str, flow: str = FLOW) -> dict:
    return api(stack, "GET", f"/deployments/name/{flow}/{name}")


def quick_run(stack, name: str, flow: str = FLOW, parameters: dict | None = None) -> str:
    """What the UI's Run → Quick run (or Custom run, with parameters) posts."""
    body = {"state": {"type": "SCHEDULED"}, **({"parameters": parameters} if parameters else {})}
    return api(stack, "POST", f"/deployments/{deployment(stack, name, flow)['id']}/create_flow_run", json=body)["id"]


def wait_for(stack, flow_run_id: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = api(stack, "GET", f"/flow_runs/{flow_run_id}")
        if run["state_type"] in TERMINAL:
            return run
        time.sleep(1)
    raise AssertionError(
        f"flow run {flow_run_id} not finished after {timeout} s: {run['state_name']}\n"
        + (stack["home"] / "worker.log").read_text()[-4000:]
    )


def artifacts_of(stack, flow_run_id: str) -> dict[str, dict]:
    found = api(stack, "POST", "/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}})
    return {a["key"]: a for a in found}


def test_prefect_yaml_defines_the_three_deployments_with_limits_and_typed_parameters(stack):
    for name in ("retrain-weekly", "smoke"):
        d = deployment(stack, name)
        assert d["work_pool_name"] == POOL
        assert d["global_concurrency_limit"]["limit"] == 1
        assert d["concurrency_options"]["collision_strategy"] == "ENQUEUE"
    reindex = deployment(stack, "reindex", flow="reindex")
    assert reindex["global_concurrency_limit"]["limit"] == 1 and reindex["parameters"]["encoder_alias"] == "production"
    smoke = deployment(stack, "smoke")
    assert smoke["parameters"] == {
        "dataset": "sample",
        "epochs": 1,
        "promote": False,
        "overrides": {"dataset.limit": 512},
    }
    schema = smoke["parameter_openapi_schema"]["properties"]
    assert schema["method"]["enum"] == list(METHOD_NAMES) and schema["method"]["default"] == "simclr"
    assert "flat-l2" in schema["index"]["enum"]
    assert {"type": "integer", "minimum": 0} in schema["epochs"]["anyOf"]  # passes, or empty: steps decide
    assert schema["steps"]["default"] == "auto" and any(s.get("minimum") == 0 for s in schema["steps"]["anyOf"])
    assert all(p.get("description") for p in schema.values()), "every parameter needs a docstring description"
    assert not any("key" in name or "secret" in name or "password" in name for name in schema)


def test_the_docker_variants_are_the_same_deployments_in_the_image_on_a_docker_pool(stack):
    pool = api(stack, "GET", f"/work_pools/{DOCKER_POOL}")
    assert pool["type"] == "docker"
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    for name, flow in (("retrain-weekly", FLOW), ("reindex", "reindex"), ("smoke", FLOW)):
        process, docker = deployment(stack, name, flow), deployment(stack, f"{name}-docker", flow)
        assert docker["work_pool_name"] == DOCKER_POOL
        assert docker["job_variables"]["image"] == DOCKER_IMAGE  # what the build step's output fills in
        assert docker["job_variables"]["volumes"] == ["lookalike-artifacts:/artifacts"]  # Dockerfile's root
        assert docker["pull_steps"] == [
            {"prefect.deployments.steps.set_working_directory": {"directory": "/opt/lookalike"}}
        ]
        for field in ("entrypoint", "parameters", "parameter_openapi_schema", "description", "tags"):
            assert docker[field] == process[field], (name, field)
        assert _schedules(docker) == _schedules(process)
        assert docker["global_concurrency_limit"]["limit"] == 1
        # in prefect.yaml: built from ./Dockerfile and pushed, the image job variable filled from the build
        (entry,) = [d for d in spec["deployments"] if d["name"] == f"{name}-docker"]
        (build,) = entry["build"]
        step = build["prefect_docker.deployments.steps.build_docker_image"]
        assert (REPO / step["dockerfile"]).is_file() and step["id"] == "build-image"
        assert entry["push"][0]["prefect_docker.deployments.steps.push_docker_image"]["tag"] == "{{ build-image.tag }}"
        assert entry["work_pool"]["job_variables"]["image"] == "{{ build-image.image }}"
        assert entry.get("triggers") == next(d for d in spec["deployments"] if d["name"] == name).get("triggers")


def test_an_invalid_parameter_is_rejected_naming_the_field(stack):
    smoke = deployment(stack, "smoke")
    response = stack["client"].post(
        f"/deployments/{smoke['id']}/create_flow_run", json={"parameters": {**smoke["parameters"], "method": "mae"}}
    )
    assert response.status_code == 409 and "method" in response.text and "mae" in response.text


def test_weekly_schedule_is_visible_and_its_next_runs_are_mondays_3am_berlin(stack):
    shown = subprocess.run(
        [PREFECT, "deployment", "inspect", f"{FLOW}/retrain-weekly"],
        env=stack["env"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0 and "'cron': '0 3 * * 1'" in shown.stdout and "Europe/Berlin" in shown.stdout

    berlin = ZoneInfo("Europe/Berlin")
    now = datetime.now(berlin)
    expected, day = [], now.replace(hour=3, minute=0, second=0, microsecond=0)
    while len(expected) < 3:
        if day.weekday() == 0 and day > now:
            expected.append(day)
        day = (day + timedelta(days=1)).replace(hour=3)
    weekly = deployment(stack, "retrain-weekly")["id"]
    deadline = time.monotonic() + 60
    while True:  # the server's scheduler service creates the upcoming runs
        runs = api(
            stack,
            "POST",
            "/flow_runs/filter",
            json={
                "deployments": {"id": {"any_": [weekly]}},
                "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}},
                "sort": "EXPECTED_START_TIME_ASC",
                "limit": 3,
            },
        )
        if len(runs) == 3 or time.monotonic() > deadline:
            break
        time.sleep(1)
    starts = [datetime.fromisoformat(r["expected_start_time"]).astimezone(berlin) for r in runs]
    assert starts == expected  # 03:00 Berlin time on each Monday, whichever side of a DST change


@pytest.fixture(scope="module")
def two_smoke_runs(stack) -> list[dict]:
    """Two Quick runs of `smoke` posted back to back: the first computes, the second must queue."""
    first, second = quick_run(stack, "smoke"), quick_run(stack, "smoke")
    return [wait_for(stack, first), wait_for(stack, second)]


def test_smoke_deployment_run_completes_on_the_worker_with_artifacts(stack, two_smoke_runs):
    run = two_smoke_runs[0]
    assert run["state_type"] == "COMPLETED", (stack["home"] / "worker.log").read_text()[-4000:]
    found = artifacts_of(stack, run["id"])
    expected = {"retrieval-summary", "retrieval-metrics", "retrieval-grid", "duplicate-groups", "collection-map"}
    assert expected <= set(found)
    assert found["duplicate-groups"]["type"] == "table" and "threshold" in found["duplicate-groups"]["description"]
    assert found["collection-map"]["type"] == "image"
    summary = found["retrieval-summary"]["data"]
    for stage in STAGE_NAMES:
        assert f"| {stage} |" in summary
    metrics = {row["metric"]: row["value"] for row in _table(found["retrieval-metrics"]["data"])}
    assert metrics["self_retrieval_at_1"] == 1.0 and metrics["n_images"] == 512
    assert found["retrieval-grid"]["type"] == found["collection-map"]["type"] == "image"
    assert not (stack["artifacts"] / "aliases" / "production.json").exists(), "smoke must never promote"
    assert "wandb-run" not in found, "an offline W&B run has no page to link to"


def test_pretraining_and_embedding_progress_artifacts_reached_100_with_rate_and_time(stack, two_smoke_runs):
    runs = [run["id"] for run in two_smoke_runs]  # whichever ran first computed; the other was cached
    bars = api(
        stack,
        "POST",
        "/artifacts/filter",
        json={"artifacts": {"flow_run_id": {"any_": runs}, "type": {"any_": ["progress"]}}},
    )
    described = {a["description"].split(" · ")[0]: a for a in bars}
    pretraining = next(a for name, a in described.items() if name.startswith("encoder: pass"))
    embeddings = described["embeddings"]
    for bar in (pretraining, embeddings):
        assert bar["data"] == 100 and "img/s" in bar["description"] and "took" in bar["description"], bar
        assert bar["updated"] > bar["created"], "created when the bar opened, updated as it advanced"
    assert " steps · " in pretraining["description"] and "loss=" in pretraining["description"]
    assert "512/512 images" in embeddings["description"] and "shards=1/1" in embeddings["description"]


def test_two_runs_of_one_deployment_never_overlap(stack, two_smoke_runs):
    runs = two_smoke_runs
    assert [r["state_type"] for r in runs] == ["COMPLETED", "COMPLETED"]
    spans = sorted((datetime.fromisoformat(r["start_time"]), datetime.fromisoformat(r["end_time"])) for r in runs)
    assert spans[0][1] <= spans[1][0], f"runs overlapped: {spans}"
    history = {
        r["id"]: [s["name"] for s in api(stack, "GET", f"/flow_run_states/?flow_run_id={r['id']}")] for r in runs
    }
    assert any("AwaitingConcurrencySlot" in names for names in history.values()), history


def test_quick_run_from_the_prefect_ui_in_chromium_completes(stack):
    from ui_driver import quick_run as ui_quick_run

    flow_run_id = ui_quick_run(stack["url"], FLOW, "smoke", SCREENSHOTS)
    assert api(stack, "GET", f"/flow_runs/{flow_run_id}")["state_type"] == "COMPLETED"
    assert len(list(SCREENSHOTS.glob("*.png"))) >= 3


def test_notify_triggers_a_reindex_that_reuses_the_production_encoder_on_new_images(stack, two_smoke_runs, tmp_path):
    from lookalike.artifacts.aliases import read_alias, set_alias

    # promote the smoke runs' chain by hand, as a person would after looking at it
    set_alias(stack["artifacts"], "production", read_alias(stack["artifacts"], "latest").stages)
    production = _alias(stack, "production")

    folder = tmp_path / "new-images"
    for i in range(20):
        make_png(folder / f"new-{i:02d}.png", 1000 + i, mode="RGB")
    # no API call starts this run: the event does, through the trigger `prefect deploy` made from prefect.yaml
    sent = subprocess.run(
        [LOOKALIKE, "notify", "--dataset", str(folder), "--json"],
        env=stack["env"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert sent.returncode == 0, sent.stderr[-3000:]
    event = json.loads(sent.stdout.strip().splitlines()[-1])
    assert event["event"] == "lookalike.images.added" and event["dataset"] == str(folder)
    run = wait_for(stack, _triggered_run(stack, str(folder)))
    assert run["state_type"] == "COMPLETED", (stack["home"] / "worker.log").read_text()[-4000:]
    assert run["parameters"]["split"] == "train" and run["created_by"]["type"] == "AUTOMATION", run["created_by"]

    summary = artifacts_of(stack, run["id"])["retrieval-summary"]["data"]
    assert f"| encoder | `{production['encoder']}` | cached |" in summary
    moved = _alias(stack, "production")
    assert moved["encoder"] == production["encoder"]
    assert moved["index"] != production["index"] and f"| index | `{moved['index']}` | computed |" in summary
    index_manifest = stack["artifacts"] / "index" / moved["index"] / "manifest.json"
    assert '"ntotal": 20' in index_manifest.read_text()

    image = folder / "new-07.png"
    found = subprocess.run(
        [
            LOOKALIKE,
            "query",
            str(image),
            "--index",
            "production",
            "--json",
            "--artifacts-root",
            str(stack["artifacts"]),
        ],
        env=cli_env(stack["home"]),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert found.returncode == 0, found.stderr[-3000:]
    answer = json.loads(found.stdout.strip().splitlines()[-1])
    assert answer["index"] == moved["index"] and answer["neighbours"][0]["path"] == str(image)


def _triggered_run(stack, dataset: str, timeout: float = 120) -> str:
    """The id of the reindex run an automation created for `dataset`, once it exists."""
    reindex = deployment(stack, "reindex", flow="reindex")["id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = api(stack, "POST", "/flow_runs/filter", json={"deployments": {"id": {"any_": [reindex]}}})
        if found := [r["id"] for r in runs if r["parameters"].get("dataset") == dataset]:
            return found[0]
        time.sleep(1)
    raise AssertionError(f"no reindex run for {dataset} after {timeout} s\n" + _server_log(stack))


def _server_log(stack) -> str:
    return (stack["home"] / "server.log").read_text()[-4000:]


def _schedules(deployment: dict) -> list[tuple]:
    return [(json.dumps(s["schedule"], sort_keys=True), s["active"]) for s in deployment["schedules"]]


def _alias(stack, name: str) -> dict[str, str]:
    return json.loads((stack["artifacts"] / "aliases" / f"{name}.json").read_text())["stages"]


def _table(data) -> list[dict]:
    return json.loads(data) if isinstance(data, str) else data
