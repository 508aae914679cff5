"""Turning tensors into pictures: colour maps, overlays, enlargement, grids of maps, uint8.

Everything returns H×W×3 uint8 numpy arrays (what gradio, PIL and plotly show as they are).
"""
from __future__ import annotations

import math
from typing import Optional, Union

import numpy as np
import torch

from ..data.images import to_uint8  # the one tensor → uint8 conversion (data/ owns images)

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


__all__ = ["colorize", "overlay", "upscale", "upscale_to", "show", "map_grid", "to_uint8"]
