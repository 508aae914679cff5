"""Robust image loading for the app and the CLI.

    img = load_image("photo.jpg")                 # RGB PIL image, or ValueError with a clear message
    x, how = to_model_input(img, 256)            # 1×3×256×256 in [-1, 1], "center-cropped 640×480 → ..."
    to_pil(x[0]).save("back.png")

``load_image`` accepts a path, bytes, a binary file object, a PIL image or a numpy array. It reads
the header first and refuses oversized files and images (decompression bombs) before decoding any
pixel, applies the EXIF orientation, takes the first frame of animations, and brings every PIL mode
to RGB: alpha (RGBA, LA, PA, palette transparency) is composited on white, 16/32-bit and float
greyscale are scaled to 8 bits, CMYK/YCbCr/LAB/HSV are converted. Every failure is a
:class:`ImageLoadError` (a ``ValueError``) whose message can be shown to a user as is.
"""
from __future__ import annotations

import io
import os
import re
import warnings
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_PIXELS = 40_000_000          # refuse larger images (from the header, before decoding)
MAX_BYTES = 50_000_000           # refuse larger files
MIN_SIDE = 8
# Formats we decode. Anything else (EPS, which PIL hands to Ghostscript; PSD, FITS, ...) is refused
# as "not an image format we can read" before a decoder runs on untrusted bytes.
FORMATS = ("PNG", "JPEG", "MPO", "GIF", "WEBP", "BMP", "DIB", "TIFF", "PPM", "ICO", "TGA", "QOI",
           "AVIF")
CROP_MODES = ("center-crop", "pad", "stretch")

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image, np.ndarray, io.IOBase]


class ImageLoadError(ValueError):
    """The input is not an image we can use; the message says why."""


def _fmt_mp(n: float) -> str:
    return f"{n / 1e6:.1f} MP" if n < 1e7 else f"{n / 1e6:.0f} MP"


def _open(src, max_bytes: int, name: str) -> Image.Image:
    """Open lazily (header only) from a path, bytes or file object."""
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        if not path.exists():
            raise ImageLoadError(f"{name}: file not found")
        if not path.is_file():
            raise ImageLoadError(f"{name}: not a file")
        nbytes = path.stat().st_size
        if nbytes > max_bytes:
            raise ImageLoadError(f"{name}: file too large ({nbytes / 1e6:.0f} MB; limit "
                                 f"{max_bytes / 1e6:.0f} MB)")
        if nbytes == 0:
            raise ImageLoadError(f"{name}: empty file")
        data = path.read_bytes()
    elif isinstance(src, (bytes, bytearray, memoryview)):
        data = bytes(src)
    else:  # a binary file object
        data = src.read(max_bytes + 1)
        if isinstance(data, str):
            raise ImageLoadError(f"{name}: file object opened in text mode")
    if len(data) > max_bytes:
        raise ImageLoadError(f"{name}: file too large (over {max_bytes / 1e6:.0f} MB)")
    if not data:
        raise ImageLoadError(f"{name}: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data), formats=_formats())
    except Image.DecompressionBombError as err:
        m = re.search(r"\((\d+) pixels\)", str(err))
        declared = f" ({_fmt_mp(int(m.group(1)))} declared in its header)" if m else ""
        raise ImageLoadError(f"{name}: image too large{declared}; refused before decoding "
                             "(decompression bomb?)") from None
    except UnidentifiedImageError:
        fmt = _magic_format(data)
        if fmt is not None:   # the signature of a format we read, but no valid header after it
            raise ImageLoadError(f"{name}: corrupt or truncated {fmt} file (its header could not be "
                                 "read)") from None
        head = data[:64].lstrip().lower()
        what = "a text/HTML file" if head.startswith((b"<", b"{", b"[")) or _looks_text(data[:512]) \
            else "not an image format we can read"
        raise ImageLoadError(f"{name}: not an image ({what})") from None
    except MemoryError:
        raise ImageLoadError(f"{name}: image too large to open") from None
    except Exception as err:  # any plugin error on malformed bytes: a corrupt file, not a bug
        raise ImageLoadError(f"{name}: corrupt image header ({err or type(err).__name__})") from None


_MAGIC = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"),
          (b"GIF89a", "GIF"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"BM", "BMP"))


def _magic_format(data: bytes):
    """The format whose signature opens ``data`` (None if none of ours)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((fmt for magic, fmt in _MAGIC if data.startswith(magic)), None)


def _formats() -> tuple[str, ...]:
    Image.init()
    return tuple(f for f in FORMATS if f in Image.OPEN)


def _looks_text(b: bytes) -> bool:
    if not b:
        return False
    try:
        text = b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return sum(c.isprintable() or c in "\r\n\t" for c in text) >= 0.95 * len(text)


def _check_size(img: Image.Image, max_pixels: int, name: str) -> None:
    w, h = img.size
    if w * h > max_pixels:
        raise ImageLoadError(f"{name}: image too large: {w}×{h} = {_fmt_mp(w * h)} (limit "
                             f"{_fmt_mp(max_pixels)}); refused before decoding")
    if min(w, h) < MIN_SIDE:
        raise ImageLoadError(f"{name}: image too small: {w}×{h} (at least {MIN_SIDE}×{MIN_SIDE})")


def _from_array(arr: np.ndarray) -> Image.Image:
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
        a = np.moveaxis(a, 0, -1)   # C×H×W
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
        raise ImageLoadError(f"array of shape {tuple(np.asarray(arr).shape)} is not an image "
                             "(expected H×W, H×W×3 or H×W×4)")
    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif a.dtype != np.uint8:
        if not np.issubdtype(a.dtype, np.number):
            raise ImageLoadError(f"array of dtype {a.dtype} is not an image")
        f = a.astype(np.float64)
        if not np.isfinite(f).all():
            raise ImageLoadError("the image array has NaN or infinite values")
        if np.issubdtype(a.dtype, np.floating):
            lo, hi = float(f.min()), float(f.max())
            if lo >= -1.0 - 1e-6 and lo < 0 and hi <= 1.0 + 1e-6:
                f = (f + 1) / 2            # [-1, 1]
            elif hi > 1.0 + 1e-6:
                f = f / 255.0              # [0, 255] floats
        elif a.dtype == np.uint16 or f.max() > 255:
            f = f / 65535.0
        else:
            f = f / 255.0
        a = np.round(np.clip(f, 0, 1) * 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(a))


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
        if mode == "RGB":
            return img
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if mode == "F":
            lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
            arr = arr * 255.0 if lo >= 0 and hi <= 1.0 else (arr - lo) / max(hi - lo, 1e-12) * 255.0
        elif mode.startswith("I;16") or (arr.min() >= 0 and arr.max() <= 65535 and arr.max() > 255):
            arr = arr / 257.0             # 16-bit → 8-bit (65535 → 255)
        else:                              # 32-bit integers: stretch what is there
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr - lo) / max(hi - lo, 1e-12) * 255.0 if hi > 255 or lo < 0 else arr
        return Image.fromarray(np.round(np.clip(np.nan_to_num(arr), 0, 255)).astype(np.uint8)).convert("RGB")
    if mode == "CMYK" and img.info.get("icc_profile"):
        try:  # optional: PIL may be built without littlecms; the plain conversion below then
            from PIL import ImageCms
            src = ImageCms.ImageCmsProfile(io.BytesIO(img.info["icc_profile"]))
            return ImageCms.profileToProfile(img, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except Exception:  # a broken profile: fall back to PIL's plain conversion
            pass
    return img.convert("RGB")   # L, 1, CMYK, YCbCr, LAB, HSV, RGBX ...


def load_image(src: ImageSource, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_BYTES) -> Image.Image:
    """Anything image-like → a validated RGB PIL image (raises :class:`ImageLoadError`)."""
    if src is None:
        raise ImageLoadError("no image given")
    if isinstance(src, (str, os.PathLike)) and not str(src).strip():
        raise ImageLoadError("no image given (empty path)")
    name = Path(src).name if isinstance(src, (str, os.PathLike)) else "image"
    if isinstance(src, np.ndarray) or isinstance(src, torch.Tensor):
        if isinstance(src, torch.Tensor):
            src = src.detach().float().cpu().numpy()
        shape = src.shape
        if src.ndim >= 2:
            hw = shape[:2] if src.ndim == 2 or shape[-1] in (1, 3, 4) else shape[-2:]
            if int(hw[0]) * int(hw[1]) > max_pixels:
                raise ImageLoadError(f"image too large: {hw[1]}×{hw[0]} (limit {_fmt_mp(max_pixels)})")
        img = _from_array(src)
    elif isinstance(src, Image.Image):
        img = src
    else:
        img = _open(src, max_bytes, name)
    _check_size(img, max_pixels, name)

    try:
        if getattr(img, "is_animated", False):
            img.seek(0)            # animations: the first frame
        img = ImageOps.exif_transpose(img) or img
        img.load()
    except Image.DecompressionBombError as err:
        raise ImageLoadError(f"{name}: image too large to decode safely ({err})") from None
    except MemoryError:
        raise ImageLoadError(f"{name}: image too large to decode") from None
    except Exception as err:  # OSError, EOFError, struct.error, ... from a decoder on bad bytes
        msg = str(err)
        what = "truncated" if "truncat" in msg.lower() or isinstance(err, EOFError) else "corrupt"
        raise ImageLoadError(f"{name}: {what} image file, could not decode it ({msg or type(err).__name__})") from None
    _check_size(img, max_pixels, name)   # EXIF rotation or a frame may change the size
    try:
        return _to_rgb(img)
    except Exception as err:
        raise ImageLoadError(f"{name}: could not convert {img.mode} image to RGB ({err})") from None


def image_info(src: ImageSource, max_bytes: int = MAX_BYTES) -> dict:
    """Header facts without decoding pixels: format, mode, size, frames."""
    img = src if isinstance(src, Image.Image) else _open(src, max_bytes, "image")
    return dict(format=img.format, mode=img.mode, width=img.size[0], height=img.size[1],
                frames=getattr(img, "n_frames", 1))


def _fit(img: Image.Image, size: int, mode: str) -> tuple[Image.Image, str]:
    w, h = img.size
    if mode not in CROP_MODES:
        raise ValueError(f"mode {mode!r}: use one of {', '.join(CROP_MODES)}")
    if w == size and h == size:
        return img, f"used as is ({w}×{h})"
    if w == h or mode == "stretch":
        how = "resized" if w == h else "stretched"
        return img.resize((size, size), Image.BICUBIC), f"{how} {w}×{h} → {size}×{size}"
    if mode == "center-crop":
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        crop = img.crop((left, top, left + s, top + s))
        desc = f"center-cropped {w}×{h} → {s}×{s}"
        if s != size:
            crop = crop.resize((size, size), Image.BICUBIC)
            desc += f", resized to {size}×{size}"
        return crop, desc
    s = max(w, h)   # pad to a white square
    canvas = Image.new("RGB", (s, s), (255, 255, 255))
    canvas.paste(img, ((s - w) // 2, (s - h) // 2))
    desc = f"padded {w}×{h} → {s}×{s} (white)"
    if s != size:
        canvas = canvas.resize((size, size), Image.BICUBIC)
        desc += f", resized to {size}×{size}"
    return canvas, desc


def to_model_input(img, size: int, mode: str = "center-crop") -> tuple[torch.Tensor, str]:
    """Image (anything :func:`load_image` takes) → (1×3×size×size float32 in [-1, 1], how it was
    cropped/resized). ``mode``: center-crop (default), pad (white) or stretch."""
    size = int(size)
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    if not isinstance(img, Image.Image) or img.mode != "RGB":
        img = load_image(img)
    out, desc = _fit(img, size, mode)
    arr = np.asarray(out, dtype=np.uint8)
    t = torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(127.5).sub_(1.0)
    return t.unsqueeze(0), desc


def to_uint8(tensor: torch.Tensor) -> np.ndarray:
    """3×H×W (or 1×3×H×W, or H×W) in [-1, 1] → H×W×3 (H×W) uint8."""
    t = tensor.detach()
    if t.dim() == 4:
        if t.shape[0] != 1:
            raise ValueError(f"expected one image, got a batch of {t.shape[0]}")
        t = t[0]
    if t.dim() == 3 and t.shape[0] == 1:
        t = t[0]
    if t.dim() not in (2, 3) or (t.dim() == 3 and t.shape[0] != 3):
        raise ValueError(f"expected 3×H×W in [-1, 1], got shape {tuple(tensor.shape)}")
    t = ((t.float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return (t.permute(1, 2, 0) if t.dim() == 3 else t).numpy()


def to_pil(tensor: torch.Tensor) -> Image.Image:
    """3×H×W (or 1×3×H×W) tensor in [-1, 1] → RGB PIL image."""
    arr = to_uint8(tensor)
    return Image.fromarray(arr).convert("RGB")


def from_uint8(arr: np.ndarray) -> torch.Tensor:
    """H×W×3 (or N×H×W×3) uint8 → 3×H×W (N×3×H×W) float32 in [-1, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(arr)).movedim(-1, -3).float()
    return t.div_(127.5).sub_(1.0)


__all__ = ["load_image", "to_model_input", "to_pil", "to_uint8", "from_uint8", "image_info",
           "ImageLoadError", "MAX_PIXELS", "MAX_BYTES", "CROP_MODES"]
