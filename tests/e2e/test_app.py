"""The retrieval app with a moving alias and a real server: hot reload, a broken new index, the Gradio UI
in headless Chromium and `lookalike serve`'s errors. The HTTP API's requests and answers in process:
tests/app/test_http_api.py."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time

import httpx
import pytest
from helpers import LOOKALIKE, REPO, TINY, cli_env, default_encoder, flow_arguments, free_port, served_rows

DIM = default_encoder(TINY)[2]

pytestmark = pytest.mark.usefixtures("prefect_server")
SCREENSHOTS = REPO / "test-output" / "app"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Two finished chains under one root: production (flat-l2) and a flat-ip index beside it."""
    from lookalike.flows.retrieval import retrieval_pipeline

    root = tmp_path_factory.mktemp("app") / "artifacts"
    first = retrieval_pipeline(**flow_arguments({"artifacts_root": str(root), **TINY}))
    second = retrieval_pipeline(
        **flow_arguments({"artifacts_root": str(root), **TINY, "index.type": "flat-ip"}), promote=False
    )
    chains = [{name: s["key"] for name, s in run["stages"].items()} for run in (first, second)]
    return root, chains


@pytest.fixture
def client(built):
    from fastapi.testclient import TestClient

    from lookalike.app.api import create_api
    from lookalike.artifacts.aliases import set_alias
    from lookalike.serving.holder import IndexHolder

    root, chains = built
    set_alias(root, "production", chains[0])
    holder = IndexHolder(root, "production", poll_seconds=0.1)
    with TestClient(create_api(holder)) as c:
        yield c, holder


def test_moving_production_is_picked_up_without_restart_and_never_half_loaded(client, built):
    from lookalike.artifacts.aliases import set_alias

    c, holder = client
    root, chains = built
    old, new = chains[0]["index"], chains[1]["index"]
    seen, failures, stop = set(), [], threading.Event()
    row = served_rows(holder)[3]

    def hammer():
        while not stop.is_set():
            response = c.post("/api/search", json={"row": row, "k": 2})
            (seen.add(response.json()["index"]) if response.status_code == 200 else failures.append(response.text))

    worker = threading.Thread(target=hammer)
    worker.start()
    try:
        for chain in (chains[1], chains[0], chains[1]):
            set_alias(root, "production", chain)
            deadline = time.monotonic() + 10
            while c.get("/api/index").json()["index"] != chain["index"]:
                assert time.monotonic() < deadline, "the app did not follow the alias"
                time.sleep(0.05)
    finally:
        stop.set()
        worker.join()
    assert failures == [] and seen == {old, new}
    assert c.get("/api/index").json()["metric"] == "ip"


def test_a_broken_new_index_keeps_the_old_one_serving_and_says_why(client, built, tmp_path):
    import shutil

    from lookalike.artifacts.aliases import set_alias

    c, holder = client
    root, chains = built
    serving = c.get("/api/index").json()["index"]
    # a copy of the flat-ip chain whose index file was altered after its manifest was written
    tampered = dict(chains[1], index="f" * 16)
    shutil.copytree(root / "index" / chains[1]["index"], root / "index" / tampered["index"])
    manifest = root / "index" / tampered["index"] / "manifest.json"
    manifest.write_text(manifest.read_text().replace(chains[1]["index"], tampered["index"]))
    with open(root / "index" / tampered["index"] / "index.faiss", "r+b") as fh:
        fh.seek(100)
        fh.write(b"\xff\xff\xff\xff")
    set_alias(root, "production", tampered)
    reloaded = c.post("/api/reload").json()
    assert reloaded["swapped"] is False and reloaded["index"] == serving
    assert "sha256" in reloaded["reload_error"] and f"still serving {serving}" in reloaded["reload_error"]
    assert c.post("/api/search", json={"row": served_rows(holder)[2], "k": 1}).json()["index"] == serving
    set_alias(root, "production", chains[0])


def test_gradio_ui_in_chromium_finds_the_uploaded_image_first(built, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from lookalike.artifacts.aliases import set_alias

    root, chains = built
    set_alias(root, "production", chains[0])
    port = free_port()
    server = subprocess.Popen(
        [LOOKALIKE, "serve", "--artifacts-root", str(root), "--port", str(port)],
        env=cli_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, server.stdout.read().decode()[-3000:]
            time.sleep(0.5)
        query = tmp_path / "query.png"
        row = httpx.post(f"{url}/api/search", json={"vector": [0.0] * DIM, "k": 1}).json()["neighbours"][0]["row"]
        query.write_bytes(httpx.get(f"{url}/api/images/{row}").content)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path="/usr/bin/chromium", headless=True, args=["--no-sandbox", "--disable-dev-shm-usage"]
            )
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(url)
                expect(page.get_by_text(chains[0]["index"], exact=False).first).to_be_visible(timeout=60_000)
                k = page.locator("#k input[type=number]")
                k.fill("4")
                k.press("Enter")
                page.locator("#query input[type=file]").set_input_files(str(query))
                page.locator("#search").click()
                captions = page.locator("#results .caption-label")
                expect(captions).to_have_count(4, timeout=60_000)
                page.screenshot(path=SCREENSHOTS / "search.png", full_page=True)
                texts = captions.all_inner_texts()
                assert texts[0].startswith(f"row {row} · d=0.000"), texts
                # a random dataset image as the query: it is in the index, so it comes back first.
                # Search only once the new image is in the query box (else it sends the old one),
                # and with another k, so the new results are told apart even if the row repeats.
                shown = page.locator("#query img").first
                before = shown.get_attribute("src")
                page.locator("#random").click()
                expect(shown).not_to_have_attribute("src", before, timeout=60_000)
                k.fill("3")
                k.press("Enter")
                page.locator("#search").click()
                expect(captions).to_have_count(3, timeout=60_000)
                expect(captions.first).to_contain_text("d=0.000")
            finally:
                browser.close()
        # a bad body is one detail line from the real server too, which keeps serving (the bodies: tests/app)
        bad = httpx.post(
            f"{url}/api/search", content='{"row": NaN, "k": 2}', headers={"content-type": "application/json"}
        )
        assert bad.status_code == 422 and list(bad.json()) == ["detail"] and "finite" in bad.json()["detail"]
        assert httpx.get(f"{url}/healthz").status_code == 200
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    assert "Traceback" not in server.stdout.read().decode()


def test_serve_without_a_built_index_says_how_to_get_one(tmp_path):
    command = [LOOKALIKE, "serve", "--artifacts-root", str(tmp_path / "empty"), "--port", str(free_port())]
    result = subprocess.run(command, env=cli_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "no index 'production'" in result.stderr and "give an alias" in result.stderr, result.stderr


def test_serve_on_a_port_in_use_says_so_before_loading_anything(built, tmp_path):
    root, _ = built
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [LOOKALIKE, "serve", "--artifacts-root", str(root), "--port", str(port)],
            env=cli_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "--port" in result.stderr, result.stderr
    assert "serving" not in result.stderr
