"""textscenes: one word on a photograph or texture, rendered on the fly from (seed, index).

Every sample is a deterministic function of ``(seed, index)`` (numpy ``SeedSequence``), so any
machine regenerates the same split without downloading anything:

- background: a random crop (random scale/aspect, flip, colour jitter) of one of the photographs
  that ship inside the scikit-image wheel (:data:`PHOTO_NAMES`; the ones that need a pooch
  download are not used), or a procedural gradient / noise texture / stripes;
- optional distractor shapes (ellipses, rectangles, lines);
- ONE word from :data:`CLASS_WORDS` (the class names), upper/title/lower case, in one of the DejaVu
  fonts committed under ``assets/fonts`` (licence there), cap height >= 14 px at 128 px, rotated
  by at most 10 degrees, in a colour chosen against the measured luminance of the background
  under the word (WCAG contrast ratio; busy backgrounds get an outline).

Each sample carries the image (uint8 H×W×3), class id, word, the rendered text, the text's pixel
mask (H×W bool) and its box ``(x0, y0, x1, y1)`` (x1, y1 exclusive).

    from softvq_demo.data.textscenes import TextScenes, CLASS_WORDS, render_sample
    ds = TextScenes("train")              # ds[i] -> dict(image=3×128×128 in [-1, 1], label, ...)
    s = render_sample(seed=0, index=5)    # a Sample (numpy), s.tensor() for the model

Splits: ``train`` uses seeds ``seed``, ``heldout`` (aliases ``test``/``val``) uses
``seed + 1_000_000``, so the two never share a (seed, index) pair. Decoded photographs and fonts
are cached per process (DataLoader workers forked after :func:`warm_cache` inherit them).
"""
from __future__ import annotations

import colorsys
import functools
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import skimage.data as sd
from PIL import Image, ImageDraw, ImageFont

CLASS_WORDS: tuple[str, ...] = ("cat", "dog", "sun", "fish", "star", "tree", "moon", "bike", "lamp",
                                "house", "robot", "zebra")
NUM_CLASSES = len(CLASS_WORDS)
BASE_SIZE = 128                  # the canonical resolution; other sizes scale every length
MIN_CAP_HEIGHT = 14              # px at 128 px
MAX_ANGLE = 10.0                 # degrees
MIN_CONTRAST = 3.0               # WCAG ratio below which the word gets an outline
SPLIT_OFFSETS = {"train": 0, "heldout": 1_000_000}
SPLIT_ALIASES = {"test": "heldout", "val": "heldout", "valid": "heldout", "validation": "heldout",
                 "held-out": "heldout", "held_out": "heldout", "eval": "heldout"}
DEFAULT_SIZES = {"train": 1_000_000, "heldout": 2_000}

FONT_DIR = Path(__file__).resolve().parents[2] / "assets" / "fonts"
FONT_FILES: tuple[str, ...] = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf",
                               "DejaVuSerif-Bold.ttf", "DejaVuSansMono-Bold.ttf")
_FONT_FALLBACK_DIRS = (Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts/dejavu"),
                       Path("/usr/share/fonts/TTF"))

# Photographs inside the scikit-image wheel (no pooch download). "text", "page" and "clock" are
# left out on purpose (they hold other text); so are the near-empty microscopy frames.
PHOTO_NAMES: tuple[str, ...] = ("astronaut", "brick", "camera", "chelsea", "coffee", "coins", "grass",
                                "gravel", "hubble_deep_field", "immunohistochemistry", "moon",
                                "retina", "rocket", "motorcycle")
PHOTO_MAX_SIDE = 384             # photos are cached with their short side at most this long

BACKGROUNDS = ("photo", "gradient", "noise", "stripes")
_BACKGROUND_P = (0.6, 0.15, 0.15, 0.1)
_CASES = ("upper", "title", "lower")
_CASE_P = (0.5, 0.3, 0.2)


# --------------------------------------------------------------------------------- samples
@dataclass
class Sample:
    image: np.ndarray             # H×W×3 uint8
    label: int
    word: str                     # the class word (lower case)
    text: str                     # the string as rendered (case varies)
    mask: np.ndarray              # H×W bool, the word's pixels (fill and outline)
    box: tuple[int, int, int, int]  # (x0, y0, x1, y1) of the mask, x1/y1 exclusive
    font: str = ""
    font_size: int = 0
    cap_height: float = 0.0       # px at this image size
    angle: float = 0.0
    color: tuple[int, int, int] = (0, 0, 0)
    outline: Optional[tuple[int, int, int]] = None
    contrast: float = 0.0         # WCAG ratio: word colour vs its surround (outline, or the worst background decile)
    background: str = ""
    meta: dict = field(default_factory=dict)

    def tensor(self) -> torch.Tensor:
        """3×H×W float32 in [-1, 1]."""
        return to_tensor(self.image)

    def pil(self) -> Image.Image:
        return Image.fromarray(self.image)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 H×W×3 (or N×H×W×3) → float32 3×H×W (N×3×H×W) in [-1, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(image))
    t = t.movedim(-1, -3).float()
    return t.div_(127.5).sub_(1.0)


def canonical_split(split: str) -> str:
    s = str(split).lower()
    s = SPLIT_ALIASES.get(s, s)
    if s not in SPLIT_OFFSETS:
        raise ValueError(f"unknown textscenes split {split!r}: use 'train' or 'heldout' (alias 'test')")
    return s


def split_seed(split: str, seed: int = 0) -> int:
    """The render seed of ``split`` for a user seed (train: seed, heldout: seed + 1e6)."""
    if not 0 <= int(seed) < SPLIT_OFFSETS["heldout"]:
        raise ValueError(f"seed must be in [0, {SPLIT_OFFSETS['heldout']}) so splits stay disjoint")
    return SPLIT_OFFSETS[canonical_split(split)] + int(seed)


def class_of(seed: int, index: int) -> int:
    """Class of sample ``index``: each block of NUM_CLASSES consecutive indices is a permutation
    of the classes, so any prefix is balanced to within one sample per class."""
    block, pos = divmod(int(index), NUM_CLASSES)
    perm = np.random.default_rng([int(seed), block, 7919]).permutation(NUM_CLASSES)
    return int(perm[pos])


# --------------------------------------------------------------------------------- caches
def _font_path(name: str) -> Path:
    for folder in (FONT_DIR, *_FONT_FALLBACK_DIRS):
        p = folder / name
        if p.is_file():
            return p
    raise FileNotFoundError(f"font {name} not found in {FONT_DIR} (the repository's assets/fonts)")


@functools.lru_cache(maxsize=None)
def _font(index: int, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(_font_path(FONT_FILES[index])), size)


@functools.lru_cache(maxsize=None)
def _min_font_size(index: int, cap_px: int) -> int:
    """Smallest size whose capital H is at least ``cap_px`` tall."""
    for size in range(6, 400):
        _, top, _, bottom = _font(index, size).getbbox("H")
        if bottom - top >= cap_px:
            return size
    raise ValueError(f"no size of {FONT_FILES[index]} reaches a cap height of {cap_px}px")


def _load_photo(name: str) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name == "motorcycle":
            arr = sd.stereo_motorcycle()[0]
        else:
            arr = getattr(sd, name)()
    arr = np.asarray(arr)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr.astype(np.float64), 0, 1) * 255).round().astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return arr[..., :3]


@functools.lru_cache(maxsize=1)
def _photo_bank() -> tuple[tuple[str, Image.Image, bool], ...]:
    """(name, RGB PIL image with short side <= PHOTO_MAX_SIDE, is_grey) for every photo that loads
    offline."""
    bank = []
    for name in PHOTO_NAMES:
        try:
            arr = _load_photo(name)
        except Exception as err:  # a future scikit-image that moved it behind a download
            warnings.warn(f"textscenes: skimage photo {name!r} unavailable ({type(err).__name__}); "
                          "the dataset differs from the reference renders", stacklevel=2)
            continue
        grey = bool(np.all(arr[..., 0] == arr[..., 1]) and np.all(arr[..., 1] == arr[..., 2]))
        im = Image.fromarray(arr)
        short = min(im.size)
        if short > PHOTO_MAX_SIDE:
            k = PHOTO_MAX_SIDE / short
            im = im.resize((round(im.width * k), round(im.height * k)), Image.BICUBIC)
        bank.append((name, im, grey))
    if not bank:
        raise RuntimeError("none of the scikit-image photographs could be loaded")
    return tuple(bank)


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    return np.meshgrid(c, c)  # xx, yy in [-0.5, 0.5]


_SRGB_TO_LINEAR = np.where(np.arange(256) / 255.0 <= 0.04045, np.arange(256) / 255.0 / 12.92,
                           ((np.arange(256) / 255.0 + 0.055) / 1.055) ** 2.4).astype(np.float32)


def warm_cache(image_size: int = BASE_SIZE) -> None:
    """Decode the photographs and open the fonts now (call before forking DataLoader workers)."""
    _photo_bank()
    scale = image_size / BASE_SIZE
    for i in range(len(FONT_FILES)):
        _min_font_size(i, math.ceil(MIN_CAP_HEIGHT * scale))
    _grid(image_size)


# --------------------------------------------------------------------------------- colour
def relative_luminance(rgb) -> np.ndarray:
    """WCAG relative luminance of uint8 RGB values (any leading shape)."""
    a = np.asarray(rgb)
    lin = _SRGB_TO_LINEAR[a.astype(np.uint8)] if a.dtype == np.uint8 else \
        _SRGB_TO_LINEAR[np.clip(np.round(a), 0, 255).astype(np.uint8)]
    return lin[..., 0] * 0.2126 + lin[..., 1] * 0.7152 + lin[..., 2] * 0.0722


def contrast_ratio(l1: float, l2: float) -> float:
    hi, lo = max(l1, l2), min(l1, l2)
    return (hi + 0.05) / (lo + 0.05)


def _pick_colour(rng: np.random.Generator, y_lo: float, y_hi: float) -> tuple[np.ndarray, bool, float]:
    """A text colour against a background whose luminance spans [y_lo, y_hi] (its deciles).
    Returns (rgb uint8, light?, contrast vs the worst side)."""
    c_white = contrast_ratio(1.0, y_hi)
    c_black = contrast_ratio(0.0, y_lo)
    if min(c_white, c_black) >= 7.0:       # both work: either polarity
        light = bool(rng.random() < 0.5)
    else:
        light = c_white > c_black
    target = float(rng.uniform(4.5, 9.0))
    h, s, v = rng.random(), float(rng.choice([0.0, rng.uniform(0.3, 1.0)], p=[0.3, 0.7])), rng.uniform(0.3, 1.0)
    base = np.array(colorsys.hsv_to_rgb(h, s, v)) * 255.0
    extreme = np.full(3, 255.0 if light else 0.0)
    col, c = base, 0.0
    for t in np.linspace(0.0, 1.0, 11):
        col = base + t * (extreme - base)
        yc = float(relative_luminance(np.round(col).astype(np.uint8)))
        # directional: a light word must be lighter than the brightest decile, a dark one darker
        c = (yc + 0.05) / (y_hi + 0.05) if light else (y_lo + 0.05) / (yc + 0.05)
        if c >= target:
            break
    return np.round(col).astype(np.uint8), light, c


# --------------------------------------------------------------------------------- backgrounds
def _jitter(rng: np.random.Generator, arr: np.ndarray, grey: bool) -> np.ndarray:
    x = arr.astype(np.float32)
    luma = x @ np.array([0.299, 0.587, 0.114], np.float32)
    sat = rng.uniform(0.6, 1.4)
    x = (x - luma[..., None]) * sat + luma[..., None]
    if grey and rng.random() < 0.6:   # colourise some greyscale photos
        tint = rng.uniform(0.55, 1.25, 3).astype(np.float32)
        x *= tint / tint.mean()
    mean = float(luma.mean())
    x = (x - mean) * rng.uniform(0.7, 1.3) + mean
    x *= rng.uniform(0.75, 1.25)
    return np.clip(x, 0, 255).astype(np.uint8)


def _photo_crop(rng: np.random.Generator, size: int, min_scale: float = 0.3,
                jitter: bool = True) -> tuple[np.ndarray, str]:
    bank = _photo_bank()
    name, im, grey = bank[int(rng.integers(len(bank)))]
    w_img, h_img = im.size
    side = min(w_img, h_img) * rng.uniform(min_scale, 1.0)
    ar = math.exp(rng.uniform(-0.15, 0.15))
    w = min(w_img, side * ar)
    h = min(h_img, side / ar)
    x0 = rng.uniform(0, w_img - w)
    y0 = rng.uniform(0, h_img - h)
    arr = np.asarray(im.resize((size, size), Image.BILINEAR, box=(x0, y0, x0 + w, y0 + h)))
    if rng.random() < 0.5:
        arr = arr[:, ::-1]
    if jitter:
        arr = _jitter(rng, arr, grey)
    return np.ascontiguousarray(arr), name


def _random_rgb(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, 3).astype(np.float32)


def _gradient(rng: np.random.Generator, size: int) -> np.ndarray:
    xx, yy = _grid(size)
    th = rng.uniform(0, 2 * math.pi)
    t = xx * math.cos(th) + yy * math.sin(th)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    t = t ** rng.uniform(0.5, 2.0)
    c0, c1 = _random_rgb(rng), _random_rgb(rng)
    out = c0 + t[..., None] * (c1 - c0)
    if rng.random() < 0.5:   # a radial component
        r = np.sqrt((xx - rng.uniform(-0.5, 0.5)) ** 2 + (yy - rng.uniform(-0.5, 0.5)) ** 2)
        out = out + (r[..., None] * rng.uniform(-120, 120, 3).astype(np.float32))
    return np.clip(out, 0, 255).astype(np.uint8)


def _noise(rng: np.random.Generator, size: int) -> np.ndarray:
    k = int(rng.integers(2, 11))
    small = rng.uniform(0, 255, (k, k, 3)).astype(np.uint8)
    if rng.random() < 0.4:   # low-saturation variant
        small = np.repeat(small.mean(-1, keepdims=True), 3, -1).astype(np.uint8)
        small = np.clip(small * (rng.uniform(0.6, 1.2, 3) / 0.9), 0, 255).astype(np.uint8)
    out = np.asarray(Image.fromarray(small).resize((size, size), Image.BICUBIC)).astype(np.float32)
    grain = rng.uniform(0, 14)
    if grain > 2:
        out += rng.normal(0, grain, (size, size, 1)).astype(np.float32)
    return np.clip(out, 0, 255).astype(np.uint8)


def _stripes(rng: np.random.Generator, size: int) -> np.ndarray:
    xx, yy = _grid(size)
    th = rng.uniform(0, math.pi)
    f = rng.uniform(2, 10)
    u = xx * math.cos(th) + yy * math.sin(th)
    if rng.random() < 0.3:   # checkerboard
        v = -xx * math.sin(th) + yy * math.cos(th)
        t = 0.5 + 0.5 * np.sign(np.sin(2 * math.pi * f * u) * np.sin(2 * math.pi * f * v))
    else:
        t = 0.5 + 0.5 * np.sin(2 * math.pi * f * u + rng.uniform(0, 2 * math.pi))
    c0, c1 = _random_rgb(rng), _random_rgb(rng)
    # keep the two colours fairly close so that a word stays readable over them
    c1 = c0 + (c1 - c0) * rng.uniform(0.2, 0.6)
    return np.clip(c0 + t[..., None] * (c1 - c0), 0, 255).astype(np.uint8)


def _distractors(rng: np.random.Generator, arr: np.ndarray, scale: float) -> np.ndarray:
    img = Image.fromarray(arr)
    draw = ImageDraw.Draw(img)
    size = arr.shape[0]
    for _ in range(int(rng.integers(1, 4))):
        kind = int(rng.integers(3))
        col = tuple(int(c) for c in rng.integers(0, 256, 3))
        x0, y0 = rng.uniform(-0.1, 1.0, 2) * size
        w, h = rng.uniform(0.08, 0.45, 2) * size
        box = [float(x0), float(y0), float(x0 + w), float(y0 + h)]
        if kind == 0:
            draw.ellipse(box, fill=col)
        elif kind == 1:
            draw.rectangle(box, fill=col)
        else:
            draw.line(box, fill=col, width=max(1, int(rng.integers(1, 5) * scale)))
    return np.asarray(img)


# --------------------------------------------------------------------------------- render
def _case(rng: np.random.Generator, word: str) -> str:
    c = _CASES[int(rng.choice(len(_CASES), p=_CASE_P))]
    return word.upper() if c == "upper" else word.capitalize() if c == "title" else word.lower()


def _text_layer(text: str, font: ImageFont.FreeTypeFont, pad: int, angle: float,
                stroke: int = 0) -> Image.Image:
    """The word as an 'L' alpha layer (fill, or fill+outline when ``stroke``), rotated."""
    left, top, right, bottom = font.getbbox(text)
    layer = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad), 0)
    ImageDraw.Draw(layer).text((pad - left, pad - top), text, font=font, fill=255,
                               stroke_width=stroke, stroke_fill=255)
    if angle:
        layer = layer.rotate(angle, resample=Image.BICUBIC, expand=True)
    return layer


def render_sample(seed: int, index: int, *, image_size: int = BASE_SIZE, label: Optional[int] = None,
                  draw_text: bool = True, distractors: Optional[bool] = None) -> Sample:
    """Render sample ``index`` of the stream ``seed`` (deterministic). ``draw_text=False`` gives the
    same scene without the word (same mask/box), for checks; ``label`` forces a class."""
    if image_size < 32:
        raise ValueError(f"image_size {image_size} too small (at least 32)")
    rng = np.random.default_rng([int(seed), int(index)])
    label = class_of(seed, index) if label is None else int(label)
    if not 0 <= label < NUM_CLASSES:
        raise ValueError(f"label {label} out of range 0..{NUM_CLASSES - 1}")
    size = int(image_size)
    scale = size / BASE_SIZE

    # ---- background
    kind = BACKGROUNDS[int(rng.choice(len(BACKGROUNDS), p=_BACKGROUND_P))]
    if kind == "photo":
        arr, photo = _photo_crop(rng, size)
        kind = f"photo:{photo}"
    elif kind == "gradient":
        arr = _gradient(rng, size)
    elif kind == "noise":
        arr = _noise(rng, size)
    else:
        arr = _stripes(rng, size)
    use_distractors = rng.random() < 0.4
    if distractors is not None:
        use_distractors = distractors
    if use_distractors:
        arr = _distractors(rng, arr, scale)

    # ---- the word: font, size (cap height >= 14 px at 128), angle, position
    word = CLASS_WORDS[label]
    text = _case(rng, word)
    fi = int(rng.integers(len(FONT_FILES)))
    fmin = _min_font_size(fi, math.ceil(MIN_CAP_HEIGHT * scale))
    angle = float(rng.uniform(-MAX_ANGLE, MAX_ANGLE))
    margin = max(2, round(4 * scale))
    pad = max(2, round(3 * scale))
    avail = size - 2 * margin
    left, top, right, bottom = _font(fi, fmin).getbbox(text)
    tw, th = right - left + 2 * pad, bottom - top + 2 * pad
    ca, sa = abs(math.cos(math.radians(angle))), abs(math.sin(math.radians(angle)))
    fit = fmin * min(avail / (tw * ca + th * sa), avail / (th * ca + tw * sa))
    fmax = max(fmin, min(int(fit), round(46 * scale)))
    fsize = int(rng.integers(fmin, fmax + 1))
    while True:
        font = _font(fi, fsize)
        layer = _text_layer(text, font, pad, angle)
        if (max(layer.size) <= avail) or fsize <= fmin:
            break
        fsize -= 1
    lw, lh = layer.size
    x = int(rng.integers(margin, max(margin, size - margin - lw) + 1))
    y = int(rng.integers(margin, max(margin, size - margin - lh) + 1))
    x, y = min(x, max(0, size - lw)), min(y, max(0, size - lh))
    rw, rh = min(lw, size - x), min(lh, size - y)
    fill_a = np.asarray(layer, dtype=np.float32)[:rh, :rw] / 255.0

    # ---- colour against the measured background under the word
    on = fill_a > 0.5
    ys, xs = np.nonzero(on)
    by0, by1, bx0, bx1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    region = arr[y + by0:y + by1, x + bx0:x + bx1]
    lum = relative_luminance(region).ravel()
    y_lo, y_hi = (float(v) for v in np.percentile(lum, (10, 90)))
    colour, light, contrast = _pick_colour(rng, y_lo, y_hi)
    outline = None
    stroke_a = None
    stroke_w = max(1, round(fsize / 14))
    want_outline = contrast < MIN_CONTRAST or rng.random() < 0.1
    if want_outline:
        outline = np.full(3, 0 if light else 255, np.uint8)
        if contrast_ratio(float(relative_luminance(colour)), float(relative_luminance(outline))) < 4.5:
            colour = np.full(3, 255 if light else 0, np.uint8)   # make the fill read on its outline
        contrast = contrast_ratio(float(relative_luminance(colour)), float(relative_luminance(outline)))
        slayer = _text_layer(text, font, pad, angle, stroke=stroke_w)
        if slayer.size != layer.size:   # never expected: the outline fits inside ``pad``
            raise RuntimeError("outline layer does not line up with the text layer")
        stroke_a = np.asarray(slayer, dtype=np.float32)[:rh, :rw] / 255.0

    cover = fill_a if stroke_a is None else np.maximum(fill_a, stroke_a)
    mask = np.zeros((size, size), bool)
    mask[y:y + rh, x:x + rw] = cover >= 0.5
    ys, xs = np.nonzero(mask)
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)

    if draw_text:
        out = arr.copy()
        patch = out[y:y + rh, x:x + rw].astype(np.float32)
        if stroke_a is not None:
            a = stroke_a[..., None]
            patch = patch * (1 - a) + outline.astype(np.float32) * a
        a = fill_a[..., None]
        patch = patch * (1 - a) + colour.astype(np.float32) * a
        out[y:y + rh, x:x + rw] = np.clip(np.round(patch), 0, 255).astype(np.uint8)
    else:
        out = np.ascontiguousarray(arr)
    _, ctop, _, cbottom = font.getbbox("H")
    return Sample(image=out, label=label, word=word, text=text, mask=mask, box=box,
                  font=FONT_FILES[fi].rsplit(".", 1)[0], font_size=fsize, cap_height=float(cbottom - ctop),
                  angle=angle, color=tuple(int(c) for c in colour),
                  outline=None if outline is None else tuple(int(c) for c in outline),
                  contrast=float(contrast), background=kind,
                  meta=dict(seed=int(seed), index=int(index), position=(x, y),
                            background_luminance=(y_lo, y_hi)))


def render_batch(seed: int, indices: Sequence[int], image_size: int = BASE_SIZE
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N×H×W×3 uint8 images, N labels, N×H×W bool masks) for ``indices`` of stream ``seed``."""
    samples = [render_sample(seed, i, image_size=image_size) for i in indices]
    return (np.stack([s.image for s in samples]), np.array([s.label for s in samples], np.int64),
            np.stack([s.mask for s in samples]))


def photo_crops(n: int, size: int = BASE_SIZE, seed: int = 0, min_scale: float = 0.35) -> np.ndarray:
    """``n`` crops (N×size×size×3 uint8) of the scikit-image photographs, no text and no colour
    jitter: a natural-image set for reconstruction metrics. Deterministic from ``seed``."""
    out = np.empty((int(n), size, size, 3), np.uint8)
    for i in range(int(n)):
        rng = np.random.default_rng([int(seed), i, 424242])
        out[i] = _photo_crop(rng, size, min_scale=min_scale, jitter=False)[0]
    return out


# --------------------------------------------------------------------------------- dataset
class TextScenes(torch.utils.data.Dataset):
    """Map-style dataset of rendered text scenes.

    ``ds[i]`` is a dict: ``image`` (3×S×S float32 in [-1, 1]), ``label`` (int), ``word`` (class
    word), ``text`` (the rendered string), ``mask`` (S×S bool), ``box`` (int64 x0, y0, x1, y1).
    ``size`` is the number of samples (train: 1e6 virtual samples by default, heldout: 2000);
    ``image_size`` the resolution (every length scales from the 128 px design).
    ``ds.sample(i)`` returns the numpy :class:`Sample`.
    """

    def __init__(self, split: str = "train", size: Optional[int] = None, image_size: int = BASE_SIZE,
                 seed: int = 0, class_words: Sequence[str] = CLASS_WORDS):
        self.split = canonical_split(split)
        self.size = int(DEFAULT_SIZES[self.split] if size is None else size)
        if self.size < 1:
            raise ValueError("size (number of samples) must be positive")
        self.image_size = int(image_size)
        self.seed = split_seed(self.split, seed)
        self.class_words = tuple(class_words)

    def __len__(self) -> int:
        return self.size

    def _check(self, index: int) -> int:
        index = int(index)
        if index < 0:
            index += self.size
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} samples")
        return index

    def sample(self, index: int) -> Sample:
        return render_sample(self.seed, self._check(index), image_size=self.image_size)

    def __getitem__(self, index: int) -> dict:
        s = self.sample(index)
        return dict(image=s.tensor(), label=s.label, word=s.word, text=s.text,
                    mask=torch.from_numpy(s.mask), box=torch.tensor(s.box, dtype=torch.int64))

    def __repr__(self) -> str:
        return (f"TextScenes(split={self.split!r}, size={self.size}, image_size={self.image_size}, "
                f"render_seed={self.seed}, classes={len(self.class_words)})")


__all__ = ["CLASS_WORDS", "NUM_CLASSES", "TextScenes", "Sample", "render_sample", "render_batch",
           "photo_crops", "to_tensor", "warm_cache", "class_of", "split_seed", "canonical_split",
           "relative_luminance", "contrast_ratio", "FONT_FILES", "PHOTO_NAMES"]
