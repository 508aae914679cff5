"""Which tokens carry text? Ablation effects inside versus outside text boxes, and OCR damage.

For one image with text boxes (from an OCR detector, drawn by hand, or a dataset's ground-truth
mask): ablate every token (batched), split each token's difference map into the part inside the
boxes and the part outside, and, with an OCR reader, read the text after each ablation. A token
whose ablation changes mostly the text region and breaks the OCR "carries text".

OCR functions are passed in (``read_text(image_uint8) -> str``, ``similarity(pred, ref) -> float``
in [0, 1], e.g. T-NED), so this module works with any reader and needs none to run.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ..cancel import raise_if_cancelled
from .ablation import AblationResult, ablate_tokens, keep_tokens, replace_tokens
from .baseline import DEFAULT_BASELINE
from .codec import decode, encode
from .pictures import to_uint8

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels of the model-size image
ReadText = Callable[[np.ndarray], str]
Similarity = Callable[[str, str], float]
ProgressFn = Optional[Callable[[float, str], None]]


# --------------------------------------------------------------------------- boxes and masks
def parse_boxes(text: str) -> list[Box]:
    """Parse boxes written as ``x0,y0,x1,y1`` separated by ``;`` or new lines."""
    boxes = []
    for part in re.split(r"[;\n]+", text or ""):
        part = part.strip().strip("()[]")
        if not part:
            continue
        nums = [p for p in re.split(r"[,\s]+", part) if p]
        if len(nums) != 4:
            raise ValueError(f"box {part!r}: write four numbers x0,y0,x1,y1")
        try:
            x0, y0, x1, y1 = (float(v) for v in nums)
        except ValueError as err:
            raise ValueError(f"box {part!r}: not numbers") from err
        if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
            raise ValueError(f"box {part!r}: not finite")
        boxes.append((min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)))
    return boxes


def format_boxes(boxes: Sequence[Box]) -> str:
    return "; ".join(",".join(f"{v:.0f}" for v in b) for b in boxes)


def boxes_to_mask(boxes: Sequence[Box], height: int, width: int) -> torch.Tensor:
    """Boolean H×W mask, True inside any box (boxes clipped to the image)."""
    mask = torch.zeros(height, width, dtype=torch.bool)
    for x0, y0, x1, y1 in boxes:
        c0, r0 = max(0, int(math.floor(x0))), max(0, int(math.floor(y0)))
        c1, r1 = min(width, int(math.ceil(x1))), min(height, int(math.ceil(y1)))
        if c1 > c0 and r1 > r0:
            mask[r0:r1, c0:c1] = True
    return mask


def scale_boxes(boxes: Sequence[Box], sx: float, sy: float, dx: float = 0.0, dy: float = 0.0
                ) -> list[Box]:
    """Map boxes through x' = x·sx + dx, y' = y·sy + dy (e.g. original → model pixels)."""
    return [(x0 * sx + dx, y0 * sy + dy, x1 * sx + dx, y1 * sy + dy) for x0, y0, x1, y1 in boxes]


def mask_overlay(image: np.ndarray, mask: torch.Tensor, color=(255, 0, 0), alpha: float = 0.35
                 ) -> np.ndarray:
    """Tint the masked pixels of an H×W×3 uint8 image."""
    out = image.astype(np.float32).copy()
    m = mask.numpy().astype(bool)
    out[m] = out[m] * (1 - alpha) + np.array(color, np.float32) * alpha
    return out.round().astype(np.uint8)


# --------------------------------------------------------------------------- pick rule
@dataclass
class Pick:
    """A set of tokens and the rule that chose it, in words (for the UI)."""

    tokens: list[int]
    rule: str
    share: float            # the share asked for
    reached: float          # the share the chosen tokens carry


def pick_by_share(effect, share: float = 0.8, what: str = "effect") -> Pick:
    """The fewest tokens whose single-token effects (negative ones count as 0) add up to at least
    ``share`` of the total over all tokens, largest first. Returns the tokens (sorted) and the rule."""
    e = np.clip(np.nan_to_num(np.asarray(effect, np.float64), nan=0.0), 0, None)
    if not 0 < share <= 1:
        raise ValueError(f"share = {share}: choose a fraction in (0, 1]")
    total = float(e.sum())
    n = e.shape[0]
    head = (f"the fewest tokens whose single-token {what} adds up to ≥ {share:.0%} of the total "
            f"over all {n} tokens")
    if total <= 0:
        return Pick([], f"{head}: no token has a positive {what}, so none is picked", share, 0.0)
    order = np.argsort(-e, kind="stable")
    cum = np.cumsum(e[order]) / total
    k = int(np.searchsorted(cum, share - 1e-12) + 1)
    k = min(k, n)
    return Pick(sorted(int(i) for i in order[:k]), f"{head}: {k} token{'s' if k != 1 else ''}",
                share, float(cum[k - 1]))



# --------------------------------------------------------------------------- one image
@dataclass
class TextTokenResult:
    ablation: AblationResult
    mask: torch.Tensor              # H×W bool, the text region
    effect_in: torch.Tensor         # N: mean |Δ| inside the text region
    effect_out: torch.Tensor        # N: mean |Δ| outside it
    concentration: torch.Tensor     # N: share of the token's change inside the text, ÷ area share
    base_text: Optional[str] = None          # OCR of the plain reconstruction
    reference_text: Optional[str] = None     # OCR of the original (or ground truth)
    base_similarity: Optional[float] = None  # similarity(base_text, reference)
    text_after: Optional[list[str]] = None   # OCR after ablating token i
    similarity_after: Optional[torch.Tensor] = None  # N
    extras: dict = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        return self.effect_in.shape[0]

    @property
    def ocr_damage(self) -> Optional[torch.Tensor]:
        """How much ablating token i lowers the OCR similarity (≥ 0 means it hurt)."""
        if self.similarity_after is None or self.base_similarity is None:
            return None
        return self.base_similarity - self.similarity_after

    def score(self) -> torch.Tensor:
        """Text score used for ranking: OCR damage (when OCR ran) plus the in-text effect
        relative to the strongest token's, so ties in OCR are broken by pixels."""
        pix = self.effect_in / self.effect_in.max().clamp_min(1e-12)
        dmg = self.ocr_damage
        if dmg is None:
            return pix * self.concentration.clamp(max=10).sqrt()
        return dmg.clamp_min(0) + 0.1 * pix

    def ranking(self) -> list[int]:
        return [int(i) for i in torch.argsort(self.score(), descending=True)]

    def text_tokens(self, k: Optional[int] = None, share: float = 0.8) -> list[int]:
        """The tokens that carry text: the top ``k`` by score, or — without k — :meth:`pick`'s
        tokens (the fewest whose single-token effects carry ``share`` of the total)."""
        if k is not None:
            return sorted(self.ranking()[:max(0, int(k))])
        return self.pick(share).tokens

    def pick(self, share: float = 0.8) -> "Pick":
        """The text tokens by a rule a reader can state (:func:`~.importance.pick_by_share`): the
        fewest tokens whose single-token T-NED drops add up to ``share`` of the total drop (when OCR
        ran and some token lowered it), else whose in-text |Δ| adds up to ``share`` of the total.
        Returns a ``Pick`` (tokens, rule in words, share asked, share reached)."""
        dmg = self.ocr_damage
        if dmg is not None and float(dmg.clamp_min(0).sum()) > 0:
            return pick_by_share(dmg.numpy(), share, "T-NED drop")
        what = "in-text |Δ|" + (" (no ablation lowered the T-NED)" if dmg is not None else " (no OCR)")
        return pick_by_share(self.effect_in.numpy(), share, what)

    def rows(self) -> list[dict]:
        """One row per token, ranked: the table the app shows."""
        dmg = self.ocr_damage
        score = self.score()
        out = []
        for rank, i in enumerate(self.ranking(), 1):
            row = {"rank": rank, "token": i,
                   "effect in text": round(float(self.effect_in[i]), 5),
                   "effect outside": round(float(self.effect_out[i]), 5),
                   "in/out": round(float(self.effect_in[i] / self.effect_out[i].clamp_min(1e-9)), 2),
                   "concentration": round(float(self.concentration[i]), 2)}
            if dmg is not None:
                row["OCR after ablation"] = self.text_after[i]
                row["T-NED after"] = round(float(self.similarity_after[i]), 3)
                row["T-NED drop"] = round(float(dmg[i]), 3)
            row["score"] = round(float(score[i]), 4)
            out.append(row)
        return out


def region_effects(maps: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean |Δ| inside, mean |Δ| outside, concentration) of K×H×W maps for a H×W mask."""
    if tuple(mask.shape) != tuple(maps.shape[1:]):
        raise ValueError(f"mask {tuple(mask.shape)} does not match the maps {tuple(maps.shape[1:])}")
    m = mask.bool()
    area = float(m.float().mean())
    if area <= 0:
        raise ValueError("the text region is empty: give at least one box inside the image")
    if area >= 1:
        raise ValueError("the text region covers the whole image: nothing to compare it with")
    flat = maps.flatten(1)
    mf = m.flatten()
    e_in = flat[:, mf].mean(1)
    e_out = flat[:, ~mf].mean(1)
    total = flat.sum(1).clamp_min(1e-12)
    conc = (flat[:, mf].sum(1) / total) / area
    return e_in, e_out, conc


def analyze_text_tokens(tok, latents: torch.Tensor, mask: torch.Tensor, *, mode: str = DEFAULT_BASELINE,
                        mean: Optional[torch.Tensor] = None, other: Optional[torch.Tensor] = None,
                        read_text: Optional[ReadText] = None, similarity: Optional[Similarity] = None,
                        reference_text: Optional[str] = None, ablation: Optional[AblationResult] = None,
                        progress: ProgressFn = None) -> TextTokenResult:
    """Per-token effect inside/outside ``mask`` and, with ``read_text`` + ``similarity``, the OCR
    similarity to ``reference_text`` (default: OCR of the plain reconstruction) after each ablation."""
    if ablation is None:
        ablation = ablate_tokens(tok, latents, mode, mean=mean, other=other)
    e_in, e_out, conc = region_effects(ablation.maps, mask)
    res = TextTokenResult(ablation=ablation, mask=mask.bool(), effect_in=e_in, effect_out=e_out,
                          concentration=conc)
    if read_text is not None and similarity is not None:
        res.base_text = read_text(to_uint8(ablation.base))
        res.reference_text = reference_text if reference_text is not None else res.base_text
        res.base_similarity = float(similarity(res.base_text, res.reference_text))
        texts, sims = [], []
        n = ablation.num_tokens
        for i in range(n):
            t = read_text(to_uint8(ablation.ablated[i]))
            texts.append(t)
            sims.append(float(similarity(t, res.reference_text)))
            if progress is not None:
                progress((i + 1) / n, f"OCR after ablating token {i + 1}/{n}")
        res.text_after = texts
        res.similarity_after = torch.tensor(sims)
    return res


def keep_and_drop(tok, latents: torch.Tensor, replacement: torch.Tensor, tokens: Sequence[int]
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Reconstructions keeping only ``tokens`` and dropping only ``tokens`` (3×H×W each)."""
    both = torch.stack([keep_tokens(latents, replacement, tokens),
                        replace_tokens(latents, replacement, tokens)])
    out = decode(tok, both)
    return out[0], out[1]


# --------------------------------------------------------------------------- many images
@dataclass
class TextProfile:
    """Per-token statistics over a set of images with ground-truth text masks.

    Its ranking is by **concentration** (where a token's change falls), not by importance (how
    much ablating it hurts the text): for importance with uncertainty use
    :func:`softvq_demo.analysis.importance.text_importance`."""

    effect_in: torch.Tensor        # M×N
    effect_out: torch.Tensor       # M×N
    concentration: torch.Tensor    # M×N
    num_images: int
    mode: str

    def mean_concentration(self) -> torch.Tensor:
        return self.concentration.mean(0)

    def text_rank_frequency(self, top: int = 3) -> torch.Tensor:
        """How often (share of images) each token is among the ``top`` most text-concentrated."""
        n = self.concentration.shape[1]
        top = max(1, min(int(top), n))
        idx = torch.argsort(self.effect_in * self.concentration, dim=1, descending=True)[:, :top]
        return torch.bincount(idx.flatten(), minlength=n).float() / self.num_images

    def ranking(self) -> list[int]:
        """Token indices by decreasing mean concentration (same as :meth:`concentration_ranking`)."""
        return self.concentration_ranking()

    def concentration_ranking(self) -> list[int]:
        return [int(i) for i in torch.argsort(self.mean_concentration(), descending=True)]


def text_profile(tok, images: torch.Tensor, masks: torch.Tensor, mode: str = DEFAULT_BASELINE, *,
                 mean: Optional[torch.Tensor] = None, progress: ProgressFn = None) -> TextProfile:
    """Ablate every token of every image (M×3×H×W with M×H×W boolean text masks); images whose
    mask is empty or full are skipped."""

    if images.shape[0] != masks.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {masks.shape[0]} masks")
    lat = encode(tok, images).latents
    e_in, e_out, conc = [], [], []
    m = images.shape[0]
    for j in range(m):
        raise_if_cancelled()
        area = float(masks[j].float().mean())
        if 0 < area < 1:
            ab = ablate_tokens(tok, lat[j], mode, mean=mean, seed=j)
            a, b, c = region_effects(ab.maps, masks[j].bool())
            e_in.append(a), e_out.append(b), conc.append(c)
        if progress is not None:
            progress((j + 1) / m, f"ablated image {j + 1}/{m}")
    if not e_in:
        raise ValueError("no image had a usable text mask")
    return TextProfile(torch.stack(e_in), torch.stack(e_out), torch.stack(conc), len(e_in), mode)


# --------------------------------------------------------------------------- figures
def text_effect_figure(res: TextTokenResult, title: str = "Token effect inside vs outside the text"):
    """Grouped bars (in / out) per token, plus OCR similarity after ablation when available."""
    # plotly only for figures: analysis/ imports without it (the GPU machines have none)
    import plotly.graph_objects as go

    n = res.num_tokens
    x = list(range(n))
    fig = go.Figure()
    fig.add_trace(go.Bar(x=x, y=res.effect_in.tolist(), name="inside text",
                         marker_color="#d62728",
                         hovertemplate="token %{x}<br>inside |Δ| %{y:.4f}<extra></extra>"))
    fig.add_trace(go.Bar(x=x, y=res.effect_out.tolist(), name="outside text",
                         marker_color="#1f77b4",
                         hovertemplate="token %{x}<br>outside |Δ| %{y:.4f}<extra></extra>"))
    if res.similarity_after is not None:
        fig.add_trace(go.Scatter(x=x, y=res.similarity_after.tolist(), name="T-NED after ablation",
                                 yaxis="y2", mode="lines+markers", marker_color="#2ca02c",
                                 customdata=[[t] for t in res.text_after],
                                 hovertemplate=("token %{x}<br>T-NED %{y:.3f}<br>OCR: "
                                                "%{customdata[0]}<extra></extra>")))
        fig.update_layout(yaxis2=dict(title="T-NED", overlaying="y", side="right", range=[0, 1.05]))
    fig.update_layout(title=title, barmode="group", xaxis_title="token index",
                      yaxis_title="mean |Δ pixel|", height=330, margin=dict(l=50, r=60, t=50, b=40),
                      legend=dict(orientation="h", y=1.13, x=0.5, xanchor="center"))
    return fig


def profile_figure(profiles: dict[str, TextProfile], title: Optional[str] = None):
    """Mean text concentration per token index for one or more tokenizers (side by side)."""
    # plotly only for figures: analysis/ imports without it (the GPU machines have none)
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, p in profiles.items():
        mc = p.mean_concentration()
        freq = p.text_rank_frequency()
        sd = p.concentration.std(0) if p.num_images > 1 else torch.zeros_like(mc)
        fig.add_trace(go.Bar(
            x=list(range(mc.shape[0])), y=mc.tolist(), name=f"{name} ({p.num_images} images)",
            error_y=dict(type="data", array=(sd / math.sqrt(max(p.num_images, 1))).tolist()),
            customdata=[[float(f)] for f in freq],
            hovertemplate=("token %{x}<br>mean concentration %{y:.2f}<br>among top-3 text tokens "
                           "in %{customdata[0]:.0%} of images<extra>" + name + "</extra>")))
    fig.add_hline(y=1.0, line_dash="dot", annotation_text="no preference for text",
                  annotation_position="top left")
    fig.update_layout(title=title or "Text concentration per token index (where a token's change falls; "
                                     "not importance)",
                      xaxis_title="token index", yaxis_title="text concentration (1 = uniform)",
                      barmode="group", height=340, margin=dict(l=50, r=20, t=50, b=40),
                      legend=dict(orientation="h", y=1.12, x=0.5, xanchor="center"))
    return fig
