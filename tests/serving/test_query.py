"""What `lookalike serve` computes for a query is what the embeddings stage stored: one inference path."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient

from lookalike.app.api import create_api
from lookalike.core.manifest import find_manifest
from lookalike.serving.holder import IndexHolder
from lookalike.stages.embeddings.shards import load_embeddings


@pytest.fixture(scope="module")
def holder(tiny_chain) -> IndexHolder:
    (index_folder,) = (tiny_chain / "index").glob("*/manifest.json")
    return IndexHolder(tiny_chain, index_folder.parent.name)  # `lookalike serve --index <key>`


def test_a_served_query_vector_is_the_stored_embedding_of_that_image(holder, tiny_chain):
    searcher = holder.searcher
    embeddings = find_manifest(tiny_chain, "embeddings", searcher.chain.embeddings.key)
    stored, row_ids = load_embeddings(tiny_chain, embeddings)
    served = np.concatenate([searcher.embed(searcher.image_of_row(int(row))) for row in row_ids])
    np.testing.assert_allclose(served, stored, rtol=1e-5, atol=1e-5)


def test_the_http_api_finds_a_dataset_image_at_distance_zero(holder):
    searcher = holder.searcher
    row = int(next(iter(searcher.position)))
    buffer = io.BytesIO()
    searcher.image_of_row(row).save(buffer, format="PNG")
    client = TestClient(create_api(holder))
    body = {"image_base64": base64.b64encode(buffer.getvalue()).decode(), "k": 3}
    response = client.post("/api/search", json=body)
    assert response.status_code == 200, response.text
    first = response.json()["neighbours"][0]
    assert first["distance"] == pytest.approx(0.0, abs=1e-4)
    assert first["row"] == row or first["distance"] == pytest.approx(0.0, abs=1e-4)  # an exact duplicate may tie
