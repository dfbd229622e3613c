"""Decoding images safely: every failure becomes a reason string, never an exception."""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from lookalike.core.errors import LookalikeError
from lookalike.stages.dataset.profile import THUMBNAIL, Look, grey_mode, look


class UnreadableImage(LookalikeError, ValueError):
    """An image that cannot be decoded; the message is the reason shown to users."""


class PixelBudgetError(LookalikeError, ValueError):
    """The images of one request would decode to more pixels than it may decode in all."""


class PixelBudget:
    """The pixels a group of decodes (one HTTP request) may decode in all, counted as they are
    decoded (after JPEG draft), so one request cannot take the server's time or memory."""

    def __init__(self, limit: int) -> None:
        self.limit, self.spent = limit, 0

    def spend(self, width: int, height: int) -> None:
        if self.spent + width * height > self.limit:
            raise PixelBudgetError(
                f"the images of this request decode to more than {self.limit:,} pixels in all; "
                "send fewer or smaller images per request"
            )
        self.spent += width * height


def decode_rgb(
    data: bytes, max_pixels: int, *, draft_to: int | None = None, budget: PixelBudget | None = None
) -> Image.Image:
    """Decode encoded image bytes into an RGB PIL image.

    EXIF orientation is applied; grayscale, palette, CMYK, 16-bit and alpha images
    become RGB (alpha composited on white). Images declaring more than `max_pixels`
    are refused before their pixels are decoded, so a decompression bomb costs nothing.

    Args:
        draft_to: decode a JPEG at the smallest DCT scale (1/2, 1/4, 1/8) that keeps both sides at
            least this long (PIL's draft mode: less time and memory, no full-size copy); other
            formats decode at full size.
        budget: counts the pixels decoded (after draft) and refuses, before decoding, an image that
            would take it past its limit.

    Raises:
        UnreadableImage: with a short reason (empty, not an image, truncated, too large).
        PixelBudgetError: the image would exceed `budget`.
    """
    with _reasons():
        img = _open(data, max_pixels)
        if draft_to:
            img.draft(None, (draft_to, draft_to))  # a no-op for formats without reduced decoding
        if budget is not None:
            budget.spend(*img.size)
        img.load()
    img = ImageOps.exif_transpose(img)
    return to_rgb(img)


@contextmanager
def _reasons() -> Iterator[None]:
    """Every way a decode fails as an `UnreadableImage` with a short reason (a budget's refusal as itself)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except (UnreadableImage, PixelBudgetError):
        raise
    except UnidentifiedImageError:
        raise UnreadableImage("not a recognised image format") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UnreadableImage(f"decompression bomb: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise UnreadableImage(f"cannot decode: {exc}") from None


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """The image opened (its header read, nothing decoded), refused when it declares more than `max_pixels`."""
    if not data:
        raise UnreadableImage("empty file (0 bytes)")
    img: Image.Image = Image.open(io.BytesIO(data))
    width, height = img.size
    if width * height > max_pixels:
        raise UnreadableImage(
            f"declares {width}x{height} pixels, over the {max_pixels} limit (possible decompression bomb)"
        )
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: scale to 8 bits instead of clipping to white.
        import numpy as np

        arr = np.asarray(img, dtype=np.float64)
        hi = arr.max() or 1.0
        img = Image.fromarray((arr * (255.0 / hi)).astype("uint8"), mode="L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


# Snapshot images already decoded once within the dataset's pixel limit when the dataset stage took them.
_SNAPSHOT_LIMIT = 1 << 62


# How many times the side an image is fitted to a JPEG keeps when it is decoded for a model: at 2x the fit (a
# bilinear reduction) still averages 2x2 or more decoded pixels into each pixel it makes, and random-resized crops
# down to a quarter of the area (encoder.crop_min_scale's default) still hold input_size pixels across. On
# camera-sized JPEGs fitted to 224 px, against a full decode's fit: 1x 44.2 dB PSNR, 2x 51.9 dB, 4x 59.9 dB; at
# 32 px every factor up to 4 is the 1/8 scale, 55.4 dB (benchmarks/results/decode_rate_camera_2k.json).
DRAFT_FACTOR = 2


def draft_side(fit_to: int) -> int:
    """The side a JPEG decodes to (at least) for an image fitted to `fit_to` x `fit_to` afterwards."""
    return DRAFT_FACTOR * fit_to


def decode_snapshot_image(data: bytes, draft_to: int | None = None) -> Image.Image:
    """`decode_rgb` for an image of a dataset snapshot, which passed the pixel limit when it was taken.

    Args:
        draft_to: decode a JPEG at the smallest DCT scale that keeps both sides at least this long
            (`draft_side` of the size it is fitted to next); None decodes at full size.
    """
    return decode_rgb(data, _SNAPSHOT_LIMIT, draft_to=draft_to)


# The side a check decodes to: the profile's thumbnail size (`profile.THUMBNAIL`), so the one decode that
# tests an image also gives its colour and layout figures (`profile.look`). On a camera-sized JPEG that is PIL's
# draft at 1/8 scale, which still reads (and so still catches truncation in) every entropy-coded byte, ~5x faster
# than a full decode.
CHECK_DRAFT = THUMBNAIL


@dataclass(frozen=True)
class Checked:
    """An image the dataset stage looked at: its bytes and sha256, or why it is skipped."""

    data: bytes
    sha256: str
    reason: str | None
    shape: tuple[int, int, str] | None = None  # (width, height, mode) as its header declares them
    look: Look | None = None  # its colour and layout figures for the profile (`profile.look`)


def check_images(items: list[tuple[dict | None, str | None, int, int | None]]) -> list[Checked]:
    """Read, hash and test-decode a batch of undecoded images, each `(image, keyed sha256 or None,
    max_pixels, max_side or None)`; run in worker processes by the dataset stage, so it imports nothing heavy.

    An image that cannot be read or decoded, or whose bytes are not the ones its key was made from
    (`keyed`), comes back with its reason instead of raising. With a `max_side`, an image longer than that
    comes back as its `bounded_copy` (its sha256 and shape stay the original's: they name its content).
    """
    out = []
    for image, keyed, max_pixels, max_side in items:
        data, reason = read_image_bytes(image)
        sha = hashlib.sha256(data).hexdigest() if reason is None else ""
        if reason is None and keyed is not None and keyed != sha:
            reason = (
                "changed after it was listed (its content is not the one the dataset key names); "
                "run again to take the new content (--set dataset.verify=full if size and mtime stayed)"
            )
        shape, seen = None, None
        if reason is None:
            try:
                shape, seen = _test_decode(data, max_pixels)
                if max_side is not None:
                    data = bounded_copy(data, max_side) or data
            except UnreadableImage as exc:
                reason = str(exc)
        out.append(Checked(data if reason is None else b"", sha, reason, shape, seen))
    return out


# Quality of a bounded copy: img2dataset's default for the resized images it stores (encode_quality=95).
BOUNDED_QUALITY = 95


def bounded_copy(data: bytes, max_side: int) -> bytes | None:
    """The image with its longest side scaled down to `max_side`, as an RGB JPEG at `BOUNDED_QUALITY`, EXIF
    orientation applied (`decode_rgb`'s pixels, smaller); None when it already fits (its own bytes serve).

    A JPEG decodes at the smallest DCT scale that still holds `max_side` (PIL's draft), then a Lanczos
    reduction makes the copy: what `dataset.max_side` stores for training and embedding, as img2dataset and
    FFCV store a bounded copy instead of the original.
    """
    with _reasons():
        img = _open(data, _SNAPSHOT_LIMIT)  # already within the dataset's pixel limit: the check passed it
        if max(img.size) <= max_side:
            return None
        img.draft(None, (max_side, max_side))
        img.load()
    img = to_rgb(ImageOps.exif_transpose(img))
    img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=BOUNDED_QUALITY)
    return out.getvalue()


def _test_decode(data: bytes, max_pixels: int) -> tuple[tuple[int, int, str], Look]:
    """Decode an image as `decode_rgb` does, drafted to `CHECK_DRAFT`: its header's (width, height, mode) and
    its look, both from this one decode."""
    with _reasons():
        img = _open(data, max_pixels)
        shape, grey = (img.size[0], img.size[1], img.mode), grey_mode(img)  # as declared, before decoding
        img.draft(None, (CHECK_DRAFT, CHECK_DRAFT))
        img.load()
    to_rgb(ImageOps.exif_transpose(img))  # what every later decode does to it must work too
    return shape, look(img, grey)


def read_image_bytes(image: dict | None) -> tuple[bytes, str | None]:
    """(encoded bytes, skip reason) for an undecoded `datasets` image: its bytes, or its file's."""
    if image is None:
        return b"", "missing image (null)"
    data, path = image.get("bytes"), image.get("path")
    if data is None and path:
        try:
            if path.startswith("s3://"):
                from lookalike.artifacts.s3 import read_url

                data = read_url(path)
            else:
                data = Path(path).read_bytes()
        except FileNotFoundError:
            return b"", "cannot read file: it vanished after it was listed"
        except OSError as exc:
            return b"", f"cannot read file: {exc.strerror or exc}"
        except LookalikeError as exc:  # the bucket could not be read: its one line
            return b"", f"cannot read object: {exc}"
    return data or b"", None if data else "empty file (0 bytes)"
