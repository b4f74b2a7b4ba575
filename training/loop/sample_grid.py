"""A labelled PNG grid: held-out photos (rows) stylized with each style (columns)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

LABEL_HEIGHT = 14


def to_uint8(image: np.ndarray) -> np.ndarray:
    return (np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _tile(image: np.ndarray, size: int) -> Image.Image:
    return Image.fromarray(to_uint8(image)).resize((size, size), Image.Resampling.BILINEAR)


def make_grid(
    photos: list[np.ndarray],
    photo_names: list[str],
    styles: dict[str, np.ndarray],
    stylized: dict[str, list[np.ndarray]],
    tile: int = 160,
) -> Image.Image:
    """Top row: the style images; left column: the photos; cell (i, j): photo i in style j."""
    names = list(stylized)
    cols, rows = len(names) + 1, len(photos) + 1
    cell = tile + LABEL_HEIGHT
    grid = Image.new("RGB", (cols * tile, rows * cell), "white")
    draw = ImageDraw.Draw(grid)

    def put(image, label, row, col):
        grid.paste(_tile(image, tile), (col * tile, row * cell + LABEL_HEIGHT))
        draw.text((col * tile + 3, row * cell + 1), label[: tile // 7], fill="black")

    for j, name in enumerate(names, start=1):
        put(styles[name], f"style: {name}", 0, j)
    for i, (photo, photo_name) in enumerate(zip(photos, photo_names), start=1):
        put(photo, photo_name, i, 0)
        for j, name in enumerate(names, start=1):
            put(stylized[name][i - 1], f"{photo_name} x {name}", i, j)
    return grid


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
