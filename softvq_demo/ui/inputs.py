"""Turning what the browser sends into validated model inputs, with readable errors.

Image loading/resizing is ``softvq_demo.data.images`` (load_image validates format, the pixel cap
before decoding, modes, EXIF rotation; to_model_input resizes/crops/pads and says how).
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import re
import threading
import time
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from ..cancel import raise_if_cancelled
from ..data import images as di

MAX_BATCH = 256              # uploaded image batches
MAX_TOKEN_TEXT = 2_000       # characters in a token list ("0, 3, 5-7")


class InputError(ValueError):
    """A problem with what the user gave; its message is shown as is."""


# --------------------------------------------------------------------------- images
FIT_MODES = ("center-crop", "pad", "stretch")


def load_image(src) -> Image.Image:
    """A path / PIL image / array → validated RGB PIL image (raises InputError)."""
    if src is None or (isinstance(src, str) and not src.strip()):
        raise InputError("no image given: upload one or pick an example")
    try:
        with IMAGE_MEMORY.reserve(decode_cost(src), _name(src)):
            return di.load_image(src)
    except (ValueError, OSError) as err:
        raise InputError(str(err)) from None


# Bytes per pixel that decoding + conversion to RGB takes at its peak, by PIL mode (measured on a
# 36 MP PNG, data/images.load_image): 16-bit and 32-bit greyscale go through float64 arrays.
PEAK_BYTES_PER_PIXEL = {"1": 5, "L": 5, "P": 5, "RGB": 8, "YCbCr": 8, "LAB": 8, "HSV": 8,
                        "CMYK": 9, "RGBX": 9, "RGBA": 20, "LA": 20, "PA": 20, "RGBa": 20, "La": 20,
                        "I;16": 26, "I;16L": 26, "I;16B": 26, "I;16N": 26, "I": 30, "F": 30}
MAX_DECODE_BYTES = int(float(os.environ.get("SOFTVQ_MAX_DECODE_MB", 400)) * 1e6)


def _name(src) -> str:
    return Path(src).name if isinstance(src, (str, os.PathLike)) else "image"


def decode_cost(src) -> int:
    """Peak bytes decoding ``src`` into an RGB image takes, from its header (0 when not a file or
    its header is unreadable: load_image then refuses it before decoding)."""
    if not isinstance(src, (str, os.PathLike)):
        return 0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(src, formats=di._formats())
        with im:
            w, h = im.size
            if w * h > di.MAX_PIXELS:   # load_image refuses it before decoding, with its size
                return 0
            per = PEAK_BYTES_PER_PIXEL.get(im.mode, 30)
            if im.mode == "P" and "transparency" in im.info:
                per = PEAK_BYTES_PER_PIXEL["RGBA"]
    except Exception:  # not an image / truncated header: load_image says which
        return 0
    return int(w) * int(h) * per


class MemoryBudget:
    """A semaphore counted in bytes: image work reserves what it will need at its peak and waits
    while others hold the rest, so concurrent requests share one bound on memory whatever their
    count. A reservation above the whole budget (or above ``per_item``) is refused at once."""

    def __init__(self, total: int, per_item: int, wait_s: float = 60.0):
        self.total, self.per_item, self.wait_s = int(total), int(per_item), wait_s
        self.used = 0
        self.peak = 0
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def reserve(self, nbytes: int, what: str = "image") -> Iterator[None]:
        nbytes = max(0, int(nbytes))
        if nbytes > min(self.per_item, self.total):
            raise InputError(f"{what}: too large to decode: it would take {nbytes / 1e6:.0f} MB of memory "
                             f"(limit {min(self.per_item, self.total) / 1e6:.0f} MB): use a smaller "
                             "or 8-bit image")
        with self._cond:
            deadline = None
            while self.used + nbytes > self.total:
                deadline = deadline or time.monotonic() + self.wait_s
                left = deadline - time.monotonic()
                if left <= 0:
                    raise InputError(f"{what}: the server is busy with other large images; try "
                                     "again in a minute")
                self._cond.wait(min(left, 0.5))
                raise_if_cancelled()
            self.used += nbytes
            self.peak = max(self.peak, self.used)
        try:
            yield
        finally:
            with self._cond:
                self.used -= nbytes
                self._cond.notify_all()
                idle = self.used == 0
            if idle and nbytes > 16_000_000:   # a big image was freed: give its pages back
                release_to_os()


def tune_allocator() -> bool:
    """glibc only: allocations over 4 MB are mmapped and go back to the OS when freed. glibc's
    default threshold grows with every large free, after which decoded images come from the heap
    and its arenas keep the memory (RSS stayed GBs above its start after a burst of big images)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        M_MMAP_THRESHOLD, M_ARENA_MAX = -3, -8
        libc.mallopt(M_ARENA_MAX, 4)   # fewer per-thread arenas holding freed memory
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 4 * 1024 * 1024))
    except (OSError, AttributeError):
        return False


def release_to_os() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


IMAGE_MEMORY = MemoryBudget(total=int(float(os.environ.get("SOFTVQ_IMAGE_MEMORY_MB", 800)) * 1e6),
                            per_item=MAX_DECODE_BYTES)


def to_model_input(img: Image.Image, size: int, mode: str = "center-crop") -> tuple[torch.Tensor, str]:
    """RGB PIL → (1×3×size×size tensor in [-1, 1], how it was resized/cropped)."""
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
    paths = list(dict.fromkeys(paths))   # the same file listed twice is read once
    ims, names, skipped = [], [], []
    for p in paths:
        raise_if_cancelled()
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
    try:
        ok = value in choices
    except TypeError:            # an unhashable value (a list where a string goes)
        ok = False
    if not ok:
        listed = ", ".join(map(str, choices))
        listed = listed if len(listed) <= 200 else listed[:197] + "..."
        raise InputError(f"{name}: {short(value)} is not one of {listed}")
    return value


def parse_token_list(text, n: int) -> list[int]:
    """'0, 3, 5-7' / 'all' → sorted token indices, each checked against 0..n-1."""
    if isinstance(text, (list, tuple)):
        text = ",".join(str(t) for t in text)
    if text is not None and not isinstance(text, str):
        raise InputError("tokens: write token indices like 0, 3, 5-7")
    if text is not None and len(text) > MAX_TOKEN_TEXT:
        raise InputError(f"tokens: {len(text):,} characters (at most {MAX_TOKEN_TEXT:,})")
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
            raise InputError(f"tokens: {short(part)} is not an index: write token indices like 0, 3, 5-7")
        a, b = (int(m.group(1)), int(m.group(2))) if m.group(3) is None else (int(m.group(3)),) * 2
        if a > b:
            a, b = b, a
        if b >= n:
            raise InputError(f"token {short(b)} out of range: this tokenizer has tokens 0..{n - 1}")
        out.update(range(a, b + 1))
    if not out:
        raise InputError("no tokens selected")
    return sorted(out)
