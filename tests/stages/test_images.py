import io

import numpy as np
import pytest
from PIL import Image

from lookalike.stages.dataset.images import UnreadableImage, decode_rgb

LIMIT = 10_000_000


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "1"])
def test_any_mode_becomes_rgb(mode):
    fmt = "JPEG" if mode == "CMYK" else ("TIFF" if mode == "I;16" else "PNG")
    img = Image.new(mode, (9, 7))
    out = decode_rgb(encode(img, fmt), LIMIT)
    assert out.mode == "RGB" and out.size == (9, 7)


def test_sixteen_bit_grayscale_is_scaled_not_clipped():
    arr = np.array([[0, 1000], [2000, 4000]], dtype=np.uint16)
    img = Image.new("I;16", (2, 2))
    img.frombytes(arr.astype("<u2").tobytes())
    out = np.asarray(decode_rgb(encode(img, "TIFF"), LIMIT))
    assert out[1, 1, 0] == 255 and 0 < out[0, 1, 0] < 255


def test_alpha_is_composited_on_white():
    img = Image.new("RGBA", (2, 2), (0, 0, 0, 0))
    assert decode_rgb(encode(img), LIMIT).getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (30, 10), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90°
    out = decode_rgb(encode(img, "JPEG", exif=exif), LIMIT)
    assert out.size == (10, 30)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty"),
        (b"this is not an image", "not a recognised image"),
    ],
)
def test_unreadable_bytes_raise_with_a_reason(data, reason):
    with pytest.raises(UnreadableImage, match=reason):
        decode_rgb(data, LIMIT)


def test_truncated_image_is_unreadable():
    data = encode(Image.effect_noise((64, 64), 50), "JPEG")
    with pytest.raises(UnreadableImage, match="cannot decode"):
        decode_rgb(data[: len(data) // 2], LIMIT)


def test_decompression_bomb_is_refused_before_decoding():
    data = encode(Image.new("L", (4000, 4000)))
    with pytest.raises(UnreadableImage, match="decompression bomb"):
        decode_rgb(data, max_pixels=1_000_000)


def test_a_jpeg_drafted_to_a_size_decodes_at_the_smallest_scale_that_keeps_it_and_spends_that_on_the_budget():
    from lookalike.stages.dataset import images

    jpeg = encode(Image.linear_gradient("L").resize((4000, 3000)).convert("RGB"), "JPEG")
    budget = images.PixelBudget(10**9)
    assert decode_rgb(jpeg, 40_000_000, draft_to=400, budget=budget).size == (1000, 750)  # 1/4: 1/8 is < 400 high
    assert budget.spent == 1000 * 750
    png = encode(Image.new("L", (400, 300)))  # no reduced decoding: full size
    assert decode_rgb(png, LIMIT, draft_to=32, budget=budget).size == (400, 300)
    assert budget.spent == 1000 * 750 + 400 * 300
    with pytest.raises(images.PixelBudgetError, match="decode to more than 1,000 pixels in all"):
        decode_rgb(png, LIMIT, budget=images.PixelBudget(1_000))  # refused before its pixels are decoded


def test_a_bounded_copy_is_the_decoded_image_scaled_to_its_longest_side_and_none_when_it_fits():
    from lookalike.stages.dataset.images import bounded_copy

    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 255, (800, 1200, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90°: the copy is stored upright, without the tag
    data = encode(photo, "JPEG", exif=exif)
    copy = bounded_copy(data, 256)
    assert copy is not None and len(copy) < len(data)
    stored = Image.open(io.BytesIO(copy))
    assert stored.format == "JPEG" and stored.size == (171, 256) and stored.getexif().get(0x0112) is None
    # the copy's pixels are the original's, scaled: mean colour within a few levels
    upright = np.asarray(decode_rgb(data, LIMIT).resize((171, 256), Image.Resampling.LANCZOS), dtype=np.float64)
    assert np.abs(np.asarray(decode_rgb(copy, LIMIT), dtype=np.float64).mean((0, 1)) - upright.mean((0, 1))).max() < 3
    assert bounded_copy(encode(Image.new("RGB", (256, 100), "red"), "PNG"), 256) is None
