"""IndexHolder's uploads: decoded one at a time at the size the encoder takes (JPEGs at a reduced
scale), the same vector as the full image, and a pixel budget per request."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from lookalike.serving.holder import IndexHolder, QueryError


@pytest.fixture(scope="module")
def holder(tiny_chain) -> IndexHolder:
    (index_folder,) = (tiny_chain / "index").glob("*/manifest.json")
    return IndexHolder(tiny_chain, index_folder.parent.name, max_request_pixels=5_000_000)


def encoded(size: tuple[int, int], fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.linear_gradient("L").resize(size).convert("RGB").save(buffer, format=fmt)
    return buffer.getvalue()


def test_an_upload_is_decoded_to_the_encoder_input_size_with_the_full_images_vector(holder):
    from lookalike.stages.dataset.images import PixelBudget, decode_rgb

    searcher = holder.searcher
    side = searcher.spec.input_size
    png, jpeg = encoded((2000, 1500), "PNG"), encoded((4000, 3000), "JPEG")
    budget = PixelBudget(10**9)
    image = holder.decode(png, budget)
    assert image.size == (side, side) and budget.spent == 2000 * 1500  # what is kept is input-sized
    np.testing.assert_array_equal(searcher.embed(image), searcher.embed(decode_rgb(png, 10**8)))
    budget = PixelBudget(10**9)
    assert holder.decode(jpeg, budget).size == (side, side)
    assert budget.spent == (4000 // 8) * (3000 // 8)  # a JPEG decodes at 1/8 scale, still >= 2 x the input size


def test_a_request_whose_images_decode_past_its_pixel_budget_is_a_413(holder):
    png = encoded((2000, 1000), "PNG")  # 2 megapixels; the holder allows 5 a request
    key, hits = holder.search_many([png, png], k=1)
    assert len(hits) == 2
    with pytest.raises(QueryError, match="decode to more than 5,000,000 pixels in all") as caught:
        holder.search_many([png, png, png], k=1)
    assert caught.value.status == 413
