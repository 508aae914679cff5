"""Text legibility after reconstruction: TokBench's protocol, and an OCR-vs-original protocol.

**TokBench** (Wu et al., "TokBench: Evaluating Your Visual Tokenizer before Visual Generation",
arXiv 2505.18142; code github.com/wjf5203/TokBench, read for this module: ``eval_text.py``,
``compute_all_metrics.py``, ``doctr/utils/metrics.py: string_match_with_ned``,
``doctr/utils/geometry.py: extract_crops``), as :func:`tokbench_text` does it:

1. crop each **ground-truth text box** out of the reconstruction (axis-aligned integer box,
   ``image[y0:y1, x0:x1]``) — no text detection;
2. **recognition only** on each crop (TokBench: docTR PARSeq; here rapidocr's recogniser — the one
   deliberate difference, named in every result as ``recognizer``);
3. per instance, against the **ground-truth text, case-sensitive and unnormalised**:
   T-ACC = exact string match, T-NED = 1 − edit_distance / max(len(pred), len(gt));
4. **bucket** instances by ``ratio`` = box height / the image's longer side (the ratios in
   TokBench's released ``output/*.json`` have the longer side as denominator), with TokBench's
   edges for its 256 px setting ``[0.02, 0.03), [0.03, 0.04), [0.04, 1)`` (512: 0.01/0.02/0.03,
   1024: 0.005/0.01/0.02); instances outside every bucket (smaller than the first edge) are not
   counted, as ``find_group`` returns None for them; the summary T-ACC / T-NED is the **mean of the
   bucket means** (``compute_all_metrics.py``); the instance mean is given too (``eval_text.py``).

**OCR vs original** (:func:`ocr_vs_original`) is for images without ground truth (uploads):
detection + recognition on the whole reconstruction, compared with the same OCR of the original
image (the reference is the original's OCR, not ground truth), lower-cased, letters and digits only
(:func:`softvq_demo.analysis.ocr.tned`). It is not TokBench and is never called so.

The scorers :class:`GroundTruthText` and :class:`OriginalOCR` give the per-image T-NED that the
token-importance ranking and the deletion curves use; each carries its protocol's ``name``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from . import ocr

Box = tuple[float, float, float, float]
Recognize = Callable[[np.ndarray], str]   # H×W×3 uint8 crop -> text
ReadText = Callable[[np.ndarray], str]    # whole H×W×3 uint8 image -> all text read

TOKBENCH_BUCKETS = {256: (0.02, 0.03, 0.04, 1.0), 512: (0.01, 0.02, 0.03, 1.0),
                    1024: (0.005, 0.01, 0.02, 1.0)}
TOKBENCH_NAME = ("TokBench (arXiv 2505.18142): ground-truth box crops, recognition only, "
                 "case-sensitive T-ACC / T-NED against the ground-truth text")
ORIGINAL_OCR_NAME = ("OCR vs original (not TokBench): detection + recognition on the whole image, "
                     "compared with the original image's OCR (reference = original's OCR), "
                     "lower-cased, letters and digits only")


# ------------------------------------------------------------------------------ metrics
def word_accuracy(pred: str, gt: str) -> float:
    """TokBench T-ACC for one instance: 1.0 for an exact, case-sensitive match."""
    return float(str(pred) == str(gt))


def word_ned(pred: str, gt: str) -> float:
    """TokBench T-NED for one instance: 1 − edit_distance / max(len) on the raw strings
    (case-sensitive; two empty strings count as 1)."""
    pred, gt = str(pred), str(gt)
    if not pred and not gt:
        return 1.0
    return 1.0 - ocr.edit_distance(pred, gt) / max(len(pred), len(gt))


def size_ratio(box: Box, height: int, width: int) -> float:
    """TokBench's text size: box height / the image's longer side."""
    return float(box[3] - box[1]) / float(max(height, width))


def bucket_edges(setting: int = 256) -> tuple[float, ...]:
    if int(setting) not in TOKBENCH_BUCKETS:
        raise ValueError(f"TokBench setting {setting!r}: use one of {', '.join(map(str, TOKBENCH_BUCKETS))}")
    return TOKBENCH_BUCKETS[int(setting)]


def bucket_of(ratio: float, edges: Sequence[float]) -> Optional[int]:
    """Index of the half-open bucket ``[edges[i], edges[i+1])`` holding ``ratio``, else None."""
    for i in range(len(edges) - 1):
        if edges[i] <= ratio < edges[i + 1]:
            return i
    return None


def crop_box(image: np.ndarray, box: Box) -> np.ndarray:
    """``image[y0:y1, x0:x1]`` with the box rounded to integers and clipped to the image."""
    h, w = image.shape[:2]
    x0, y0, x1, y1 = (int(round(float(v))) for v in box)
    x0, x1 = max(0, min(w, x0)), max(0, min(w, x1))
    y0, y1 = max(0, min(h, y0)), max(0, min(h, y1))
    return np.ascontiguousarray(image[y0:y1, x0:x1])


def default_recognize(crop: np.ndarray) -> str:
    """rapidocr recognition only (no detection) of one crop; "" for an empty crop."""
    if crop.size == 0 or min(crop.shape[:2]) < 2:
        return ""
    return ocr.recognize(crop)[0]


def _as_uint8(image) -> np.ndarray:
    return ocr.as_rgb_uint8(image)


# ------------------------------------------------------------------------------ TokBench
@dataclass
class TokBenchResult:
    """Per-instance and bucketed T-ACC / T-NED (TokBench's protocol)."""

    instances: list[dict]                  # image, box, gt, pred, ratio, bucket, t_acc, t_ned
    edges: tuple[float, ...]
    setting: int
    recognizer: str
    buckets: list[dict] = field(default_factory=list)   # range, n, t_acc, t_ned
    t_acc: float = float("nan")            # mean of the non-empty bucket means (TokBench summary)
    t_ned: float = float("nan")
    instance_t_acc: float = float("nan")   # mean over the counted instances
    instance_t_ned: float = float("nan")
    uncounted: int = 0                     # instances below the first bucket edge
    protocol: str = TOKBENCH_NAME

    def summary(self) -> dict:
        return dict(protocol=self.protocol, recognizer=self.recognizer, setting=self.setting,
                    t_acc=self.t_acc, t_ned=self.t_ned, instance_t_acc=self.instance_t_acc,
                    instance_t_ned=self.instance_t_ned, counted=len(self.instances) - self.uncounted,
                    uncounted=self.uncounted, buckets=self.buckets)


def tokbench_text(images, boxes: Sequence[Sequence[Box]], texts: Sequence[Sequence[str]], *,
                  recognize: Optional[Recognize] = None, setting: int = 256,
                  recognizer: str = "rapidocr recognition (TokBench used docTR PARSeq)"
                  ) -> TokBenchResult:
    """TokBench's text metrics for reconstructions with ground-truth boxes and strings.

    images: B×3×H×W tensor in [-1, 1] or a list of H×W×3 uint8 arrays (the reconstructions).
    boxes[j] / texts[j]: image j's ground-truth boxes (x0, y0, x1, y1 in its pixels) and strings.
    recognize: crop → text (default rapidocr recognition only). setting: TokBench's bucket set.
    """
    if isinstance(images, torch.Tensor) and images.dim() == 4:
        images = list(images)
    images = list(images)
    if not len(images) == len(boxes) == len(texts):
        raise ValueError(f"{len(images)} images, {len(boxes)} box lists, {len(texts)} text lists")
    recognize = recognize or default_recognize
    edges = bucket_edges(setting)
    instances = []
    for j, (im, bx, tx) in enumerate(zip(images, boxes, texts)):
        arr = _as_uint8(im)
        if len(bx) != len(tx):
            raise ValueError(f"image {j}: {len(bx)} boxes but {len(tx)} texts")
        for box, gt in zip(bx, tx):
            pred = str(recognize(crop_box(arr, box)))
            ratio = size_ratio(box, *arr.shape[:2])
            instances.append(dict(image=j, box=tuple(float(v) for v in box), gt=str(gt), pred=pred,
                                  ratio=ratio, bucket=bucket_of(ratio, edges),
                                  t_acc=word_accuracy(pred, gt), t_ned=word_ned(pred, gt)))
    res = TokBenchResult(instances=instances, edges=tuple(edges), setting=int(setting),
                         recognizer=recognizer)
    counted = [r for r in instances if r["bucket"] is not None]
    res.uncounted = len(instances) - len(counted)
    acc_means, ned_means = [], []
    for i in range(len(edges) - 1):
        rows = [r for r in counted if r["bucket"] == i]
        b = dict(range=(edges[i], edges[i + 1]), n=len(rows),
                 t_acc=float(np.mean([r["t_acc"] for r in rows])) if rows else float("nan"),
                 t_ned=float(np.mean([r["t_ned"] for r in rows])) if rows else float("nan"))
        res.buckets.append(b)
        if rows:
            acc_means.append(b["t_acc"])
            ned_means.append(b["t_ned"])
    if acc_means:
        res.t_acc, res.t_ned = float(np.mean(acc_means)), float(np.mean(ned_means))
        res.instance_t_acc = float(np.mean([r["t_acc"] for r in counted]))
        res.instance_t_ned = float(np.mean([r["t_ned"] for r in counted]))
    return res


# ------------------------------------------------------------------------------ no ground truth
def ocr_vs_original(reconstructions, originals, *, read: Optional[ReadText] = None) -> dict:
    """The no-ground-truth protocol: OCR (detection + recognition) of each reconstruction against
    the same OCR of its original; normalised T-ACC / T-NED (:func:`ocr.text_metrics`); pairs whose
    original reads empty are skipped and counted."""
    read = read or ocr.read_string
    recs = list(reconstructions) if isinstance(reconstructions, torch.Tensor) else list(reconstructions)
    origs = list(originals) if isinstance(originals, torch.Tensor) else list(originals)
    refs = [read(_as_uint8(o)) for o in origs]
    preds = [read(_as_uint8(r)) for r in recs]
    out = ocr.text_metrics(preds, refs)
    out.update(protocol=ORIGINAL_OCR_NAME, examples=[dict(ref=r, pred=p) for r, p in zip(refs, preds)])
    return out


# ------------------------------------------------------------------------------ scorers
class GroundTruthText:
    """T-NED of images against ground truth, TokBench-style (GT-box crops, recognition only,
    case-sensitive). One per image set: ``boxes[j]`` / ``texts[j]`` for image j; an image with
    several boxes scores the mean over its boxes."""

    name = TOKBENCH_NAME
    reference = "ground-truth text"

    def __init__(self, boxes: Sequence[Sequence[Box]], texts: Sequence[Sequence[str]],
                 recognize: Optional[Recognize] = None):
        if len(boxes) != len(texts):
            raise ValueError(f"{len(boxes)} box lists but {len(texts)} text lists")
        self.boxes, self.texts = [list(b) for b in boxes], [list(t) for t in texts]
        self.recognize = recognize or default_recognize

    def __len__(self) -> int:
        return len(self.boxes)

    def read(self, j: int, image) -> str:
        arr = _as_uint8(image)
        return " ".join(str(self.recognize(crop_box(arr, b))) for b in self.boxes[j])

    def score(self, j: int, images) -> np.ndarray:
        """T-NED of each of ``images`` (K×3×H×W or a list) as image j."""
        out = []
        for im in images:
            arr = _as_uint8(im)
            out.append(np.mean([word_ned(self.recognize(crop_box(arr, b)), t)
                                for b, t in zip(self.boxes[j], self.texts[j])]))
        return np.asarray(out, np.float64)


class OriginalOCR:
    """T-NED of images against the OCR of their originals (the no-ground-truth protocol; the
    reference is named as the original's OCR)."""

    name = ORIGINAL_OCR_NAME
    reference = "OCR of the original image (no ground truth)"

    def __init__(self, originals, read: Optional[ReadText] = None):
        self._read = read or ocr.read_string
        origs = list(originals) if isinstance(originals, torch.Tensor) else list(originals)
        self.references = [self._read(_as_uint8(o)) for o in origs]

    def __len__(self) -> int:
        return len(self.references)

    def read(self, j: int, image) -> str:
        return self._read(_as_uint8(image))

    def score(self, j: int, images) -> np.ndarray:
        return np.asarray([ocr.tned(self._read(_as_uint8(im)), self.references[j]) for im in images],
                          np.float64)


__all__ = ["tokbench_text", "TokBenchResult", "ocr_vs_original", "GroundTruthText", "OriginalOCR",
           "word_accuracy", "word_ned", "size_ratio", "bucket_of", "bucket_edges", "crop_box",
           "TOKBENCH_BUCKETS", "TOKBENCH_NAME", "ORIGINAL_OCR_NAME"]
