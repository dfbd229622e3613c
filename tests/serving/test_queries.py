"""Queries: one normaliser from what users search with (files, folders, bytes, PIL images, row ids,
vectors) to what a searcher takes, with one-line errors the CLI, the Python API and the HTTP API share."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lookalike.serving.queries import (
    QueryError,
    as_queries,
    decode_image,
    image_files,
    normalise,
    query_vector,
    read_image,
    read_query_file,
)
from lookalike.stages.dataset.images import PixelBudget
from lookalike.stages.dataset.torch_data import ResizeToTensor

FIT = ResizeToTensor(32)  # what an encoder's `Embedder.resize` is


def encoded(size: tuple[int, int], fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.linear_gradient("L").resize(size).convert("RGB").save(buffer, format=fmt)
    return buffer.getvalue()


def test_a_file_that_cannot_be_read_is_named_with_a_404_or_400_and_the_systems_reason(tmp_path):
    # a long temporary path (under pytest-xdist) is shortened in the middle, with its length
    with pytest.raises(QueryError, match=r"^no such image file: '.*missing\.png'( \(\d+ characters\))?$") as missing:
        read_query_file(tmp_path / "missing.png")
    assert missing.value.status == 404 and missing.value.reason == "No such file or directory"
    with pytest.raises(QueryError, match="^no such image file: ") as folder:
        read_query_file(tmp_path)
    assert folder.value.status == 404
    with pytest.raises(QueryError, match=r"^cannot read image file \(File name too long\): .*\(\d+ characters\)$") as e:
        read_query_file(tmp_path / ("x" * 100_000))
    assert e.value.status == 400 and e.value.reason == "File name too long"


def test_bytes_decode_full_size_or_fitted_and_a_bad_image_says_why_in_one_line():
    png = encoded((300, 200))
    assert decode_image(png, 10**8).size == (300, 200)  # a picture of the query keeps its size
    budget = PixelBudget(10**9)
    assert decode_image(png, 10**8, FIT, budget).size == (32, 32) and budget.spent == 300 * 200
    with pytest.raises(QueryError, match="^not a usable image: not a recognised image format$") as bad:
        decode_image(b"GIF89a-but-not-really", 10**8, FIT)
    assert bad.value.status == 400 and bad.value.reason == "not a recognised image format"
    with pytest.raises(QueryError, match="not a usable image: .*pixels") as bomb:
        decode_image(png, 1000, FIT)
    assert bomb.value.status == 413
    with pytest.raises(QueryError, match="decode to more than 50,000 pixels in all") as over:
        decode_image(png, 10**8, FIT, PixelBudget(50_000))
    assert over.value.status == 413


def test_a_file_that_is_no_image_names_the_file_before_why(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(
        QueryError, match=r"^'.*a\.png'( \(\d+ characters\))?: not a usable image: empty file \(0 bytes\)$"
    ) as caught:
        read_image(tmp_path / "a.png", 10**8, FIT)
    assert caught.value.status == 400 and caught.value.reason == "empty file (0 bytes)"


def test_a_folder_is_its_image_files_in_name_order_without_hidden_ones(tmp_path):
    for name in ["b.png", "a.JPG", "sub/c.webp", ".hidden/d.png", "e.txt", "sub/.f.png"]:
        (tmp_path / "in" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / name).write_bytes(b"")
    given = tmp_path / "missing.png"
    found = image_files([tmp_path / "in", given])
    assert found == [tmp_path / "in" / n for n in ["a.JPG", "b.png", "sub/c.webp"]] + [given]


@pytest.mark.parametrize(
    ("queries", "single", "n"),
    [
        (np.zeros(4, np.float32), True, 1),
        (np.zeros((3, 4), np.float32), False, 3),
        (b"\x89PNG", True, 1),  # bytes are one encoded image, never row ids
        (7, True, 1),
        (np.int64(7), True, 1),
        ("a.png", True, 1),
        (Path("a.png"), True, 1),
        ([1, 2], False, 2),
        (3.5, True, 1),  # not a query: `normalise` names it
    ],
)
def test_one_query_or_many(queries, single, n):
    one, items = as_queries(queries)
    assert one is single and len(items) == n


def test_a_3d_array_is_neither_one_vector_nor_many():
    with pytest.raises(QueryError, match="not a 3-D array"):
        as_queries(np.zeros((1, 1, 4)))


def test_each_kind_of_query_becomes_an_image_a_row_or_a_vector(tmp_path):
    (tmp_path / "q.png").write_bytes(encoded((64, 48)))
    image = Image.new("RGB", (5, 5))
    assert normalise(image, 10**8, FIT) is image
    assert normalise(np.int32(4), 10**8, FIT) == 4 and type(normalise(np.int32(4), 10**8, FIT)) is int
    assert normalise(np.arange(3), 10**8, FIT) == [0.0, 1.0, 2.0]
    assert normalise(encoded((64, 48)), 10**8, FIT).size == (32, 32)
    assert normalise(memoryview(encoded((64, 48))), 10**8, FIT).size == (32, 32)
    assert normalise(str(tmp_path / "q.png"), 10**8, FIT).size == (32, 32)
    assert normalise(tmp_path / "q.png", 10**8).size == (64, 48)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        (True, r"^not a query: True$"),
        (np.bool_(False), r"^not a query: np.False_$"),  # its repr, as numpy 2 writes it
        (3.5, r"^not a query: float; give PIL images, image file paths, image bytes, row ids or 1-D numpy vectors$"),
        (np.ones(3, complex), r"^a vector query is a 1-D array of real numbers, not a 1-D array of complex128$"),
        (np.ones((2, 2)), r"^a vector query is a 1-D array of real numbers, not a 2-D array of float64$"),
        ("missing.png", r"^no such image file: 'missing.png'$"),
    ],
)
def test_what_is_no_query_is_one_line_naming_it(tmp_path, monkeypatch, query, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(QueryError, match=message):
        normalise(query, 10**8, FIT)


def test_a_vector_must_fit_the_index_and_be_finite():
    assert query_vector([1, 2, 3], 3, "k").dtype == np.float32
    with pytest.raises(QueryError, match="^vector has 2 values; index abc takes 3$"):
        query_vector([1.0, 2.0], 3, "abc")
    with pytest.raises(QueryError, match="^vector contains NaN or infinity$"):
        query_vector([1.0, float("nan"), 2.0], 3, "abc")
