"""The HTTP API (lib/lookalike/app/api.py) in process, over the session's tiny chain: the three query
kinds, request validation and its one-line `detail`, the upload cap, base64, k's bounds, the health
and index endpoints and the OpenAPI schema. A real server, hot reload and the UI: tests/e2e/test_app.py."""

from __future__ import annotations

import base64
import io
import json
import re

import pytest
from helpers import TINY, default_encoder, served_rows

from lookalike.app.api import MAX_UPLOAD_BYTES, create_api, validation_detail
from lookalike.core.names import MAX_K, TOP_K
from lookalike.serving.holder import MAX_BATCH, IndexHolder

DIM = default_encoder(TINY)[2]


@pytest.fixture(scope="module")
def client(tiny_chain):
    """A TestClient of the API serving the tiny chain's index by its key, and the holder behind it
    (10,000 pixels an image, so a 200x200 upload is a pixel bomb)."""
    from fastapi.testclient import TestClient

    (manifest,) = (tiny_chain / "index").glob("*/manifest.json")
    holder = IndexHolder(tiny_chain, manifest.parent.name, max_image_pixels=10_000)
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


def test_the_three_query_kinds_agree_and_find_the_query_first(client):
    c, holder = client
    row = served_rows(holder)[7]
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
    c, holder = client
    response = c.post(
        "/api/search", content=json.dumps(body, allow_nan=True), headers={"content-type": "application/json"}
    )
    assert response.status_code == status and re.search(says, response.text), response.text
    assert c.post("/api/search", json={"row": served_rows(holder)[0], "k": 1}).status_code == 200


def test_filters_and_batches_answer_like_single_searches_among_matching_rows(client):
    c, holder = client
    info = c.get("/api/index").json()
    assert info["metadata_columns"][:7] == ["row", "label", "path", "split", "width", "height", "sha256"]
    row = served_rows(holder)[3]
    label = c.post("/api/search", json={"row": row, "k": 1}).json()["neighbours"][0]["label"]
    others = [r for r in served_rows(holder) if holder.searcher.metadata.of_row(r)["label"] != label]
    matching = len(holder.searcher.allowed_rows(f'label="{label}"'))
    found = c.post("/api/search", json={"row": others[0], "k": 4, "filter": f'label="{label}"'}).json()["neighbours"]
    assert len(found) == min(4, matching) and {n["label"] for n in found} == {label}
    upload = c.post(
        "/api/search/upload",
        files={"file": ("q.png", row_png(c, others[0]), "image/png")},
        data={"k": "4", "filter": f'label="{label}"'},
    ).json()["neighbours"]
    assert [n["row"] for n in upload] == [n["row"] for n in found]

    queries = [{"row": r} for r in served_rows(holder)[:5]] + [
        {"image_base64": base64.b64encode(row_png(c, row)).decode()}
    ]
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
    body = {**body, "queries": [{"row": served_rows(holder)[0]}] * 65} if len(body.get("queries", [])) == 65 else body
    if body.get("row") == 0:
        body = {**body, "row": served_rows(holder)[0]}
    response = c.post(path, json=body)
    assert response.status_code == 422 and says in response.json()["detail"], response.text


def test_uploads_refuse_unknown_form_fields_and_query_parameters(client):
    c, holder = client
    image = ("q.png", row_png(c, served_rows(holder)[0]), "image/png")
    answered = c.post("/api/search/upload", files={"file": image}, data={"k": "2"})
    assert answered.status_code == 200 and len(answered.json()["neighbours"]) == 2
    misspelt = c.post("/api/search/upload", files={"file": image}, data={"top_k": "2"})
    assert misspelt.status_code == 422 and misspelt.json()["detail"].startswith("top_k: unknown field")
    in_url = c.post("/api/search/upload?k=2", files={"file": image})
    assert in_url.status_code == 422 and in_url.json()["detail"].startswith("query parameter k: unknown field")


def test_uploads_refuse_a_form_field_given_twice(client):
    """One of two `filter` parts was ignored, and one of two `file` parts never searched."""
    c, holder = client
    image = ("q.png", row_png(c, served_rows(holder)[0]), "image/png")
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
    image = base64.b64encode(row_png(c, served_rows(holder)[0])).decode()
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


# --- what the moved tests above do not pin: the endpoints around search, k's bounds, the upload cap's
# edge, JSON that is not JSON, and the one-line detail built from pydantic's errors


def test_health_and_index_name_the_served_index(client):
    c, holder = client
    key = holder.ref  # served by its key: no alias to follow
    assert c.get("/healthz").json() == {"ok": True, "index": key}
    info = c.get("/api/index").json()
    assert (info["ref"], info["alias"], info["index"], info["reload_error"]) == (key, None, key, None)
    assert (info["ntotal"], info["dim"], info["metric"]) == (len(served_rows(holder)), DIM, "l2")
    assert c.post("/api/reload").json()["swapped"] is False  # a key does not move


def test_openapi_lists_every_route_and_its_method(client):
    """A route added, removed or renamed changes what clients and the generated API reference see."""
    c, _ = client
    paths = c.get("/openapi.json").json()["paths"]
    assert {path: sorted(methods) for path, methods in paths.items()} == {
        "/api/index": ["get"],
        "/api/search": ["post"],
        "/api/search/upload": ["post"],
        "/api/search/batch": ["post"],
        "/api/images/{row}": ["get"],
        "/api/reload": ["post"],
        "/healthz": ["get"],
    }
    k = c.get("/openapi.json").json()["components"]["schemas"]["SearchRequest"]["properties"]["k"]
    assert (k["minimum"], k["maximum"], k["default"]) == (1, MAX_K, TOP_K)


def test_k_is_bounded_by_max_k_in_every_request_kind(client):
    c, holder = client
    row, image = served_rows(holder)[0], ("q.png", row_png(c, served_rows(holder)[0]), "image/png")
    everything = c.post("/api/search", json={"row": row, "k": MAX_K})
    assert everything.status_code == 200 and len(everything.json()["neighbours"]) == min(
        MAX_K, len(served_rows(holder))
    )
    assert len(c.post("/api/search", json={"row": row}).json()["neighbours"]) == TOP_K  # k left out
    too_many = {
        "search": c.post("/api/search", json={"row": row, "k": MAX_K + 1}),
        "batch": c.post("/api/search/batch", json={"queries": [{"row": row}], "k": MAX_K + 1}),
        "upload": c.post("/api/search/upload", files={"file": image}, data={"k": str(MAX_K + 1)}),
    }
    for kind, response in too_many.items():
        got = repr(str(MAX_K + 1)) if kind == "upload" else MAX_K + 1  # a form's fields are text
        assert response.status_code == 422, (kind, response.text)
        assert response.json() == {"detail": f"k: Input should be less than or equal to {MAX_K} (got {got})"}
    zero = c.post("/api/search/upload", files={"file": image}, data={"k": "0"})
    assert zero.json() == {"detail": "k: Input should be greater than or equal to 1 (got '0')"}
    batch = c.post("/api/search/batch", json={"queries": [{"row": row}] * MAX_BATCH, "k": 1})
    assert batch.status_code == 200 and len(batch.json()["results"]) == MAX_BATCH


def test_an_upload_of_exactly_the_cap_is_read_and_one_byte_more_is_a_413(client):
    """The cap is MAX_UPLOAD_BYTES inclusive: at the cap the bytes are decoded (and refused as no image),
    one byte over, they are never decoded."""
    c, _ = client
    at_cap = c.post("/api/search/upload", files={"file": ("a.png", b"\0" * MAX_UPLOAD_BYTES, "image/png")})
    assert at_cap.status_code == 400 and "not a recognised image format" in at_cap.text
    over = c.post("/api/search/upload", files={"file": ("b.png", b"\0" * (MAX_UPLOAD_BYTES + 1), "image/png")})
    assert over.json() == {"detail": f"image is over {MAX_UPLOAD_BYTES >> 20} MiB; send a smaller file"}
    assert over.status_code == 413


def test_base64_images_are_decoded_strictly_and_capped_like_uploads(client):
    c, holder = client
    image = row_png(c, served_rows(holder)[5])
    encoded = base64.b64encode(image).decode()
    found = c.post("/api/search", json={"image_base64": encoded, "k": 1}).json()["neighbours"]
    assert found[0]["row"] == served_rows(holder)[5]
    for bad in (encoded[:-1], encoded + "!"):
        response = c.post("/api/search", json={"image_base64": bad, "k": 1})
        assert response.status_code == 400 and response.json() == {"detail": "image_base64 is not valid base64"}
    in_a_batch = c.post("/api/search/batch", json={"queries": [{"row": served_rows(holder)[0]}, {"image_base64": "?"}]})
    assert in_a_batch.status_code == 400 and in_a_batch.json() == {"detail": "image_base64 is not valid base64"}
    huge = base64.b64encode(b"\0" * (MAX_UPLOAD_BYTES + 1)).decode()
    assert c.post("/api/search", json={"image_base64": huge, "k": 1}).status_code == 413


@pytest.mark.parametrize(
    "body, says",
    [
        ('{"row": 1, "k": ', "body is not valid JSON: "),
        ('{"vector": [1e999], "k": 1}', "body is not valid JSON: 1e999 is not a finite number"),
        ('{"vector": [-Infinity], "k": 1}', "body is not valid JSON: -Infinity is not a finite number"),
        ('{"queries": [{"vector": [NaN]}]}', "body is not valid JSON: NaN is not a finite number"),
        ("[1, 2]", "Input should be a valid dictionary"),
        ("{}", "give exactly one of image_base64, row, vector (got none)"),
        ('{"row": NaN, "k": 2}', "body is not valid JSON: NaN is not a finite number"),
        ('{"row": 0, "k": -Infinity}', "body is not valid JSON: -Infinity is not a finite number"),
        ('{"row": "zero", "k": 2}', "row: Input should be a valid integer"),
        ('{"row": 0, "vector": [1.0], "k": 2}', "give exactly one of image_base64, row, vector"),
        (json.dumps({"row": "x" * 5000, "k": 2}), "5000 characters"),
    ],
)
def test_bodies_that_are_not_json_or_hold_non_finite_numbers_are_a_422_in_one_line(client, body, says):
    c, _ = client
    path = "/api/search/batch" if "queries" in body else "/api/search"
    response = c.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422 and says in response.json()["detail"], response.text
    assert "\n" not in response.json()["detail"] and len(response.json()["detail"]) < 400


def test_an_upload_without_a_file_and_an_image_of_a_missing_row_say_what_is_wrong(client):
    c, holder = client
    assert c.post("/api/search/upload", data={"k": "2"}).json() == {"detail": "file: Field required"}
    missing = c.get("/api/images/999999")
    assert missing.status_code == 404 and missing.json()["detail"].startswith(
        f"row 999999 is not in index {holder.ref} ({len(served_rows(holder))} rows"
    )
    assert c.get("/api/images/first").status_code == 422


@pytest.mark.parametrize(
    "errors, detail",
    [
        # the body's own loc prefix goes; a nested field is dotted; a scalar input is shown, shortened
        (
            [{"loc": ("body", "queries", 0, "row"), "msg": "Input should be a valid integer", "input": "x" * 200}],
            f"queries.0.row: Input should be a valid integer (got '{'x' * 39}...{'x' * 39}' (200 characters))",
        ),
        # a model validator's ValueError: the error is about the whole body, without pydantic's prefix
        ([{"loc": ("body",), "msg": "Value error, give exactly one", "input": {"a": 1}}], "body: give exactly one"),
        ([{"loc": (), "msg": "broken"}], "body: broken"),
        (
            [{"type": "extra_forbidden", "loc": ("query", "k"), "msg": "Extra inputs are not permitted"}],
            "query parameter k: unknown field (the fields each request takes are listed at /docs)",
        ),
        (
            [
                {
                    "type": "json_invalid",
                    "loc": ("body", 7),
                    "msg": "JSON decode error",
                    "ctx": {"error": "Expecting value"},
                }
            ],
            "body is not valid JSON: Expecting value",
        ),
        # several errors in one line; a control character in a value does not break it
        (
            [
                {"loc": ("body", "k"), "msg": "Input should be a valid integer", "input": True},
                {"loc": ("body", "filter"), "msg": "bad", "input": "a\nb"},
            ],
            "k: Input should be a valid integer (got True); filter: bad (got 'a\\nb')",
        ),
    ],
)
def test_validation_detail_is_one_line_naming_each_field(errors, detail):
    assert validation_detail(errors) == detail
