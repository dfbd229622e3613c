"""What a collection looks like: image sizes and colour, read from the snapshot the dataset stage wrote.

The evaluation's baselines and a recipe chosen from the data need to know whether a collection
is 28-px grayscale clothing or 4-megapixel colour photos. Only headers are read for sizes; colour
is judged on a small decoded thumbnail, so an RGB file holding a grayscale scan counts as grayscale.

Layout is judged on the same thumbnails: the share of the pixel variance that position explains
(the variance of the mean image over the total). Where every image puts its object in the same
place (Fashion-MNIST: 0.34) the mean image is a clear silhouette; where framing varies (photos:
0.03) it is flat. An encoder for aligned images keeps where things are (`lookalike.core.recipe`).
"""

from __future__ import annotations

import io
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import numpy as np
from PIL import Image

from lookalike.stages.sampling import seeded_sample

GRAYSCALE_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}
COLOUR_SAMPLE = 2_000  # images whose pixels are looked at for colour (a seeded sample)
THUMBNAIL = 32
GREY_TOLERANCE = 3  # largest channel difference (of 255) still counted as grey: JPEG chroma noise
LAYOUT_SIDE = 16  # thumbnails for the layout statistic, luminance
ALIGNED_SHARE = 0.15  # position explains at least this share of the pixel variance: "aligned" (measured 0.34 vs 0.03)


class ImageSource(Protocol):
    """A snapshot's images by position (`lookalike.stages.dataset.parts.PartImages`)."""

    def __len__(self) -> int: ...

    def image_bytes(self, positions: list[int]) -> list[bytes]: ...


# A look: (whether the image is grey, its LAYOUT_SIDE-square luminance thumbnail as 8-bit bytes, row by row)
Look = tuple[bool, bytes]
_POOL_MIN_BYTES = 32 << 20  # looks left to take after this many bytes were looked at here go to the workers
_LOOK_CHUNK = 16  # images per worker task


def profile_images(
    images: ImageSource,
    batch: int = 512,
    shapes: list | None = None,
    looks: Mapping[int, Look] | None = None,
    pool=None,
) -> dict[str, Any]:
    """{"width"/"height": {min, median, max}, "modes": {mode: count}, "grayscale_fraction", "colour": "grayscale"|
    "colour"|"mixed", "layout_share", "layout": "aligned"|"varied"} for every image of a snapshot (sizes)
    and a seeded sample of them (colour and layout). `shapes`: each image's (width, height, mode) when they
    are known already (recorded when it was checked): (width, height, mode, how many), so only the sample's images
    are opened; `looks`: position -> look of the images the dataset stage's check decoded (`SampleLooks`), so
    only the sample's others are decoded here, the larger part of them in `pool` (anything with
    `submit(fn, *args)`) when one is given."""
    n = len(images)
    looked = sorted(set(seeded_sample(n, COLOUR_SAMPLE).tolist()))
    looks = looks or {}
    grey, thumbnails = 0, []
    if shapes is not None:
        counts = np.array([count for *_, count in shapes], np.int64)
        widths = np.repeat(np.array([shape[0] for shape in shapes], np.int64), counts)
        heights = np.repeat(np.array([shape[1] for shape in shapes], np.int64), counts)
        modes = Counter[str]()
        for _, _, mode, count in shapes:
            modes[mode] += count
        taken = _sample_looks(images, looked, looks, pool)
        return _summary(widths, heights, modes, sum(g for g, _ in taken), [_thumbnail(t) for _, t in taken])
    widths, heights, modes = np.zeros(n, np.int64), np.zeros(n, np.int64), Counter[str]()
    sampled = set(looked)
    for start in range(0, n, batch):
        for offset, data in enumerate(images.image_bytes(list(range(start, min(n, start + batch))))):
            with Image.open(io.BytesIO(data)) as img:
                widths[start + offset], heights[start + offset] = img.size
                modes[img.mode] += 1
                if start + offset in sampled:
                    is_grey, luminance = looks.get(start + offset) or _look(img)
                    grey += is_grey
                    thumbnails.append(_thumbnail(luminance))
    return _summary(widths, heights, modes, grey, thumbnails)


_SAMPLE_BATCH = 32


class SampleLooks:
    """The looks of the images the profile's sample will hold, kept as the dataset stage takes its checked
    images in snapshot order, so the profile decodes none of them a second time. The sample is drawn for the
    `expected` number of images; where fewer are kept (unreadable ones), the positions both samples hold are
    kept and the profile decodes the rest."""

    def __init__(self, expected: int) -> None:
        self.wanted = set(seeded_sample(expected, COLOUR_SAMPLE).tolist())
        self.position = 0
        self.looks: dict[int, Look] = {}

    def add(self, looks: Iterable[Look | None]) -> None:
        """The looks of the next kept images, in order (None: not decoded in this run)."""
        for seen in looks:
            if seen is not None and self.position in self.wanted:
                self.looks[self.position] = seen
            self.position += 1


def _sample_looks(images: ImageSource, positions: list[int], looks: Mapping[int, Look], pool) -> list[Look]:
    """The looks of the images at `positions`, in order: from `looks`, else decoded here until _POOL_MIN_BYTES
    were (a few small images cost less than starting workers), the rest in the pool; read a few at a time
    (camera images are megabytes), a bounded number of tasks in flight."""
    out: dict[int, Look] = dict((p, looks[p]) for p in positions if p in looks)
    missing = [p for p in positions if p not in looks]
    pending: deque = deque()  # (positions, future for their looks)
    spent = 0

    def taken(at: list[int], future) -> None:
        out.update(zip(at, future.result()))

    for start in range(0, len(missing), _SAMPLE_BATCH):
        at = missing[start : start + _SAMPLE_BATCH]
        datas = images.image_bytes(at)
        if pool is None or spent < _POOL_MIN_BYTES:
            spent += sum(len(d) for d in datas)
            out.update(zip(at, (look_at(d) for d in datas)))
            continue
        for i in range(0, len(at), _LOOK_CHUNK):
            pending.append((at[i : i + _LOOK_CHUNK], pool.submit(look_images, datas[i : i + _LOOK_CHUNK])))
        while len(pending) > 2 * getattr(pool, "workers", 1):
            taken(*pending.popleft())
    while pending:
        taken(*pending.popleft())
    return [out[position] for position in positions]


def _look(img: Image.Image) -> Look:
    """The look of an opened image, decoded here (JPEG drafted to THUMBNAIL)."""
    grey = grey_mode(img)
    img.draft("RGB", (THUMBNAIL, THUMBNAIL))  # JPEG decodes at a fraction of its size
    return look(img, grey)


def look_images(datas: list[bytes]) -> list[Look]:
    """`look_at` for a batch of encoded images: a task for a worker process."""
    return [look_at(data) for data in datas]


def look_at(data: bytes) -> Look:
    """The look of an encoded image (of a snapshot: it decoded once already), JPEG drafted to THUMBNAIL."""
    with Image.open(io.BytesIO(data)) as img:
        return _look(img)


def grey_mode(img: Image.Image) -> bool:
    """Whether an opened image's mode (as its header declares it) holds grey pixels only."""
    return img.mode in GRAYSCALE_MODES or (img.mode == "P" and img.palette is not None and img.palette.mode == "L")


def look(img: Image.Image, grey: bool) -> Look:
    """The look of an opened image, JPEG drafted to THUMBNAIL (decoded here unless it was): `grey` (its
    mode's, `grey_mode`), else whether its pixels are; and its luminance thumbnail."""
    rgb = img.convert("RGB")
    luminance = rgb.convert("L").resize((LAYOUT_SIDE, LAYOUT_SIDE), Image.Resampling.BILINEAR).tobytes()
    if grey:
        return True, luminance
    small = np.asarray(rgb.resize((THUMBNAIL, THUMBNAIL)), dtype=np.int16)
    return int(np.abs(small - small.mean(axis=2, keepdims=True)).max()) <= GREY_TOLERANCE, luminance


def _thumbnail(luminance: bytes) -> np.ndarray:
    """A look's luminance thumbnail in [0, 1]."""
    return np.frombuffer(luminance, np.uint8).reshape(LAYOUT_SIDE, LAYOUT_SIDE).astype(np.float32) / 255


def _summary(widths: np.ndarray, heights: np.ndarray, modes: Counter, grey: int, thumbnails: list) -> dict[str, Any]:
    fraction = round(grey / len(thumbnails), 4) if thumbnails else None
    colour = (
        None if fraction is None else "grayscale" if fraction >= 0.95 else "colour" if fraction <= 0.05 else "mixed"
    )
    share = layout_share(np.stack(thumbnails)) if len(thumbnails) > 1 else None
    return {
        "width": _spread(widths),
        "height": _spread(heights),
        "modes": dict(modes.most_common()),
        "grayscale_fraction": fraction,
        "colour": colour,
        "layout_share": share,
        "layout": None if share is None else "aligned" if share >= ALIGNED_SHARE else "varied",
    }


def layout_share(thumbnails: np.ndarray) -> float:
    """The share of the pixel variance that position explains, for (n, side, side) luminance thumbnails:
    the variance over positions of the mean image, over that plus the mean per-position variance."""
    between = float(thumbnails.mean(0).var())
    within = float(thumbnails.var(0).mean())
    return round(between / (between + within), 4) if between + within > 0 else 0.0


def describe_profile(profile: dict[str, Any] | None) -> str | None:
    """'28x28 px (median), grayscale' for summaries; None without a profile."""
    if not profile or not profile.get("width"):
        return None
    width, height = profile["width"], profile["height"]
    size = f"{width['median']}x{height['median']} px (median)"
    if (width["min"], height["min"]) != (width["max"], height["max"]):
        size += f", {width['min']}x{height['min']} to {width['max']}x{height['max']}"
    words = [size] + [profile[name] for name in ("colour", "layout") if profile.get(name)]
    return ", ".join(words)


def _spread(values: np.ndarray) -> dict[str, int]:
    if not len(values):
        return {}
    return {"min": int(values.min()), "median": int(np.median(values)), "max": int(values.max())}
