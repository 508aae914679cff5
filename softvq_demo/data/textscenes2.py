"""textscenes v2: open-vocabulary text on photographs, graphics and textures, rendered on the fly.

Every sample is a deterministic function of ``(split seed, index)`` and the asset bank
(:mod:`.assets`: fonts from Debian font packages, photographs and graphics from Debian wallpaper
packages, the scikit-image photographs, a Debian word list). Without a bank (a fresh clone) it
falls back to the repository's DejaVu fonts, the scikit-image photographs and generated words;
``bank.complete`` says which one is in use, and model cards name the bank they were trained on.

What a sample holds:
- text: one to three lines, each a dictionary word, a short phrase, a random letter string, a
  number / price / time / code, in lower, upper, title or mixed case (``mode="open"``); or ONE
  word of :data:`CLASS_WORDS` (``mode="class"``, the generators' classes);
- a font of the split (train: every bank font outside :data:`RESERVED_FONT_PACKAGES`; heldout:
  only those reserved packages), cap height from 8 to 40 px at 128 px, line spacing and
  alignment varied, sometimes an outline or a sign-like plate behind the block;
- a rotation (at most 12 degrees) and a mild perspective, applied to the block as one homography;
- a colour chosen against the measured background under the text (WCAG contrast);
- mild blur, noise or JPEG after compositing.

Each sample carries the image (uint8 H×W×3), the text (lines joined by newlines), the lines, one
box per line ``(x0, y0, x1, y1)`` (exclusive ends), the text's pixel mask (H×W bool: fill and
outline; every pixel at least 5% covered, before blur/JPEG), the per-line mask (H×W uint8: 0 background, i for line i), the font
and its package.

Splits: ``train`` and ``heldout`` use disjoint render seeds (as in v1), disjoint fonts (held out:
the reserved packages, never used for training) and disjoint words: a word is held out when
``crc32(word.lower()) % 8 == 0`` (:func:`is_heldout_word`), and generated letter strings are
drawn until they fall on their split's side. Held-out photographs (:data:`HELDOUT_PHOTOS`) appear
only in the held-out split and in :func:`photo_crops`.

    from softvq_demo.data.textscenes2 import TextScenes2, render_scene
    ds = TextScenes2("train")            # ds[i] -> dict(image=3×128×128 in [-1, 1], text, boxes, mask, ...)
    s = render_scene(seed=0, index=5)    # a Scene (numpy)
"""
from __future__ import annotations

import functools
import io
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from . import assets
from .assets import RESERVED_FONT_PACKAGES
from . import textscenes as v1

BASE_SIZE = 128
MIN_CAP, MAX_CAP = 8.0, 40.0     # px at 128 px (open mode)
CLASS_MIN_CAP = 12.0             # px at 128 px (class mode: the word must be readable)
MAX_ANGLE = 12.0
MAX_CHARS = 16                   # per line
MASK_ALPHA = 0.05                # coverage from which a pixel belongs to the text mask
# Photographs seen only by the held-out split and photo_crops (source:name).
HELDOUT_PHOTOS: tuple[str, ...] = ("mate-backgrounds:LadyBird", "mate-backgrounds:Storm",
                                   "plasma-workspace-wallpapers:EveningGlow", "plasma-workspace-wallpapers:Path",
                                   "plasma-workspace-wallpapers:ColorfulCups", "skimage:coffee", "skimage:chelsea",
                                   "sklearn:china")
# The generators' classes: common short words, all on the training side of the word split.
CLASS_WORDS: tuple[str, ...] = (
    "dog", "sun", "fish", "star", "tree", "lamp", "house", "robot", "zebra", "open", "shop", "bar", "taxi",
    "stop", "exit", "hotel", "bank", "park", "bus", "gate", "door", "road", "city", "sale", "menu", "pizza",
    "pasta", "beer", "tea", "milk", "bread", "cake", "book", "shoe", "hat", "boat", "ship", "train", "bird",
    "frog", "lion", "bear", "wolf", "fox", "duck", "cow", "rain", "snow", "wind", "fire", "gold", "rose",
    "jazz", "rock", "pool", "gym", "art", "zoo")
NUM_CLASSES = len(CLASS_WORDS)
SPLIT_OFFSETS = {"train": 0, "heldout": 1_000_000}
DEFAULT_SIZES = {"train": 1_000_000, "heldout": 2_000}
MODES = ("open", "class")
_TOO_THIN = ("hairline", "thin", "extralight")  # weights too faint to read at 8 px

_KINDS = ("word", "phrase", "letters", "number", "code")
_KIND_P = (0.4, 0.2, 0.12, 0.16, 0.12)
_LINES_P = (0.55, 0.3, 0.15)
_BACKGROUNDS = ("photo", "graphic", "gradient", "texture", "flat")
_BACKGROUND_P = (0.5, 0.12, 0.13, 0.15, 0.1)
_SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "ta", "vo", "si", "pe", "da", "gu", "ho", "be", "fa", "zi",
              "qu", "xen", "tor", "lin", "mar", "sol", "vel", "dra", "sto", "pri", "cla", "ber", "wen",
              "jo", "ya", "on", "ar", "el", "is", "um", "an")


def is_heldout_word(word: str) -> bool:
    """The word split: a word (case-insensitive) belongs to the held-out split when its CRC-32 is
    divisible by 8 (one word in eight), for dictionary and generated words alike."""
    return zlib.crc32(word.lower().encode()) % 8 == 0


def canonical_split(split: str) -> str:
    return v1.canonical_split(split)


def split_seed(split: str, seed: int = 0) -> int:
    return v1.split_seed(split, seed)


def split_of_seed(seed: int) -> str:
    return "heldout" if int(seed) >= SPLIT_OFFSETS["heldout"] else "train"


# ------------------------------------------------------------------------------------ the bank
@dataclass(frozen=True)
class FontEntry:
    path: str
    name: str
    package: str


class Bank:
    """Fonts, photographs, graphics and words, split into train and heldout."""

    def __init__(self, folder: Optional[Path] = None):
        self.folder = assets.find_bank(folder) if folder is None or not Path(folder).is_dir() else Path(folder)
        if self.folder is not None and not (self.folder / "manifest.json").is_file():
            self.folder = None
        self.complete = self.folder is not None
        fonts, self.photo_files, self.graphic_files = [], [], []
        words: list[str] = []
        if self.folder is not None:
            m = assets.load_manifest(self.folder)
            fonts = [FontEntry(str(self.folder / f["file"]), f["name"], f["package"]) for f in m["fonts"]
                     if not any(k in f["name"].lower() for k in _TOO_THIN)]
            self.photo_files = [(f"{p['package']}:{p['name']}", str(self.folder / p["file"])) for p in m["photos"]]
            self.graphic_files = [(f"{p['package']}:{p['name']}", str(self.folder / p["file"]))
                                  for p in m["graphics"]]
            if m.get("words"):
                words = (self.folder / m["words"]["file"]).read_text().split()
        if not fonts:  # fallback: the repository's DejaVu fonts, all on the training side
            fonts = [FontEntry(str(v1._font_path(n)), n.rsplit(".", 1)[0], "fonts-dejavu") for n in v1.FONT_FILES]
        self.fonts = {
            "train": tuple(f for f in fonts if f.package not in RESERVED_FONT_PACKAGES),
            "heldout": tuple(f for f in fonts if f.package in RESERVED_FONT_PACKAGES),
        }
        if not self.fonts["heldout"]:  # no reserved fonts available: held-out fonts are not unseen
            self.fonts["heldout"] = self.fonts["train"]
            self.unseen_fonts = False
        else:
            self.unseen_fonts = True
        self.words = {"train": tuple(w for w in words if not is_heldout_word(w)),
                      "heldout": tuple(w for w in words if is_heldout_word(w))}

    def __repr__(self) -> str:
        return (f"Bank({self.folder or 'fallback'}: {len(self.fonts['train'])} train / "
                f"{len(self.fonts['heldout'])} held-out fonts, {len(self.photo_files)} photos, "
                f"{len(self.graphic_files)} graphics, {len(self.words['train'])}/{len(self.words['heldout'])} words)")

    # photographs: (name, PIL image) lists per split, decoded once
    @functools.cached_property
    def _photos(self) -> dict[str, tuple]:
        out = {"train": [], "heldout": []}
        for name, im, _ in v1._photo_bank():  # the scikit-image photographs
            out["heldout" if f"skimage:{name}" in HELDOUT_PHOTOS else "train"].append((f"skimage:{name}", im))
        try:  # optional and heavy: sklearn.datasets takes ~2.5 s to import (measured)
            import sklearn.datasets as skd
            for path in skd.load_sample_images().filenames:
                name = f"sklearn:{Path(path).stem}"
                out["heldout" if name in HELDOUT_PHOTOS else "train"].append((name, _open(path)))
        except Exception:  # scikit-learn missing: its two photographs are optional
            pass
        for name, path in self.photo_files:
            out["heldout" if name in HELDOUT_PHOTOS else "train"].append((name, _open(path)))
        return {k: tuple(v) for k, v in out.items()}

    @functools.cached_property
    def _graphics(self) -> tuple:
        return tuple((name, _open(path)) for name, path in self.graphic_files)

    def photos(self, split: str) -> tuple:
        return self._photos[split]

    def graphics(self) -> tuple:
        return self._graphics

    def warm(self) -> None:
        self.photos("train")
        self.graphics()
        for split in ("train", "heldout"):
            for f in self.fonts[split]:
                _cap_ratio(f.path)


def _open(path: str) -> Image.Image:
    im = Image.open(path).convert("RGB")
    im.load()
    return im


@functools.lru_cache(maxsize=4)
def get_bank(folder: Optional[str] = None) -> Bank:
    return Bank(Path(folder) if folder else None)


def warm_cache(image_size: int = BASE_SIZE) -> None:
    """Decode photographs and measure fonts now (before forking DataLoader workers)."""
    get_bank().warm()


@functools.lru_cache(maxsize=None)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


@functools.lru_cache(maxsize=None)
def _cap_ratio(path: str) -> float:
    """Cap height (of 'H') per pixel of font size."""
    _, top, _, bottom = _font(path, 100).getbbox("H")
    return max(bottom - top, 1) / 100.0


# ------------------------------------------------------------------------------------ content
def _case(rng: np.random.Generator, s: str) -> str:
    r = rng.random()
    if r < 0.3:
        return s.lower()
    if r < 0.6:
        return s.upper()
    if r < 0.9:
        return " ".join(w[:1].upper() + w[1:].lower() for w in s.split(" "))
    return "".join(c.upper() if rng.random() < 0.5 else c.lower() for c in s)


def _generated_word(rng: np.random.Generator, split: str) -> str:
    """A pronounceable made-up word on ``split``'s side of the word split."""
    for _ in range(64):
        w = "".join(_SYLLABLES[int(i)] for i in rng.integers(0, len(_SYLLABLES), int(rng.integers(1, 4))))
        if is_heldout_word(w) == (split == "heldout"):
            return w
    raise RuntimeError("could not draw a word for the split")  # 64 misses at p=7/8 or 1/8: never


def _word(rng: np.random.Generator, bank: Bank, split: str, max_len: int = 12) -> str:
    words = bank.words[split]
    if words and rng.random() < 0.85:
        for _ in range(8):
            w = words[int(rng.integers(len(words)))]
            if len(w) <= max_len:
                return w
    return _generated_word(rng, split)


def _letters(rng: np.random.Generator, split: str) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz"
    for _ in range(64):
        w = "".join(alphabet[int(i)] for i in rng.integers(0, 26, int(rng.integers(2, 11))))
        if is_heldout_word(w) == (split == "heldout"):
            return w
    raise RuntimeError("could not draw a letter string for the split")


def _number(rng: np.random.Generator) -> str:
    n, m = int(rng.integers(0, 100)), int(rng.integers(0, 60))
    big = int(rng.integers(0, 10_000))
    t = int(rng.integers(10))
    return [f"{big}", f"{n % 24:02d}:{m:02d}", f"${n}.{m:02d}", f"{n}%", f"#{big}", f"{n}-{m}",
            f"{big / 100:.2f}", f"({n})", f"{n}/{m + 1}", f"{n}:00"][t]  # no letters: the word split


def _code(rng: np.random.Generator, bank: Bank, split: str) -> str:
    up = "ABCDEFGHJKLMNPRSTUVWXYZ"
    t = int(rng.integers(6))
    for _ in range(64):  # the letters obey the word split too
        a = "".join(up[int(i)] for i in rng.integers(0, len(up), int(rng.integers(1, 4))))
        if is_heldout_word(a) == (split == "heldout"):
            break
    n = int(rng.integers(1, 1000))
    w = _word(rng, bank, split, 8)
    return [f"{a}-{n}", f"{w} {n}", f"{a}{n}", f"{n} {w}", f"{w}!", f"{w}?"][t]


def _fit_chars(s: str, limit: int = MAX_CHARS) -> str:
    """Drop whole words from the end until ``s`` has at most ``limit`` characters (never cut a
    word: a fragment could fall on the other side of the word split)."""
    words = s.split(" ")
    while len(words) > 1 and len(" ".join(words)) > limit:
        words.pop()
    return " ".join(words)


def _line(rng: np.random.Generator, bank: Bank, split: str) -> str:
    kind = _KINDS[int(rng.choice(len(_KINDS), p=_KIND_P))]
    if kind == "word":
        s = _case(rng, _word(rng, bank, split))
    elif kind == "phrase":
        ws = [_word(rng, bank, split, 7) for _ in range(int(rng.integers(2, 4)))]
        s = _case(rng, " ".join(ws))
        if rng.random() < 0.2:
            s += str(rng.choice([".", ",", "!", "?", ":"]))
    elif kind == "letters":
        s = _case(rng, _letters(rng, split))
    elif kind == "number":
        s = _number(rng)
    else:
        s = _case(rng, _code(rng, bank, split)) if rng.random() < 0.5 else _code(rng, bank, split)
    return _fit_chars(s)


# ------------------------------------------------------------------------------------ geometry
def _homography(rng: np.random.Generator, w: int, h: int, angle: float, persp: float) -> tuple:
    """(PIL PERSPECTIVE coefficients, out width, out height) for a w×h layer rotated by ``angle``
    degrees and tilted by ``persp`` (fraction of the block size)."""
    t_c = np.array([[1, 0, -w / 2], [0, 1, -h / 2], [0, 0, 1]], np.float64)
    a = math.radians(angle)
    rot = np.array([[math.cos(a), math.sin(a), 0], [-math.sin(a), math.cos(a), 0], [0, 0, 1]])
    g, k = rng.uniform(-persp, persp, 2) / max(w, h)
    p = np.array([[1, 0, 0], [0, 1, 0], [g, k, 1]])
    m = p @ rot @ t_c
    corners = np.array([[0, 0, 1], [w, 0, 1], [0, h, 1], [w, h, 1]], np.float64).T
    c = m @ corners
    c = c[:2] / c[2]
    x0, y0 = np.floor(c.min(axis=1))
    x1, y1 = np.ceil(c.max(axis=1))
    f = np.array([[1, 0, -x0], [0, 1, -y0], [0, 0, 1]]) @ m
    inv = np.linalg.inv(f)
    inv /= inv[2, 2]
    return tuple(inv.flatten()[:8]), int(x1 - x0), int(y1 - y0)


# ------------------------------------------------------------------------------------ backgrounds
def _crop(rng: np.random.Generator, im: Image.Image, size: int, min_scale: float) -> np.ndarray:
    w_img, h_img = im.size
    side = min(w_img, h_img) * rng.uniform(min_scale, 1.0)
    ar = math.exp(rng.uniform(-0.15, 0.15))
    w, h = min(w_img, side * ar), min(h_img, side / ar)
    x0, y0 = rng.uniform(0, w_img - w), rng.uniform(0, h_img - h)
    arr = np.asarray(im.resize((size, size), Image.BILINEAR, box=(x0, y0, x0 + w, y0 + h)))
    if rng.random() < 0.5:
        arr = arr[:, ::-1]
    return np.ascontiguousarray(arr)


def _background(rng: np.random.Generator, size: int, bank: Bank, split: str) -> tuple[np.ndarray, str]:
    kind = _BACKGROUNDS[int(rng.choice(len(_BACKGROUNDS), p=_BACKGROUND_P))]
    if kind == "graphic" and not bank.graphics():
        kind = "gradient"
    if kind == "photo":
        photos = bank.photos(split) or bank.photos("train")
        name, im = photos[int(rng.integers(len(photos)))]
        arr = _crop(rng, im, size, 0.2)
        arr = v1._jitter(rng, arr, False) if rng.random() < 0.5 else arr
        return arr, f"photo:{name}"
    if kind == "graphic":
        name, im = bank.graphics()[int(rng.integers(len(bank.graphics())))]
        return _crop(rng, im, size, 0.2), f"graphic:{name}"
    if kind == "gradient":
        return v1._gradient(rng, size), "gradient"
    if kind == "texture":
        if rng.random() < 0.6:
            return v1._noise(rng, size), "texture:noise"
        return v1._stripes(rng, size), "texture:stripes"
    col = rng.uniform(0, 255, 3).astype(np.float32)
    arr = np.broadcast_to(col, (size, size, 3)) + rng.normal(0, rng.uniform(0, 4), (size, size, 1))
    return np.clip(arr, 0, 255).astype(np.uint8), "flat"


# ------------------------------------------------------------------------------------ samples
@dataclass
class Scene:
    image: np.ndarray                    # H×W×3 uint8
    text: str                            # lines joined by "\n"
    lines: tuple[str, ...]
    boxes: tuple[tuple[int, int, int, int], ...]   # per line, (x0, y0, x1, y1) exclusive
    mask: np.ndarray                     # H×W bool, all text pixels (fill + outline)
    line_mask: np.ndarray                # H×W uint8, 0 = no text, i = line i (1-based)
    label: int = -1                      # class id (mode "class"), else -1
    word: str = ""                       # the class word (mode "class")
    font: str = ""
    font_package: str = ""
    cap_height: float = 0.0              # px at this image size
    angle: float = 0.0
    background: str = ""
    plate: bool = False
    outline: bool = False
    degradations: tuple[str, ...] = ()
    meta: dict = field(default_factory=dict)

    @property
    def box(self) -> tuple[int, int, int, int]:
        """The box around all lines."""
        b = np.array(self.boxes)
        return int(b[:, 0].min()), int(b[:, 1].min()), int(b[:, 2].max()), int(b[:, 3].max())

    def tensor(self) -> torch.Tensor:
        return v1.to_tensor(self.image)

    def pil(self) -> Image.Image:
        return Image.fromarray(self.image)


def class_of(seed: int, index: int) -> int:
    """Balanced classes: each block of NUM_CLASSES indices is a permutation of the classes."""
    block, pos = divmod(int(index), NUM_CLASSES)
    return int(np.random.default_rng([int(seed), block, 7920]).permutation(NUM_CLASSES)[pos])


def _block_size(lines: Sequence[str], font: ImageFont.FreeTypeFont, spacing: float, pad: int,
                plate_pad: int) -> tuple[int, int]:
    """(width, height) of the layers :func:`_layers` draws, without drawing."""
    width = max(b[2] - b[0] for b in (font.getbbox(s) for s in lines))
    asc, desc = font.getmetrics()
    step = int(round((asc + desc) * spacing))
    return width + 2 * (pad + plate_pad), step * (len(lines) - 1) + asc + desc + 2 * (pad + plate_pad)


def _layers(lines: Sequence[str], font: ImageFont.FreeTypeFont, spacing: float, align: str, pad: int,
            stroke: int, plate_pad: int) -> tuple[list[Image.Image], list[Image.Image], Optional[Image.Image]]:
    """Per-line fill and stroke 'L' layers of the text block, and the plate layer (or None)."""
    boxes = [font.getbbox(s) for s in lines]
    widths = [b[2] - b[0] for b in boxes]
    asc, desc = font.getmetrics()
    step = int(round((asc + desc) * spacing))
    bw = max(widths) + 2 * (pad + plate_pad)
    bh = step * (len(lines) - 1) + asc + desc + 2 * (pad + plate_pad)
    fills, strokes = [], []
    for i, (s, b, w) in enumerate(zip(lines, boxes, widths)):
        x = pad + plate_pad + {"left": 0, "center": (max(widths) - w) // 2, "right": max(widths) - w}[align] - b[0]
        y = pad + plate_pad + i * step
        for target, sw in ((fills, 0), (strokes, stroke)):
            if target is strokes and not stroke:
                continue
            layer = Image.new("L", (bw, bh), 0)
            ImageDraw.Draw(layer).text((x, y), s, font=font, fill=255, stroke_width=sw, stroke_fill=255)
            target.append(layer)
    plate = None
    if plate_pad:
        plate = Image.new("L", (bw, bh), 0)
        r = max(1, min(bw, bh) // 5)
        ImageDraw.Draw(plate).rounded_rectangle((pad, pad, bw - pad - 1, bh - pad - 1), radius=r, fill=255)
    return fills, strokes, plate


def render_scene(seed: int, index: int, *, image_size: int = BASE_SIZE, mode: str = "open",
                 label: Optional[int] = None, bank: Optional[Bank] = None, draw_text: bool = True,
                 degrade: Optional[bool] = None) -> Scene:
    """Sample ``index`` of the stream ``seed`` (train seeds < 1e6 <= heldout seeds).
    ``mode="class"`` renders one class word (``label``, default balanced by index);
    ``draw_text=False`` gives the same scene (plate included) without the text, with the same
    masks; ``degrade`` forces the
    blur/noise/JPEG step on or off."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    if image_size < 32:
        raise ValueError(f"image_size {image_size} too small (at least 32)")
    bank = bank or get_bank()
    split = split_of_seed(seed)
    rng = np.random.default_rng([int(seed), int(index), 2 if mode == "open" else 4])
    size = int(image_size)
    scale = size / BASE_SIZE
    arr, bg_kind = _background(rng, size, bank, split)
    if rng.random() < 0.3:
        arr = v1._distractors(rng, arr, scale)

    if mode == "class":
        label = class_of(seed, index) if label is None else int(label)
        if not 0 <= label < NUM_CLASSES:
            raise ValueError(f"label {label} out of range 0..{NUM_CLASSES - 1}")
        lines = [_case(rng, CLASS_WORDS[label])]
        cap_lo = CLASS_MIN_CAP
    else:
        label = -1
        lines = [_line(rng, bank, split) for _ in range(int(rng.choice(3, p=_LINES_P)) + 1)]
        cap_lo = MIN_CAP
    fonts = bank.fonts["train" if mode == "class" and split == "train" else split]
    fe = fonts[int(rng.integers(len(fonts)))]
    cap = math.exp(rng.uniform(math.log(cap_lo), math.log(MAX_CAP))) * scale
    angle = float(rng.uniform(-MAX_ANGLE, MAX_ANGLE)) if rng.random() < 0.6 else 0.0
    persp = float(rng.uniform(0.0, 0.25)) if rng.random() < 0.3 else 0.0
    spacing = float(rng.uniform(1.0, 1.35))
    align = str(rng.choice(["left", "center", "right"]))
    use_plate = rng.random() < 0.3
    want_outline = rng.random() < 0.12
    margin = max(2, round(3 * scale))
    avail = size - 2 * margin
    pad = max(2, round(3 * scale))

    fsize = max(6, int(round(cap / _cap_ratio(fe.path))))
    for _ in range(40):  # shrink until the transformed block fits
        font = _font(fe.path, fsize)
        stroke = max(1, round(fsize / 14)) if want_outline else 0
        plate_pad = max(2, round(fsize * 0.25)) if use_plate else 0
        bw, bh = _block_size(lines, font, spacing, pad, plate_pad)
        coeffs, ow, oh = _homography(np.random.default_rng([int(seed), int(index), 3]), bw, bh, angle, persp)
        if (ow <= avail and oh <= avail) or fsize <= 6:
            break
        fsize = max(6, int(fsize * min(0.92, avail / max(ow, oh))))
    fills, strokes, plate = _layers(lines, font, spacing, align, pad, stroke, plate_pad)
    if ow > avail or oh > avail:  # still too long at the smallest size: one short made-up word
        short = _generated_word(rng, split)
        while len(short) > 4:
            short = _generated_word(rng, split)
        lines = [short]
        fills, strokes, plate = _layers(lines, font, spacing, align, pad, stroke, plate_pad)
        bw, bh = fills[0].size
        coeffs, ow, oh = _homography(np.random.default_rng([int(seed), int(index), 3]), bw, bh, angle, persp)

    def warp(layer: Image.Image) -> np.ndarray:
        out = layer.transform((ow, oh), Image.PERSPECTIVE, coeffs, Image.BICUBIC)
        return np.asarray(out, dtype=np.float32) / 255.0

    x = int(rng.integers(0, max(0, size - ow) + 1))
    y = int(rng.integers(0, max(0, size - oh) + 1))
    rw, rh = min(ow, size - x), min(oh, size - y)
    fill_a = [warp(l)[:rh, :rw] for l in fills]
    stroke_a = [warp(l)[:rh, :rw] for l in strokes]
    plate_a = warp(plate)[:rh, :rw] if plate is not None else None
    text_a = np.maximum.reduce(fill_a)
    cover = np.maximum(text_a, np.maximum.reduce(stroke_a)) if stroke_a else text_a

    # colours: the plate against the background, the text against what lies under it
    out = arr.astype(np.float32)
    region = out[y:y + rh, x:x + rw]
    under = region[cover > 0.5] if plate_a is None else None
    if plate_a is not None:
        pcol = rng.uniform(0, 255, 3).astype(np.float32)
        pa = plate_a[..., None]
        region[:] = region * (1 - pa) + pcol * pa
        under = np.broadcast_to(pcol, (4, 3))
    if under is None or under.size == 0:
        under = region.reshape(-1, 3)
    lum = v1.relative_luminance(np.clip(np.round(under), 0, 255).astype(np.uint8)).ravel()
    y_lo, y_hi = (float(v) for v in np.percentile(lum, (10, 90)))
    colour, light, contrast = v1._pick_colour(rng, y_lo, y_hi)
    outline = want_outline or contrast < v1.MIN_CONTRAST
    if outline and not stroke_a:  # the background is too busy for a bare fill: add an outline
        stroke = max(1, round(fsize / 14))
        _, strokes, _ = _layers(lines, font, spacing, align, pad, stroke, plate_pad)
        stroke_a = [warp(l)[:rh, :rw] for l in strokes]
        cover = np.maximum(text_a, np.maximum.reduce(stroke_a))
    if stroke_a:
        ocol = np.full(3, 0.0 if light else 255.0, np.float32)
        if v1.contrast_ratio(float(v1.relative_luminance(colour)), float(v1.relative_luminance(ocol.astype(np.uint8)))) < 4.5:
            colour = np.full(3, 255 if light else 0, np.uint8)
        sa = np.maximum.reduce(stroke_a)[..., None]
        if draw_text:
            region[:] = region * (1 - sa) + ocol * sa
    if draw_text:
        a = text_a[..., None]
        region[:] = region * (1 - a) + colour.astype(np.float32) * a
    img = np.clip(np.round(out), 0, 255).astype(np.uint8)

    # masks and boxes (before degradations)
    mask = np.zeros((size, size), bool)
    line_mask = np.zeros((size, size), np.uint8)
    kept_lines, boxes = [], []
    for i, fa in enumerate(fill_a):
        m = fa >= MASK_ALPHA  # every visibly inked pixel, anti-aliased edges and thin dots included
        if stroke_a:
            m |= stroke_a[i] >= MASK_ALPHA
        if not m.any():
            continue
        full = np.zeros((size, size), bool)
        full[y:y + rh, x:x + rw] = m
        ys, xs = np.nonzero(full)
        kept_lines.append(lines[i])
        boxes.append((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1))
        line_mask[full] = len(kept_lines)
        mask |= full
    if not kept_lines:
        raise RuntimeError(f"textscenes2: sample ({seed}, {index}) rendered no text ({lines}, {fe.name}, {fsize}, {(ow, oh, x, y)}, {[l.getbbox() for l in fills]})")

    # degradations
    done = []
    do = rng.random(3) < np.array([0.25, 0.25, 0.3])
    if degrade is not None:
        do[:] = bool(degrade)
    if do[0]:
        img = np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0) * scale)))
        done.append("blur")
    if do[1]:
        img = np.clip(img + rng.normal(0, rng.uniform(2, 8), img.shape), 0, 255).astype(np.uint8)
        done.append("noise")
    if do[2]:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=int(rng.integers(35, 91)))
        img = np.asarray(Image.open(buf).convert("RGB"))
        done.append("jpeg")
    _, ctop, _, cbot = font.getbbox("H")
    return Scene(image=np.array(img, dtype=np.uint8), text="\n".join(kept_lines), lines=tuple(kept_lines),
                 boxes=tuple(boxes), mask=mask, line_mask=line_mask, label=label,
                 word=CLASS_WORDS[label] if label >= 0 else "", font=fe.name, font_package=fe.package,
                 cap_height=float(cbot - ctop), angle=angle, background=bg_kind, plate=plate_a is not None,
                 outline=bool(stroke_a), degradations=tuple(done),
                 meta=dict(seed=int(seed), index=int(index), split=split, mode=mode, font_size=fsize,
                           perspective=persp, position=(x, y), contrast=float(contrast)))


def photo_crops(n: int, size: int = BASE_SIZE, seed: int = 0, split: str = "heldout",
                bank: Optional[Bank] = None) -> np.ndarray:
    """``n`` crops (N×size×size×3 uint8) of ``split``'s photographs (default: the held-out ones),
    no text, no jitter. Deterministic from ``seed``."""
    bank = bank or get_bank()
    photos = bank.photos(canonical_split(split)) or bank.photos("train")
    out = np.empty((int(n), size, size, 3), np.uint8)
    for i in range(int(n)):
        rng = np.random.default_rng([int(seed), i, 535353])
        _, im = photos[int(rng.integers(len(photos)))]
        out[i] = _crop(rng, im, size, 0.3)
    return out


class TextScenes2(torch.utils.data.Dataset):
    """Map-style dataset: ``ds[i]`` is a dict with ``image`` (3×S×S float32 in [-1, 1]), ``text``,
    ``lines``, ``boxes`` (L×4 int64), ``mask`` (S×S bool), ``line_mask`` (S×S uint8), ``label``
    (class id, or -1 in open mode); ``ds.sample(i)`` the numpy :class:`Scene`."""

    def __init__(self, split: str = "train", size: Optional[int] = None, image_size: int = BASE_SIZE,
                 seed: int = 0, mode: str = "open", bank: Optional[Bank] = None):
        self.split = canonical_split(split)
        self.size = int(DEFAULT_SIZES[self.split] if size is None else size)
        if self.size < 1:
            raise ValueError("size (number of samples) must be positive")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        self.image_size, self.mode, self.bank = int(image_size), mode, bank
        self.seed = split_seed(self.split, seed)

    def __len__(self) -> int:
        return self.size

    def sample(self, index: int) -> Scene:
        index = int(index)
        if index < 0:
            index += self.size
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} samples")
        return render_scene(self.seed, index, image_size=self.image_size, mode=self.mode, bank=self.bank)

    def __getitem__(self, index: int) -> dict:
        s = self.sample(index)
        return dict(image=s.tensor(), text=s.text, lines=list(s.lines), label=s.label, word=s.word,
                    boxes=torch.tensor(s.boxes, dtype=torch.int64), mask=torch.from_numpy(s.mask),
                    line_mask=torch.from_numpy(s.line_mask))

    def __repr__(self) -> str:
        return (f"TextScenes2(split={self.split!r}, mode={self.mode!r}, size={self.size}, "
                f"image_size={self.image_size}, render_seed={self.seed})")


__all__ = ["TextScenes2", "Scene", "Bank", "get_bank", "render_scene", "photo_crops", "warm_cache",
           "is_heldout_word", "CLASS_WORDS", "NUM_CLASSES", "RESERVED_FONT_PACKAGES", "HELDOUT_PHOTOS"]
