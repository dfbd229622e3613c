"""The served application (lib/lookalike/app/server.py, ui.py) in process: the API under /api, the UI at /,
and the UI's header. The UI driven in a browser: tests/e2e/test_app.py."""

from __future__ import annotations

import pytest

from lookalike.app.server import create_app
from lookalike.app.ui import _header
from lookalike.serving.holder import IndexHolder


@pytest.fixture(scope="module")
def index_key(tiny_chain) -> str:
    (manifest,) = (tiny_chain / "index").glob("*/manifest.json")
    return manifest.parent.name


def test_the_app_serves_the_api_beside_the_ui_from_one_holder(tiny_chain, index_key):
    from fastapi.testclient import TestClient

    app = create_app(tiny_chain, index_key)
    assert isinstance(app.state.holder, IndexHolder) and app.state.holder.ref == index_key
    with TestClient(app) as client:
        assert client.get("/healthz").json() == {"ok": True, "index": index_key}
        assert client.get("/api/index").json()["index"] == index_key
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        config = client.get("/config").json()  # what Gradio's page renders from: this holder's UI
        assert config["title"] == "lookalike" and f"index `{index_key}`" in str(config["components"])


def test_the_ui_header_names_the_index_its_size_and_scores_and_warns_of_a_failed_reload(tiny_chain, index_key):
    holder = IndexHolder(tiny_chain, index_key)
    info = holder.info()
    header = _header(holder)
    assert header.startswith(f"### lookalike\nindex `{index_key}` · {info['ntotal']} images · {info['method']} encoder")
    assert "alias" not in header and "⚠" not in header  # served by key, nothing refused
    scored = [f"{name} {value:.3f}" for name, value in info["metrics"].items() if isinstance(value, (int, float))]
    assert scored and header.endswith(", ".join(scored))
    holder.reload_error = "still serving it: sha256 mismatch"
    assert _header(holder).endswith("\n\n⚠ still serving it: sha256 mismatch")
