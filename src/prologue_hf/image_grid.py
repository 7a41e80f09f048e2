"""One image grid for every picture the package writes (demo samples, reconstructions, analysis figures).

It depends on numpy and PIL only, so any layer (models, training, evaluation, research) may call it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont
import torch

BACKGROUND = 255  # white gaps, padding cells and label margin
TEXT = 0


def _as_tiles(images: Sequence[PIL.Image.Image] | np.ndarray | torch.Tensor) -> np.ndarray:
    """uint8 ``[N, H, W, C]`` (C = 1 or 3) from PIL images, a numpy ``[N, H, W, C]`` or a torch ``[N, C, H, W]``."""
    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.dtype != torch.uint8:
            raise ValueError(
                f"images as a torch tensor must be uint8 [N, C, H, W], got {images.dtype} {list(images.shape)}"
            )
        tiles = images.detach().cpu().permute(0, 2, 3, 1).numpy()
    elif isinstance(images, np.ndarray):
        if images.ndim != 4 or images.dtype != np.uint8:
            raise ValueError(f"images as a numpy array must be uint8 [N, H, W, C], got {images.dtype} {list(images.shape)}")
        tiles = images
    else:
        images = list(images)
        if not images or not all(isinstance(image, PIL.Image.Image) for image in images):
            raise ValueError("images must be a uint8 array / tensor or a non-empty sequence of PIL images")
        if len({image.size for image in images}) != 1:
            raise ValueError(f"images must share one size, got {sorted({image.size for image in images})}")
        mode = "L" if all(image.mode == "L" for image in images) else "RGB"
        tiles = np.stack([np.asarray(image.convert(mode)) for image in images])
        tiles = tiles[..., None] if mode == "L" else tiles
    if tiles.shape[0] == 0:
        raise ValueError("images is empty")
    if tiles.shape[-1] not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels, got {tiles.shape[-1]} (shape {list(tiles.shape)})")
    return tiles


def image_grid(
    images: Sequence[PIL.Image.Image] | np.ndarray | torch.Tensor,
    rows: int,
    labels: Sequence[str] | None = None,
    gap: int = 2,
    scale: int = 1,
) -> PIL.Image.Image:
    """Tile ``images`` row by row into ``rows`` rows, with an optional label left of each row.

    Args:
        images: N images of one size: PIL images, a uint8 numpy ``[N, H, W, C]`` or a uint8 torch ``[N, C, H, W]``
            (``PrologueTokenizerModel.postprocess(x, "uint8")``), C = 1 or 3. Row r holds images
            ``r * cols ... r * cols + cols - 1`` with ``cols = ceil(N / rows)``; missing cells stay white.
        rows: number of rows, 1 <= rows <= N.
        labels: one text per row (e.g. class names), drawn in a white margin on the left.
        gap: white pixels between tiles (before scaling).
        scale: integer nearest-neighbour upscaling, so that 32px images stay readable; labels are drawn after it.

    Returns:
        one PIL image (mode ``"L"`` for 1-channel images, else ``"RGB"``).
    """
    tiles = _as_tiles(images)
    count, height, width, channels = tiles.shape
    if not 1 <= rows <= count:
        raise ValueError(f"rows must be between 1 and the number of images ({count}), got {rows}")
    if labels is not None and len(labels) != rows:
        raise ValueError(f"labels has {len(labels)} entries for {rows} rows")
    if gap < 0 or scale < 1:
        raise ValueError(f"gap must be >= 0 and scale >= 1, got gap={gap}, scale={scale}")
    cols = math.ceil(count / rows)
    canvas = np.full((rows * (height + gap) - gap, cols * (width + gap) - gap, channels), BACKGROUND, dtype=np.uint8)
    for index, tile in enumerate(tiles):
        top, left = (index // cols) * (height + gap), (index % cols) * (width + gap)
        canvas[top : top + height, left : left + width] = tile
    grid = PIL.Image.fromarray(canvas[..., 0] if channels == 1 else canvas)
    if scale > 1:
        grid = grid.resize((grid.width * scale, grid.height * scale), PIL.Image.NEAREST)
    if labels is None:
        return grid
    row_height = height * scale
    font = PIL.ImageFont.load_default(size=max(10, min(24, row_height // 4)))
    measure = PIL.ImageDraw.Draw(grid)
    margin = 12 + max(measure.textbbox((0, 0), str(label), font=font)[2] for label in labels)
    white, black = (BACKGROUND, TEXT) if grid.mode == "L" else ((BACKGROUND,) * 3, (TEXT,) * 3)
    labelled = PIL.Image.new(grid.mode, (grid.width + margin, grid.height), white)
    labelled.paste(grid, (margin, 0))
    draw = PIL.ImageDraw.Draw(labelled)
    for r, label in enumerate(labels):
        centre = r * (height + gap) * scale + row_height / 2
        draw.text((4, centre), str(label), fill=black, font=font, anchor="lm")
    return labelled


__all__ = ["image_grid"]
