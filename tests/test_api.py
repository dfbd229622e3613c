"""The Python API (lookalike.api): the documentation's examples run as written, and Index.search over
every kind of query, in chunks, with one-line errors."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import lookalike
from lookalike.api import Index, Neighbour, RunSummary
from lookalike.core.names import QUERY_CHUNK as CHUNK

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "user-guide" / "python-api.md"


def readme_examples() -> list[str]:
    """The ```python blocks of the "Python API" page (docs/user-guide/python-api.md, once the README's
    section of that name), in order."""
    return re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)


def test_the_readme_examples_run_build_load_by_alias_and_folder_and_search_100_images(
    tmp_path, monkeypatch, prefect_api_url
):
    examples = readme_examples()
    assert len(examples) == 2
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PREFECT_API_URL", prefect_api_url)
    monkeypatch.setenv("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")  # what run() sets; undone after
    namespace: dict = {}
    for code in examples:
        exec(compile(code, str(PAGE), "exec"), namespace)  # noqa: S102 - the documentation is the test
    summary, index, hits = namespace["summary"], namespace["index"], namespace["hits"]
    assert isinstance(summary, RunSummary) and summary["stages"]["index"]["key"] == summary.index_key
    assert summary.baselines["pixels"]["precision_at_10"] is not None
    assert isinstance(index, Index) and index.alias == "latest" and index.ntotal == 256
    assert (tmp_path / "artifacts" / "index" / summary.index_key / "manifest.json").is_file()
    # the first example's 100 row queries: 100 answers of 5 typed neighbours, each row finding itself
    first = namespace["first"]
    assert isinstance(first, Neighbour) and first.distance == pytest.approx(0, abs=1e-4)
    assert first.row == index.rows[0]
    assert len(index.search(index.rows[:100], k=5)) == 100
    assert namespace["groups"]["n_images"] == 256
    assert len(hits) == 2 and all(isinstance(n, Neighbour) for found in hits for n in found)  # the filtered pair


@pytest.fixture(scope="module")
def index(tiny_chain) -> Index:
    (folder,) = (tiny_chain / "index").glob("*/manifest.json")
    return lookalike.load(folder.parent)


def test_mixed_queries_in_more_than_one_chunk_answer_in_order(index, tmp_path):
    rows = index.rows
    index.image(rows[5]).save(tmp_path / "five.png")
    vector = index.embed([rows[9]])[0]
    queries = [*rows, tmp_path / "five.png", str(tmp_path / "five.png"), index.image(rows[7]), vector]
    queries = queries * (CHUNK // len(queries) + 1)  # two chunks of decoding and embedding
    hits = index.search(queries, k=2)
    assert len(hits) == len(queries) > CHUNK
    expected = [*rows, rows[5], rows[5], rows[7], rows[9]] * (CHUNK // (len(rows) + 4) + 1)
    assert [found[0].row for found in hits] == expected
    assert all(len(found) == 2 and found[0].distance <= found[1].distance for found in hits)
    # one query in, one list out; a 2-D array is many
    assert [n.row for n in index.search(rows[3], k=3)][0] == rows[3]
    assert len(index.search(np.stack([vector, vector]))) == 2


def test_hits_carry_metadata_and_serialise_as_the_cli_writes_them(index):
    (hit,) = index.search(index.rows[0], k=1)
    assert hit.to_dict()["row"] == hit.row and hit.width == hit.height and len(hit.sha256) == 64
    assert set(hit.to_dict()) >= {"row", "distance", "label", "path", "split", "width", "height", "sha256"}


def test_a_filter_only_returns_matching_rows(index):
    label = index.search(index.rows[0], k=1)[0].label
    found = index.search(index.rows[:10], k=3, where=f"label={label}")
    assert len(found) == 10 and all(hits for hits in found)  # row 0 has the label: every query finds a hit
    assert all(n.label == label for hits in found for n in hits)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("missing.png", "no such image file"),
        (np.zeros(3, np.float32), "vector has 3 values"),
        (10**9, "is not in index"),
        (3.5, "not a query: float"),
    ],
)
def test_a_bad_query_raises_one_line_naming_it(index, query, message):
    with pytest.raises(lookalike.LookalikeError, match=message) as caught:
        index.search(query)
    assert "\n" not in str(caught.value)


WRONG_VALUES = {
    "k float": (lambda i: i.search(i.rows[0], k=5.0), "k must be a whole number, between 1 and 100, not 5.0"),
    "k bool": (lambda i: i.search(i.rows[0], k=True), "k must be a whole number.* not True"),
    "k text": (lambda i: i.search(i.rows[0], k="5"), "k must be a whole number.* not '5'"),
    "3-D": (lambda i: i.search(np.zeros((1, 1, i.dim), np.float32)), "not a 3-D array"),
    "0-D": (lambda i: i.search(np.array(3.0)), "not a 0-D array"),
    "object vector": (lambda i: i.search(np.array([object()] * i.dim)), "real numbers, not a 1-D array of object"),
    "complex vector": (lambda i: i.search(np.ones(i.dim, complex)), "real numbers, not a 1-D array of complex128"),
    "long path": (lambda i: i.search("x" * 100_000), r"cannot read image file .*\(100000 characters\)"),
    "where int": (lambda i: i.search(i.rows[0], where=5), "a filter is a string or a list of strings, not 5"),
    "embed vector": (lambda i: i.embed([np.zeros(i.dim, np.float32)]), "embed takes images.* not vectors"),
    "image of True": (lambda i: i.image(True), "row must be a whole number, not True"),
    "linkage": (lambda i: i.duplicates(linkage="bogus"), "linkage must be one of leader, components, not 'bogus'"),
    "NaN threshold": (lambda i: i.duplicates(threshold=float("nan")), "threshold .* must be a finite number"),
    "negative threshold": (lambda i: i.duplicates(threshold=-1), r"threshold \(a squared L2 distance.* at least 0"),
    # bytes are the contents of an image file, never a list of row ids (b"\x07\x0e" was rows 7 and 14)
    "bytes": (lambda i: i.search(bytes(i.rows[:2])), "not a usable image: not a recognised image format"),
    "long reference": (
        lambda i: lookalike.load("x" * 10_000, artifacts_root=i.root),
        r"no index 'x+\.\.\.x+' \(10000 characters\)",
    ),
}


@pytest.mark.parametrize("name", WRONG_VALUES)
def test_a_wrong_value_anywhere_in_the_api_is_one_short_lookalike_error_line(index, name):
    call, says = WRONG_VALUES[name]
    with pytest.raises(lookalike.LookalikeError, match=says) as caught:
        call(index)
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 300


def test_numpy_integers_are_ints_and_bytes_are_an_encoded_image(index):
    import io

    row = index.rows[3]
    assert len(index.search(row, k=np.int64(3))) == 3 and index.search(np.int32(row), k=np.uint8(1))[0].row == row
    buffer = io.BytesIO()
    index.image(row).save(buffer, format="PNG")
    assert index.search(buffer.getvalue(), k=1)[0].row == row  # one query, decoded
    assert [hits[0].row for hits in index.search([bytearray(buffer.getvalue()), row], k=1)] == [row, row]
    assert np.allclose(index.embed(buffer.getvalue()), index.embed([row]), atol=1e-5)


def test_an_unreadable_image_file_is_named(index, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(lookalike.LookalikeError, match="broken.png"):
        index.search([index.rows[0], tmp_path / "broken.png"])


def test_loading_an_unknown_reference_says_what_references_are(tmp_path):
    with pytest.raises(lookalike.LookalikeError, match="give an alias"):
        lookalike.load("nope", artifacts_root=tmp_path)


def test_a_bad_setting_fails_before_anything_runs(tmp_path):
    with pytest.raises(lookalike.LookalikeError, match="encoder.lr"):
        lookalike.run(dataset="sample", artifacts_root=tmp_path, encoder__lr="fast")
    assert not (tmp_path / "dataset").exists()


def test_an_index_copied_elsewhere_loads_by_folder(index, tmp_path):
    shutil.copytree(index.root, tmp_path / "artifacts")
    moved = lookalike.load(tmp_path / "artifacts" / "index" / index.key)
    assert moved.root == tmp_path / "artifacts" and moved.search(index.rows[0], k=1)[0].row == index.rows[0]
