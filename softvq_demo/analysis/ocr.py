"""OCR (rapidocr-onnxruntime, offline: its ONNX models ship inside the wheel) and text metrics.

    from softvq_demo.analysis import ocr
    ocr.read_text(image)            # [OCRResult(box=(x0, y0, x1, y1), text, score), ...]
    ocr.read_string(image)          # "HOUSE"
    ocr.tned("HOUSE", "house")      # 1.0 (case-insensitive)

Images: H×W×3 uint8 RGB arrays, PIL images, paths/bytes, or tensors 3×H×W / 1×3×H×W in [-1, 1].
The engine is created once per process on first use (about half a second). Text detection
upscales images whose short side is below 320 px (128 px textscenes: ~30-70 ms per image on one
or two CPU cores, see :func:`latency`); the 180-degree orientation classifier is off (our text is
upright).

Metrics follow TokBench (arXiv 2505.18142): T-ACC is exact-match word accuracy, T-NED is
``1 - edit_distance / max(len(pred), len(ref))``; both after :func:`normalize_text` (lower case,
letters and digits only). Here they compare the OCR of a reconstruction with the OCR of the
original (or with a ground-truth word).
"""
from __future__ import annotations

import os
import threading
import time
from typing import Iterable, NamedTuple, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image
from rapidfuzz.distance import Levenshtein
from tqdm.auto import tqdm

from ..cancel import raise_if_cancelled
from ..data.images import load_image
from ..data.textscenes import TextScenes

DET_LIMIT_SIDE = 320     # rapidocr's own default (736) is 5-10x slower on 128 px images, no more accurate
MIN_SCORE = 0.5

_engine = None
_engine_lock = threading.Lock()
_call_lock = threading.Lock()


class OCRResult(NamedTuple):
    box: tuple[float, float, float, float]   # axis-aligned (x0, y0, x1, y1) in input pixels
    text: str
    score: float


def get_engine():
    """The process-wide RapidOCR engine (created on first use)."""
    global _engine
    if _engine is None:
        with _engine_lock:
            if _engine is None:
                try:  # optional and heavy (onnxruntime, cv2): only when text is read
                    from rapidocr_onnxruntime import RapidOCR
                except ImportError as err:
                    raise ImportError("OCR needs rapidocr-onnxruntime (pip install rapidocr-onnxruntime)") from err
                kwargs = dict(det_limit_side_len=DET_LIMIT_SIDE, use_cls=False, text_score=MIN_SCORE)
                threads = os.environ.get("SOFTVQ_OCR_THREADS")
                if threads:
                    kwargs["intra_op_num_threads"] = int(threads)
                _engine = RapidOCR(**kwargs)
    return _engine


def as_rgb_uint8(image) -> np.ndarray:
    """Any supported image → H×W×3 uint8 RGB array."""
    if isinstance(image, torch.Tensor):
        t = image.detach().float().cpu()
        if t.dim() == 4:
            if t.shape[0] != 1:
                raise ValueError(f"expected one image, got a batch of {t.shape[0]}")
            t = t[0]
        if t.dim() == 3 and t.shape[0] in (1, 3):
            t = t.expand(3, -1, -1) if t.shape[0] == 1 else t
            return ((t.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
        raise ValueError(f"expected a 3×H×W tensor in [-1, 1], got shape {tuple(image.shape)}")
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        a = image
        if a.ndim == 2:
            a = np.repeat(a[..., None], 3, axis=2)
        if a.ndim != 3 or a.shape[2] not in (3, 4):
            raise ValueError(f"expected an H×W×3 image array, got shape {image.shape}")
        a = a[..., :3]
        if a.dtype != np.uint8:
            f = a.astype(np.float32)
            f = f * 255.0 if f.max() <= 1.0 else f
            a = np.clip(np.round(f), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(a)
    return np.asarray(load_image(image))


def _quad_to_box(quad) -> tuple[float, float, float, float]:
    q = np.asarray(quad, dtype=np.float32).reshape(-1, 2)
    return (float(q[:, 0].min()), float(q[:, 1].min()), float(q[:, 0].max()), float(q[:, 1].max()))


def read_text(image, min_score: float = MIN_SCORE) -> list[OCRResult]:
    """Detect and read every text line: top-to-bottom, left-to-right."""
    raise_if_cancelled()   # OCR runs once per token in the Text tokens tab
    rgb = as_rgb_uint8(image)
    eng = get_engine()
    with _call_lock:  # the engine keeps per-call state (thresholds); one call at a time
        res, _ = eng(np.ascontiguousarray(rgb[..., ::-1]), use_cls=False, text_score=min_score)
    out = []
    for quad, text, score in res or []:
        out.append(OCRResult(_quad_to_box(quad), str(text), float(score)))
    return out


def read_string(image, min_score: float = MIN_SCORE) -> str:
    """All the text read in an image, joined by spaces ("" when none)."""
    return " ".join(r.text for r in read_text(image, min_score=min_score)).strip()


def read_strings(images: Iterable, progress: bool = False, desc: str = "OCR") -> list[str]:
    """:func:`read_string` over many images (a batch tensor B×3×H×W, or any iterable)."""
    if isinstance(images, torch.Tensor) and images.dim() == 4:
        images = list(images)
    images = list(images)
    if progress:
        images = tqdm(images, desc=desc, unit="img", leave=False)
    return [read_string(im) for im in images]


def detect_boxes(image) -> list[tuple[float, float, float, float]]:
    """Text boxes (x0, y0, x1, y1) found by the detector alone."""
    rgb = as_rgb_uint8(image)
    eng = get_engine()
    with _call_lock:
        res, _ = eng(np.ascontiguousarray(rgb[..., ::-1]), use_cls=False, use_rec=False)
    return [_quad_to_box(q) for q in res or []]


def recognize(crop) -> tuple[str, float]:
    """Read one cropped text line (no detection): (text, score)."""
    rgb = as_rgb_uint8(crop)
    eng = get_engine()
    with _call_lock:
        res, _ = eng(np.ascontiguousarray(rgb[..., ::-1]), use_det=False, use_cls=False)
    if not res:
        return "", 0.0
    text, score = res[0][0], res[0][1]
    return str(text), float(score)


# ------------------------------------------------------------------------------ metrics
def normalize_text(s: Optional[str]) -> str:
    """Lower case, letters and digits only ("Cat!" → "cat", "ZE BRA" → "zebra")."""
    return "".join(c for c in str(s or "").lower() if c.isalnum())


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions all cost 1), by rapidfuzz."""
    return Levenshtein.distance(a, b)


def tned(pred: str, ref: str) -> float:
    """T-NED: 1 − edit_distance / max_len on normalised text (1 = same; two empty strings = 1)."""
    a, b = normalize_text(pred), normalize_text(ref)
    if not a and not b:
        return 1.0
    return 1.0 - edit_distance(a, b) / max(len(a), len(b))


def t_acc(pred: str, ref: str) -> float:
    """T-ACC for one pair: 1.0 if the normalised texts are equal and not empty, else 0.0."""
    a, b = normalize_text(pred), normalize_text(ref)
    return float(bool(b) and a == b)


def text_metrics(preds: Sequence[str], refs: Sequence[str], skip_empty_refs: bool = True) -> dict:
    """Mean T-ACC / T-NED over pairs; pairs whose reference reads empty are skipped (counted in
    ``n_skipped``) unless ``skip_empty_refs`` is False."""
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions for {len(refs)} references")
    acc, ned, skipped = [], [], 0
    for p, r in zip(preds, refs):
        if skip_empty_refs and not normalize_text(r):
            skipped += 1
            continue
        acc.append(t_acc(p, r))
        ned.append(tned(p, r))
    n = len(acc)
    return dict(t_acc=float(np.mean(acc)) if n else float("nan"),
                t_ned=float(np.mean(ned)) if n else float("nan"), n=n, n_skipped=skipped)


def reads_word(ocr: Union[str, Sequence[OCRResult]], word: str) -> bool:
    """Whether OCR output reads ``word``: the whole normalised text, or one detected line, equals it."""
    w = normalize_text(word)
    if not w:
        return False
    if isinstance(ocr, str):
        return normalize_text(ocr) == w or any(normalize_text(t) == w for t in ocr.split())
    texts = [getattr(r, "text", r) for r in ocr]
    return normalize_text("".join(texts)) == w or any(normalize_text(t) == w for t in texts)


def compare(reconstruction, original) -> dict:
    """OCR both images; T-ACC / T-NED of the reconstruction's text against the original's."""
    ref = read_string(original)
    pred = read_string(reconstruction)
    return dict(pred=pred, ref=ref, t_acc=t_acc(pred, ref), t_ned=tned(pred, ref))


def latency(n: int = 10, image_size: int = 128, seed: int = 0) -> dict:
    """Milliseconds per :func:`read_text` call on held-out textscenes images (engine warm)."""
    ds = TextScenes("heldout", size=max(n, 1), image_size=image_size, seed=seed)
    images = [ds.sample(i).image for i in range(n)]
    t0 = time.perf_counter()
    get_engine()
    read_text(images[0])
    warm = time.perf_counter() - t0
    times = []
    for im in images:
        t = time.perf_counter()
        read_text(im)
        times.append(time.perf_counter() - t)
    return dict(ms_mean=1000 * float(np.mean(times)), ms_median=1000 * float(np.median(times)),
                first_call_s=warm, n=n, image_size=image_size)


__all__ = ["OCRResult", "get_engine", "read_text", "read_string", "read_strings", "detect_boxes",
           "recognize", "normalize_text", "edit_distance", "tned", "t_acc", "text_metrics",
           "reads_word", "compare", "latency", "as_rgb_uint8"]
