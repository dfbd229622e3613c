"""The retrieval app: HTTP API (three query kinds, bad inputs, hot reload) and the Gradio UI
in headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import threading
import time

import httpx
import pytest
from helpers import LOOKALIKE, REPO, TINY, cli_env, default_encoder, flow_arguments, free_port

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
    holder = IndexHolder(root, "production", poll_seconds=0.1, max_image_pixels=10_000)
    with TestClient(create_api(holder)) as c:
        yield c, holder


def png_bytes(size: int = 20, value: int = 1) -> bytes:
    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(value).integers(0, 255, (size, size), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def row_png(client, row: int) -> bytes:
    response = client.get(f"/api/images/{row}")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    return response.content


def rows(holder) -> list[int]:
    """Dataset row ids in the index (TINY indexes a seeded subset, so not 0..n-1)."""
    return sorted(holder.searcher.position)


def test_the_three_query_kinds_agree_and_find_the_query_first(client):
    c, holder = client
    row = rows(holder)[7]
    by_row = c.post("/api/search", json={"row": row, "k": 4}).json()
    assert by_row["neighbours"][0]["row"] == row and len(by_row["neighbours"]) == 4
    assert by_row["neighbours"][0]["distance"] == pytest.approx(0.0, abs=1e-4)
    assert by_row["neighbours"][0]["image_url"].endswith(f"/api/images/{row}")

    image = row_png(c, row)
    by_upload = c.post("/api/search/upload", files={"file": ("q.png", image, "image/png")}, data={"k": "4"}).json()
    by_base64 = c.post("/api/search", json={"image_base64": base64.b64encode(image).decode(), "k": 4}).json()
    assert by_upload["neighbours"] == by_base64["neighbours"]
    assert by_upload["neighbours"][0]["row"] == row

    vector = holder.searcher.embed(holder.searcher.image_of_row(row))[0].tolist()
    by_vector = c.post("/api/search", json={"vector": vector, "k": 4}).json()
    assert [n["row"] for n in by_vector["neighbours"]] == [n["row"] for n in by_base64["neighbours"]]
    assert by_vector["index"] == c.get("/api/index").json()["index"]


@pytest.mark.parametrize(
    "body, status, says",
    [
        ({"vector": [0.5] * 3, "k": 3}, 422, f"vector has 3 values; index .* takes {DIM}"),
        ({"vector": [float("nan")] * DIM, "k": 3}, 422, "NaN"),
        ({"row": 10_000, "k": 3}, 404, "row 10000 is not in index"),
        ({"image_base64": "not base64!", "k": 3}, 400, "not valid base64"),
        ({"image_base64": base64.b64encode(b"GIF89a-but-not-really").decode(), "k": 3}, 400, "not a usable image"),
        ({"image_base64": base64.b64encode(png_bytes(size=200)).decode(), "k": 3}, 413, "over the 10000 limit"),
        ({"row": 0, "k": 0}, 422, "greater than or equal to 1"),
        ({"row": 0, "vector": [1.0], "k": 2}, 422, "exactly one of image_base64, row, vector"),
        # true is not 1, as in the Python API (it was row 1 and k 1)
        ({"row": True, "k": 3}, 422, "row: Input should be a valid integer"),
        ({"vector": [0.5] * DIM, "k": True}, 422, "k: Input should be a valid integer"),
        ({"vector": [True] * DIM, "k": 3}, 422, "vector.0: Input should be a valid number"),
    ],
)
def test_bad_queries_get_a_4xx_naming_the_problem_and_the_server_keeps_serving(client, body, status, says):
    import re

    c, holder = client
    response = c.post(
        "/api/search", content=json.dumps(body, allow_nan=True), headers={"content-type": "application/json"}
    )
    assert response.status_code == status and re.search(says, response.text), response.text
    assert c.post("/api/search", json={"row": rows(holder)[0], "k": 1}).status_code == 200


def test_filters_and_batches_answer_like_single_searches_among_matching_rows(client):
    c, holder = client
    info = c.get("/api/index").json()
    assert info["metadata_columns"][:7] == ["row", "label", "path", "split", "width", "height", "sha256"]
    row = rows(holder)[3]
    label = c.post("/api/search", json={"row": row, "k": 1}).json()["neighbours"][0]["label"]
    others = [r for r in rows(holder) if holder.searcher.metadata.of_row(r)["label"] != label]
    matching = len(holder.searcher.allowed_rows(f'label="{label}"'))
    found = c.post("/api/search", json={"row": others[0], "k": 4, "filter": f'label="{label}"'}).json()["neighbours"]
    assert len(found) == min(4, matching) and {n["label"] for n in found} == {label}
    upload = c.post(
        "/api/search/upload",
        files={"file": ("q.png", row_png(c, others[0]), "image/png")},
        data={"k": "4", "filter": f'label="{label}"'},
    ).json()["neighbours"]
    assert [n["row"] for n in upload] == [n["row"] for n in found]

    queries = [{"row": r} for r in rows(holder)[:5]] + [{"image_base64": base64.b64encode(row_png(c, row)).decode()}]
    batch = c.post("/api/search/batch", json={"queries": queries, "k": 3, "filter": [f'label!="{label}"']}).json()
    assert len(batch["results"]) == 6 and batch["index"] == info["index"]
    for query, result in zip(queries, batch["results"]):
        single = c.post("/api/search", json={**query, "k": 3, "filter": f'label!="{label}"'}).json()
        assert [n["row"] for n in result["neighbours"]] == [n["row"] for n in single["neighbours"]]
        assert label not in {n["label"] for n in result["neighbours"]}


@pytest.mark.parametrize(
    "path, body, says",
    [
        ("/api/search", {"row": 0, "filter": "colour=red"}, "unknown filter field 'colour': this index has row, label"),
        ("/api/search", {"row": 0, "filter": "width>=big"}, "width holds numbers, and 'big' is not one"),
        # never read as something else: refused in one line, and bounded before it is parsed
        ("/api/search", {"row": 0, "filter": "label=Sneaker and"}, "it ends after 'and'; a term must follow"),
        ("/api/search", {"row": 0, "filter": "label=" + "x" * 200_000}, "filter is 200,006 characters, over the"),
        ("/api/search/batch", {"queries": [{"row": 0}] * 65}, "queries: List should have at most 64 items"),
        ("/api/search/batch", {"queries": []}, "queries: List should have at least 1 item"),
        ("/api/search/batch", {"queries": [{"row": 0, "vector": [1.0]}]}, "exactly one of image_base64, row, vector"),
        # a misspelt field is refused, not ignored (it would search with the default instead)
        ("/api/search", {"row": 0, "top_k": 3}, "top_k: unknown field"),
        ("/api/search/batch", {"queries": [{"row": 0, "k": 3}]}, "queries.0.k: unknown field"),
    ],
)
def test_bad_filters_and_batches_get_a_422_naming_the_problem(client, path, body, says):
    c, holder = client
    body = {**body, "queries": [{"row": rows(holder)[0]}] * 65} if len(body.get("queries", [])) == 65 else body
    if body.get("row") == 0:
        body = {**body, "row": rows(holder)[0]}
    response = c.post(path, json=body)
    assert response.status_code == 422 and says in response.json()["detail"], response.text


def test_uploads_refuse_unknown_form_fields_and_query_parameters(client):
    c, holder = client
    image = ("q.png", row_png(c, rows(holder)[0]), "image/png")
    answered = c.post("/api/search/upload", files={"file": image}, data={"k": "2"})
    assert answered.status_code == 200 and len(answered.json()["neighbours"]) == 2
    misspelt = c.post("/api/search/upload", files={"file": image}, data={"top_k": "2"})
    assert misspelt.status_code == 422 and misspelt.json()["detail"].startswith("top_k: unknown field")
    in_url = c.post("/api/search/upload?k=2", files={"file": image})
    assert in_url.status_code == 422 and in_url.json()["detail"].startswith("query parameter k: unknown field")


def test_uploads_refuse_a_form_field_given_twice(client):
    """One of two `filter` parts was ignored, and one of two `file` parts never searched."""
    c, holder = client
    image = ("q.png", row_png(c, rows(holder)[0]), "image/png")
    twice = c.post("/api/search/upload", files={"file": image}, data={"filter": ["label=Bag", "width>=1"]})
    assert twice.status_code == 422, twice.text
    assert twice.json()["detail"] == (
        "form field 'filter' is given 2 times: give it once; join filter terms with 'and' or 'or' in one field"
    )
    two_files = c.post("/api/search/upload", files=[("file", image), ("file", image)])
    assert two_files.status_code == 422 and two_files.json()["detail"].startswith("form field 'file' is given 2 times")


def test_a_batch_whose_images_decode_past_the_pixel_budget_is_refused_in_one_line(client):
    """The client's holder takes 10,000 pixels an image and 4x that a request: 60 images of 28x28
    (47,040 pixels) are one too many, however small each is."""
    c, holder = client
    image = base64.b64encode(row_png(c, rows(holder)[0])).decode()
    response = c.post("/api/search/batch", json={"queries": [{"image_base64": image}] * 60, "k": 1})
    assert response.status_code == 413, response.text
    assert response.json()["detail"] == (
        "the images of this request decode to more than 40,000 pixels in all; send fewer or smaller images per request"
    )
    assert c.post("/api/search/batch", json={"queries": [{"image_base64": image}] * 40, "k": 1}).status_code == 200


def test_openapi_shows_the_typed_responses_and_the_upload_form(client):
    c, _ = client
    spec = c.get("/openapi.json").json()

    def returns(path: str, method: str) -> str:
        return spec["paths"][path][method]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]

    assert returns("/api/search", "post").endswith("/SearchResponse")
    assert returns("/api/search/upload", "post").endswith("/SearchResponse")
    assert returns("/api/search/batch", "post").endswith("/BatchSearchResponse")
    assert returns("/api/index", "get").endswith("/IndexInfo") and returns("/api/reload", "post").endswith(
        "/ReloadResponse"
    )
    schemas = spec["components"]["schemas"]
    assert {"row", "distance", "label", "image_url"} <= set(schemas["Hit"]["properties"])
    assert schemas["SearchRequest"]["additionalProperties"] is False
    upload = spec["paths"]["/api/search/upload"]["post"]["requestBody"]["content"]
    assert list(upload) == ["multipart/form-data"] and schemas["UploadForm"]["additionalProperties"] is False


def test_oversized_and_non_image_uploads_are_refused(client):
    c, _ = client
    huge = c.post("/api/search/upload", files={"file": ("big.png", b"\0" * (21 << 20), "image/png")})
    assert huge.status_code == 413 and "over 20 MiB" in huge.text
    text = c.post("/api/search/upload", files={"file": ("notes.txt", b"hello", "text/plain")})
    assert text.status_code == 400 and "not a recognised image format" in text.text


def test_moving_production_is_picked_up_without_restart_and_never_half_loaded(client, built):
    from lookalike.artifacts.aliases import set_alias

    c, holder = client
    root, chains = built
    old, new = chains[0]["index"], chains[1]["index"]
    seen, failures, stop = set(), [], threading.Event()
    row = rows(holder)[3]

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
    assert c.post("/api/search", json={"row": rows(holder)[2], "k": 1}).json()["index"] == serving
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
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


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
