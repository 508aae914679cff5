"""Turning what the browser sends into validated model inputs, with readable errors.

Image loading/resizing is the data helper's ``softvq_demo.data.images`` (load_image validates
format, size cap before decoding, mode, EXIF rotation; to_model_input resizes/crops and says how).
A minimal equivalent is used only while that module is absent, so the app always starts.
"""
from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

MAX_PIXELS = 40_000_000      # refuse larger images before decoding their pixels
MAX_FILE_BYTES = 50_000_000
MAX_BATCH = 256              # uploaded image batches


class InputError(ValueError):
    """A problem with what the user gave; its message is shown as is."""


# --------------------------------------------------------------------------- images
def _data_images():
    try:
        from ..data import images as di  # noqa: WPS433
        if all(hasattr(di, n) for n in ("load_image", "to_model_input")):
            return di
    except ImportError:
        pass
    return None


def load_image(src) -> Image.Image:
    """A path / PIL image / array → RGB PIL image, validated (raises InputError)."""
    if src is None or (isinstance(src, str) and not src.strip()):
        raise InputError("no image given: upload one or pick an example")
    di = _data_images()
    if di is not None:
        try:
            return di.load_image(src)
        except InputError:
            raise
        except (ValueError, OSError) as err:
            raise InputError(str(err)) from err
    return _fallback_load(src)


def _fallback_load(src) -> Image.Image:
    if isinstance(src, np.ndarray):
        src = Image.fromarray(src)
    if isinstance(src, Image.Image):
        img = src
    else:
        path = Path(str(src))
        if not path.is_file():
            raise InputError(f"{path.name}: file not found")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise InputError(f"{path.name}: file too large ({path.stat().st_size / 1e6:.0f} MB)")
        try:
            img = Image.open(path)
        except Image.DecompressionBombError as err:
            raise InputError(f"{path.name}: image too large to decode") from err
        except Exception as err:
            raise InputError(f"{path.name}: not an image file PIL can read") from err
    w, h = img.size
    if w * h > MAX_PIXELS:
        raise InputError(f"image too large: {w}×{h} = {w * h / 1e6:.0f} MP (limit "
                         f"{MAX_PIXELS / 1e6:.0f} MP)")
    if w < 8 or h < 8:
        raise InputError(f"image too small: {w}×{h} (at least 8×8)")
    try:
        img = ImageOps.exif_transpose(img)
        img.load()
    except Exception as err:
        raise InputError(f"could not decode the image ({type(err).__name__})") from err
    if img.mode in ("RGBA", "LA", "P") or "transparency" in img.info:
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, img)
    if img.mode in ("I;16", "I;16B", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo if hi > lo else 1.0) * 255
        img = Image.fromarray(arr.astype(np.uint8))
    return img.convert("RGB")


def to_model_input(img: Image.Image, size: int) -> tuple[torch.Tensor, str]:
    """RGB PIL → (1×3×size×size tensor in [-1, 1], how it was resized/cropped)."""
    di = _data_images()
    if di is not None:
        t, desc = di.to_model_input(img, size)
        if t.dim() == 3:
            t = t.unsqueeze(0)
        return t.float(), desc
    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    crop = img.crop((left, top, left + s, top + s))
    out = crop.resize((size, size), Image.BICUBIC if s != size else Image.NEAREST)
    arr = torch.from_numpy(np.asarray(out, np.float32)).permute(2, 0, 1) / 127.5 - 1
    parts = [f"original {w}×{h}"]
    if w != h:
        parts.append(f"centre-cropped to {s}×{s} (offset {left},{top})")
    parts.append(f"resized to {size}×{size} (bicubic)" if s != size else "used at native size")
    return arr.unsqueeze(0), ", ".join(parts)


def crop_geometry(w: int, h: int, size: int) -> tuple[float, float, float]:
    """(scale, dx, dy) mapping original pixel coords to model-input pixels for a centre crop."""
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    k = size / s
    return k, -left * k, -top * k


def model_image(src, size: int) -> tuple[torch.Tensor, str, Image.Image]:
    """Validated path/PIL → (1×3×S×S tensor, description, the RGB PIL image)."""
    img = load_image(src)
    t, desc = to_model_input(img, size)
    if not torch.isfinite(t).all():
        raise InputError("the image has non-finite values")
    return t, desc, img


def file_paths(files) -> list[str]:
    """Paths from a gr.File(file_count='multiple') value."""
    if files is None:
        return []
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    out = []
    for f in files:
        p = f if isinstance(f, (str, os.PathLike)) else getattr(f, "name", None) or getattr(f, "path", None)
        if p:
            out.append(str(p))
    return out


def load_batch(paths: Sequence[str], size: int, limit: int = MAX_BATCH
               ) -> tuple[torch.Tensor, list[str], list[str]]:
    """Load many image files; unreadable ones are skipped and reported. (B×3×S×S, names, skipped)."""
    if not paths:
        raise InputError("no files uploaded")
    if len(paths) > limit:
        raise InputError(f"{len(paths)} files uploaded: at most {limit} at a time")
    ims, names, skipped = [], [], []
    for p in paths:
        try:
            ims.append(model_image(p, size)[0])
            names.append(Path(p).name)
        except InputError as err:
            skipped.append(f"{Path(p).name}: {err}")
    if not ims:
        raise InputError("none of the uploaded files is a readable image: " + "; ".join(skipped[:3]))
    return torch.cat(ims), names, skipped


# --------------------------------------------------------------------------- numbers and lists
def parse_int(value, name: str, lo: int, hi: int) -> int:
    try:
        v = float(value)
    except (TypeError, ValueError) as err:
        raise InputError(f"{name}: not a number ({value!r})") from err
    if not np.isfinite(v) or v != int(v):
        raise InputError(f"{name}: must be a whole number (got {value})")
    v = int(v)
    if not lo <= v <= hi:
        raise InputError(f"{name} = {v} out of range: choose {lo}..{hi}")
    return v


def parse_float(value, name: str, lo: float, hi: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError) as err:
        raise InputError(f"{name}: not a number ({value!r})") from err
    if not np.isfinite(v) or not lo <= v <= hi:
        raise InputError(f"{name} = {value} out of range: choose {lo}..{hi}")
    return v


def parse_choice(value, name: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise InputError(f"{name}: {value!r} is not one of {', '.join(map(str, choices))}")
    return value


def parse_token_list(text, n: int) -> list[int]:
    """'0, 3, 5-7' / 'all' → sorted token indices, each checked against 0..n-1."""
    if isinstance(text, (list, tuple)):
        text = ",".join(str(t) for t in text)
    text = (text or "").strip().lower()
    if not text:
        raise InputError("no tokens selected: write indices like 0, 3, 5-7 (or 'all')")
    if text == "all":
        return list(range(n))
    out = set()
    for part in re.split(r"[,\s;]+", text):
        if not part:
            continue
        m = re.fullmatch(r"(\d+)\s*-\s*(\d+)|(\d+)", part)
        if not m:
            raise InputError(f"{part!r}: write token indices like 0, 3, 5-7")
        a, b = (int(m.group(1)), int(m.group(2))) if m.group(3) is None else (int(m.group(3)),) * 2
        if a > b:
            a, b = b, a
        if b >= n:
            raise InputError(f"token {b} out of range: this tokenizer has tokens 0..{n - 1}")
        out.update(range(a, b + 1))
    if not out:
        raise InputError("no tokens selected")
    return sorted(out)


def pil_to_png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
