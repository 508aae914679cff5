"""Turning tensors into pictures: colour maps, overlays, enlargement, grids of maps, uint8.

Everything returns H×W×3 uint8 numpy arrays (what gradio, PIL and plotly show as they are).
"""
from __future__ import annotations

import math
from typing import Optional, Union

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ..data.images import to_uint8  # the one tensor → uint8 conversion (data/ owns images)

FONT = Path(__file__).resolve().parents[2] / "assets" / "fonts" / "DejaVuSans.ttf"

# A perceptual colormap (inferno), 9 anchors interpolated linearly: no matplotlib needed.
_INFERNO = np.array([
    [0, 0, 4], [31, 12, 72], [85, 15, 109], [136, 34, 106], [186, 54, 85],
    [227, 89, 51], [249, 140, 10], [249, 201, 50], [252, 255, 164]], dtype=np.float32)


def colorize(values: Union[np.ndarray, torch.Tensor], vmax: Optional[float] = None) -> np.ndarray:
    """H×W values → H×W×3 uint8 inferno image; 0 is black, ``vmax`` (default: the max) is yellow."""
    v = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    v = v.astype(np.float32)
    top = float(vmax) if vmax is not None else float(v.max()) if v.size else 1.0
    x = np.clip(v / max(top, 1e-8), 0, 1) * (len(_INFERNO) - 1)
    lo = np.floor(x).astype(int)
    hi = np.minimum(lo + 1, len(_INFERNO) - 1)
    frac = (x - lo)[..., None]
    rgb = _INFERNO[lo] * (1 - frac) + _INFERNO[hi] * frac
    return rgb.round().astype(np.uint8)


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """Blend a colorized heat map over an H×W×3 uint8 image."""
    return (image.astype(np.float32) * (1 - alpha) + heat.astype(np.float32) * alpha).round().astype(np.uint8)


def upscale(image: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement (keeps pixels crisp in the UI)."""
    factor = max(1, int(factor))
    return image.repeat(factor, 0).repeat(factor, 1) if factor > 1 else image


def upscale_to(image: np.ndarray, min_size: int = 256) -> np.ndarray:
    """Nearest-neighbour enlargement by the smallest whole factor that reaches ``min_size``."""
    return upscale(image, int(math.ceil(min_size / max(1, image.shape[0]))))


def show(image: torch.Tensor, min_size: int = 256) -> np.ndarray:
    """3×H×W in [-1, 1] → uint8 image enlarged (nearest) to at least ``min_size`` for display."""
    return upscale_to(to_uint8(image), min_size)


def map_grid(maps: torch.Tensor, columns: Optional[int] = None, pad: int = 2,
             vmax: Optional[float] = None, tile: Optional[int] = None) -> np.ndarray:
    """Tile K×H×W difference maps (shared colour scale) into one uint8 image, row-major.
    ``tile``: shrink each map to tile×tile first (max-pooling, so small hot spots stay visible)."""
    if tile is not None and tile < maps.shape[-1]:
        maps = torch.nn.functional.adaptive_max_pool2d(maps.unsqueeze(1).float(), tile)[:, 0]
    k, h, w = maps.shape
    columns = columns or int(math.ceil(math.sqrt(k)))
    rows = int(math.ceil(k / columns))
    top = float(maps.max()) if vmax is None else vmax
    grid = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, 3), 255, np.uint8)
    for i in range(k):
        r, c = divmod(i, columns)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        grid[y:y + h, x:x + w] = colorize(maps[i], top)
    return grid


def _font(size: int):
    try:
        return ImageFont.truetype(str(FONT), size)
    except OSError:  # a trimmed install without assets/: PIL's own bitmap font
        return ImageFont.load_default()


def with_colorbar(image: np.ndarray, vmax: float, label: str, vmin: float = 0.0,
                  ticks: int = 3) -> np.ndarray:
    """``image`` (an H×W×3 heat map drawn with :func:`colorize` on [vmin, vmax]) with a vertical
    inferno colour bar on its right: tick values and ``label`` (the unit), so the colours read as
    numbers. Returns a wider H×W'×3 uint8 image."""
    h, w = image.shape[:2]
    size = max(10, h // 22)
    font = _font(size)
    bar_w = max(8, h // 24)
    label_w = int(font.getlength(label)) if hasattr(font, "getlength") else 6 * len(label)
    tick_text = [f"{vmin + (vmax - vmin) * i / (ticks - 1):.3g}" for i in range(ticks)]
    text_w = max(int(font.getlength(t)) if hasattr(font, "getlength") else 6 * len(t) for t in tick_text)
    pad = size // 2
    top, bottom = size, size
    canvas = Image.new("RGB", (w + pad + bar_w + pad + text_w + pad + size + pad, h), "white")
    canvas.paste(Image.fromarray(image), (0, 0))
    length = h - top - bottom
    ramp = colorize(np.linspace(1.0, 0.0, length)[:, None].repeat(bar_w, 1), 1.0)
    x0 = w + pad
    canvas.paste(Image.fromarray(ramp), (x0, top))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((x0, top, x0 + bar_w - 1, top + length - 1), outline=(80, 80, 80))
    for i, t in enumerate(tick_text):
        y = top + length - 1 - round(i * (length - 1) / (ticks - 1))
        draw.line((x0 + bar_w, y, x0 + bar_w + 3, y), fill=(60, 60, 60))
        draw.text((x0 + bar_w + 5, y), t, fill=(30, 30, 30), font=font, anchor="lm")
    # the unit, written upwards beside the ticks
    text = Image.new("RGB", (min(label_w + 4, length), size + 4), "white")
    ImageDraw.Draw(text).text((0, 0), label, fill=(30, 30, 30), font=font)
    text = text.rotate(90, expand=True)
    canvas.paste(text, (x0 + bar_w + 5 + text_w + pad, top + max(0, (length - text.size[1]) // 2)))
    return np.asarray(canvas)


def number_cells(grid: np.ndarray, count: int, columns: int, cell: int, pad: int) -> np.ndarray:
    """Write each cell's index (row-major) in the top-left corner of a grid image whose cells are
    ``cell`` px with ``pad`` px between them and around them (as :func:`map_grid` lays them out)."""
    img = Image.fromarray(grid)
    draw = ImageDraw.Draw(img)
    font = _font(max(9, min(16, cell // 3)))
    for i in range(count):
        r, c = divmod(i, columns)
        draw.text((pad + c * (cell + pad) + 2, pad + r * (cell + pad) + 1), str(i), fill=(255, 255, 255),
                  font=font, stroke_width=2, stroke_fill=(0, 0, 0))
    return np.asarray(img)


def amplified_difference(a: torch.Tensor, b: torch.Tensor, gain: float = 4.0) -> np.ndarray:
    """Signed difference a − b of two 3×H×W images in [-1, 1], shown as mid-grey ± ``gain``×Δ
    (so small differences are visible); H×W×3 uint8."""
    d = (a.float() - b.float()) * gain
    return to_uint8(d.clamp(-1, 1))


__all__ = ["colorize", "overlay", "upscale", "upscale_to", "show", "map_grid", "to_uint8",
           "with_colorbar", "number_cells", "amplified_difference"]
