"""Pictures people would rather look at than read: loss curves and retrieval grids."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from lookalike.core.manifest import atomic_path

THUMB = 96
LABEL_H = 28


def save_loss_curve(path: Path, losses: Sequence[float], title: str, cache_dir: Path | None = None) -> None:
    """Plot per-epoch losses. matplotlib's font cache goes to `cache_dir` unless MPLCONFIGDIR is set."""
    if cache_dir is not None:
        os.environ.setdefault("MPLCONFIGDIR", str(cache_dir))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    ax.plot(range(1, len(losses) + 1), losses, marker="o")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def retrieval_grid(rows: Sequence[tuple[Image.Image, str, Sequence[tuple[Image.Image, str]]]]) -> Image.Image:
    """One row per query: the query (outlined) then its neighbours, each with a caption.

    Args:
        rows: (query image, query caption, [(neighbour image, caption), ...]).
    """
    columns = 1 + max((len(n) for _, _, n in rows), default=0)
    cell_w, cell_h = THUMB + 8, THUMB + LABEL_H + 8
    grid = Image.new("RGB", (columns * cell_w, max(len(rows), 1) * cell_h), "white")
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default()
    for r, (query, caption, neighbours) in enumerate(rows):
        cells = [(query, caption)] + list(neighbours)
        for c, (image, text) in enumerate(cells):
            x, y = c * cell_w + 4, r * cell_h + 4
            thumb = image.convert("RGB").resize(
                (THUMB, THUMB), Image.Resampling.NEAREST if max(image.size) < THUMB else Image.Resampling.BILINEAR
            )
            grid.paste(thumb, (x, y))
            if c == 0:
                draw.rectangle([x - 2, y - 2, x + THUMB + 1, y + THUMB + 1], outline=(220, 40, 40), width=2)
            for i, line in enumerate(text.split("\n")[:2]):
                draw.text((x, y + THUMB + 2 + 12 * i), line[:18], fill=(20, 20, 20), font=font)
    return grid


def save_image(path: Path, image: Image.Image) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def png_data_url(path: Path, max_bytes: int) -> str:
    """The PNG as a `data:` URL no bigger than `max_bytes` (halving its size until it fits),
    for viewers that cannot reach the file itself (the Prefect UI)."""
    import base64
    import io

    data = path.read_bytes()
    if len(data) > max_bytes:
        with Image.open(path) as image:
            picture = image.convert("RGB")
        while len(data) > max_bytes and min(picture.size) > 16:
            picture = picture.resize((picture.width // 2, picture.height // 2), Image.Resampling.LANCZOS)
            buffer = io.BytesIO()
            picture.save(buffer, format="PNG", optimize=True)
            data = buffer.getvalue()
    return "data:image/png;base64," + base64.b64encode(data).decode()
