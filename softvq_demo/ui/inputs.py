"""Turning what the browser sends into validated model inputs, with readable errors.

Image loading/resizing is ``softvq_demo.data.images`` (load_image validates format, the pixel cap
before decoding, modes, EXIF rotation; to_model_input resizes/crops/pads and says how).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

MAX_BATCH = 256              # uploaded image batches


class InputError(ValueError):
    """A problem with what the user gave; its message is shown as is."""


# --------------------------------------------------------------------------- images
FIT_MODES = ("center-crop", "pad", "stretch")


def load_image(src) -> Image.Image:
    """A path / PIL image / array → validated RGB PIL image (raises InputError)."""
    from ..data import images as di

    if src is None or (isinstance(src, str) and not src.strip()):
        raise InputError("no image given: upload one or pick an example")
    try:
        return di.load_image(src)
    except (ValueError, OSError) as err:
        raise InputError(str(err)) from None


def to_model_input(img: Image.Image, size: int, mode: str = "center-crop") -> tuple[torch.Tensor, str]:
    """RGB PIL → (1×3×size×size tensor in [-1, 1], how it was resized/cropped)."""
    from ..data import images as di

    if mode not in FIT_MODES:
        raise InputError(f"resize mode {mode!r}: use one of {', '.join(FIT_MODES)}")
    t, desc = di.to_model_input(img, size, mode=mode)
    if t.dim() == 3:
        t = t.unsqueeze(0)
    return t.float(), desc


def model_image(src, size: int, mode: str = "center-crop") -> tuple[torch.Tensor, str, Image.Image]:
    """Validated path/PIL → (1×3×S×S tensor, description, the RGB PIL image)."""
    img = load_image(src)
    t, desc = to_model_input(img, size, mode)
    if not torch.isfinite(t).all():
        raise InputError("the image has non-finite values")
    return t, f"original {img.size[0]}×{img.size[1]}: {desc}", img


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
def short(value) -> str:
    """A value as a user would read it in a message: never thousands of digits or characters."""
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, (int, float, np.integer, np.floating)):
        try:
            v = float(value)
        except OverflowError:     # an int beyond float range
            return "a number with " + str(len(str(abs(int(value))))) + " digits"
        if np.isfinite(v) and abs(v) < 1e12:
            return str(int(v)) if v == int(v) else f"{v:.6g}"
        return f"{v:.3g}"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_number(value, name: str, *, allow_none: bool = False):
    """What a number box or slider sent: a finite number (None only where the box may be empty).
    Raises InputError naming the field; returns the value unchanged."""
    if value is None:
        if allow_none:
            return None
        raise InputError(f"{name}: no value given")
    if isinstance(value, bool):
        raise InputError(f"{name}: not a number ({value!r})")
    try:
        v = float(value)
    except OverflowError:
        raise InputError(f"{name}: {short(value)} is too large") from None
    except (TypeError, ValueError):
        raise InputError(f"{name}: not a number ({short(value)})") from None
    if not np.isfinite(v):
        raise InputError(f"{name}: must be a finite number (got {short(value)})")
    return value


def parse_int(value, name: str, lo: int, hi: int) -> int:
    check_number(value, name)
    v = float(value)
    if not lo <= v <= hi:
        raise InputError(f"{name} = {short(value)} out of range: choose {lo}..{hi}")
    if v != int(v):
        raise InputError(f"{name}: must be a whole number (got {short(value)})")
    return int(v)


def parse_float(value, name: str, lo: float, hi: float) -> float:
    check_number(value, name)
    v = float(value)
    if not lo <= v <= hi:
        raise InputError(f"{name} = {short(value)} out of range: choose {lo}..{hi}")
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
