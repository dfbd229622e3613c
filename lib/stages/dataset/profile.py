"""What a collection looks like: image sizes and colour, read from the snapshot the dataset stage wrote.

The evaluation's baselines and a recipe chosen from the data need to know whether a collection
is 28-px grayscale clothing or 4-megapixel colour photos. Only headers are read for sizes; colour
is judged on a small decoded thumbnail, so an RGB file holding a grayscale scan counts as grayscale.
"""

from __future__ import annotations

import io
from collections import Counter
from typing import Any

import numpy as np
from PIL import Image

from lookalike.stages.sampling import seeded_sample

GRAYSCALE_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}
COLOUR_SAMPLE = 2_000  # images whose pixels are looked at for colour (a seeded sample)
THUMBNAIL = 32
GREY_TOLERANCE = 3  # largest channel difference (of 255) still counted as grey: JPEG chroma noise


def profile_images(snapshot, batch: int = 512) -> dict[str, Any]:
    """{"width"/"height": {min, median, max}, "modes": {mode: count}, "grayscale_fraction", "colour": "grayscale"|
    "colour"|"mixed"} for every image of an opened snapshot (sizes) and a seeded sample of them (colour)."""
    n = len(snapshot)
    widths, heights, modes = np.zeros(n, np.int64), np.zeros(n, np.int64), Counter()
    looked = set(seeded_sample(n, COLOUR_SAMPLE).tolist())
    grey = looked_at = 0
    for start in range(0, n, batch):
        for offset, image in enumerate(snapshot[start : start + batch]["image"]):
            with Image.open(io.BytesIO(image["bytes"])) as img:
                widths[start + offset], heights[start + offset] = img.size
                modes[img.mode] += 1
                if start + offset in looked:
                    looked_at += 1
                    grey += _is_grey(img)
    fraction = round(grey / looked_at, 4) if looked_at else None
    colour = (
        None if fraction is None else "grayscale" if fraction >= 0.95 else "colour" if fraction <= 0.05 else "mixed"
    )
    return {
        "width": _spread(widths),
        "height": _spread(heights),
        "modes": dict(modes.most_common()),
        "grayscale_fraction": fraction,
        "colour": colour,
    }


def describe_profile(profile: dict[str, Any] | None) -> str | None:
    """'28x28 px (median), grayscale' for summaries; None without a profile."""
    if not profile or not profile.get("width"):
        return None
    width, height = profile["width"], profile["height"]
    size = f"{width['median']}x{height['median']} px (median)"
    if (width["min"], height["min"]) != (width["max"], height["max"]):
        size += f", {width['min']}x{height['min']} to {width['max']}x{height['max']}"
    return f"{size}, {profile['colour']}" if profile.get("colour") else size


def _is_grey(img: Image.Image) -> bool:
    if img.mode in GRAYSCALE_MODES:
        return True
    if img.mode == "P" and img.palette is not None and img.palette.mode == "L":
        return True
    img.draft("RGB", (THUMBNAIL, THUMBNAIL))  # JPEG decodes at a fraction of its size
    small = np.asarray(img.convert("RGB").resize((THUMBNAIL, THUMBNAIL)), dtype=np.int16)
    return int(np.abs(small - small.mean(axis=2, keepdims=True)).max()) <= GREY_TOLERANCE


def _spread(values: np.ndarray) -> dict[str, int]:
    if not len(values):
        return {}
    return {"min": int(values.min()), "median": int(np.median(values)), "max": int(values.max())}
