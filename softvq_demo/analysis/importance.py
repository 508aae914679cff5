"""Which token indices carry text, ranked by importance over a set of images, with uncertainty.

For every image j and token n: ablate token n (replace it by the :mod:`baseline`) and measure

- **ΔT-NED** = T-NED(plain reconstruction) − T-NED(token n ablated), the text the token carries,
  by a scorer of :mod:`.tokbench` (TokBench-style ground-truth crops, or OCR vs the original);
- **Δ in-box error** = in-box mean |ablated − original| − in-box mean |reconstruction − original|
  (pixel units 0–1): what ablating the token costs inside the text box;
- **concentration** (the measure the old dataset ranking used): the share of the token's change
  that falls inside the box, divided by the box's share of the image (1 = no preference for text).

:class:`TextImportance` ranks token indices by mean ΔT-NED over the images (ties, and no-OCR runs,
by Δ in-box error), with a standard error and a bootstrap confidence interval over images for each
number, and the concentration beside it. Whether the ranking is worth anything is what
:func:`softvq_demo.analysis.deletion.deletion_curves` measures on other images.

:func:`pick_by_share` is the text-token pick rule: the fewest tokens whose single-token effects add
up to a given share of the total; it returns the rule in words with the tokens.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch

from ..data import textscenes as ts
from .ablation import ablated_latents
from .baseline import Baseline, resolve
from .codec import decode, encode
from .text_tokens import Pick, boxes_to_mask, pick_by_share, region_effects

ProgressFn = Optional[Callable[[float, str], None]]
METRICS = ("t_ned_drop", "inbox_error", "concentration")
METRIC_LABELS = {"t_ned_drop": "ΔT-NED (drop when ablated)",
                 "inbox_error": "Δ in-box error (pixel units)",
                 "concentration": "concentration (1 = uniform)"}


# --------------------------------------------------------------------------- image sets
@dataclass
class TextSet:
    """Images with ground-truth text: M×3×S×S in [-1, 1], per-image boxes and strings, and
    box masks (M×S×S bool, True inside the boxes)."""

    images: torch.Tensor
    boxes: list
    texts: list
    masks: torch.Tensor
    note: str = ""

    def __len__(self) -> int:
        return self.images.shape[0]


def textscenes_set(image_size: int, count: int, *, split: str = "heldout", start: int = 0,
                   seed: int = 0) -> TextSet:
    """``count`` textscenes images (indices start..start+count-1 of ``split``) with their
    ground-truth boxes, rendered strings and box masks."""
    ds = ts.TextScenes(split, size=start + count, image_size=image_size, seed=seed)
    samples = [ds.sample(i) for i in range(start, start + count)]
    boxes = [[tuple(float(v) for v in s.box)] for s in samples]
    masks = torch.stack([boxes_to_mask(b, image_size, image_size) for b in boxes])
    return TextSet(ts.to_tensor(np.stack([s.image for s in samples])), boxes, [[s.text] for s in samples],
                   masks, note=f"textscenes {ds.split} #{start}–{start + count - 1} ({image_size} px)")


# --------------------------------------------------------------------------- statistics
def mean_se(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error over axis 0 (images), ignoring NaN."""
    v = np.asarray(values, np.float64)
    n = np.sum(~np.isnan(v), axis=0)
    mean = np.nanmean(v, axis=0) if v.size else np.full(v.shape[1:], np.nan)
    sd = np.nanstd(v, axis=0, ddof=1) if v.shape[0] > 1 else np.zeros(v.shape[1:])
    return mean, sd / np.sqrt(np.maximum(n, 1))


def bootstrap_ci(values: np.ndarray, level: float = 0.95, n_boot: int = 1000, seed: int = 0
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval of the mean over axis 0 (images resampled with replacement)."""
    v = np.asarray(values, np.float64)
    m = v.shape[0]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, m, size=(int(n_boot), m))
    means = np.nanmean(v[idx], axis=1)
    lo = (1 - level) / 2
    return np.nanquantile(means, lo, axis=0), np.nanquantile(means, 1 - lo, axis=0)


# --------------------------------------------------------------------------- the ranking
@dataclass
class TextImportance:
    """Per-image, per-token text effects over M images and the ranking they give (see module doc).

    t_ned_drop: M×N (NaN when no scorer ran); inbox_error, concentration: M×N; base_t_ned: M.
    """

    t_ned_drop: np.ndarray
    inbox_error: np.ndarray
    concentration: np.ndarray
    base_t_ned: np.ndarray
    baseline: Baseline
    protocol: Optional[str]
    note: str = ""
    extras: dict = field(default_factory=dict)

    @property
    def num_images(self) -> int:
        return self.inbox_error.shape[0]

    @property
    def num_tokens(self) -> int:
        return self.inbox_error.shape[1]

    @property
    def has_text_scores(self) -> bool:
        return not np.all(np.isnan(self.t_ned_drop))

    @property
    def ranked_by(self) -> str:
        if self.has_text_scores:
            return "mean ΔT-NED over images (ties: mean Δ in-box error)"
        return "mean Δ in-box error over images (no OCR ran)"

    def values(self, metric: str) -> np.ndarray:
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}: use one of {', '.join(METRICS)}")
        return getattr(self, metric)

    def mean(self, metric: str = "t_ned_drop") -> np.ndarray:
        return mean_se(self.values(metric))[0]

    def se(self, metric: str = "t_ned_drop") -> np.ndarray:
        return mean_se(self.values(metric))[1]

    def ci(self, metric: str = "t_ned_drop", level: float = 0.95, n_boot: int = 1000,
           seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        return bootstrap_ci(self.values(metric), level, n_boot, seed)

    def ranking(self) -> list[int]:
        """Token indices, most important first."""
        pix = self.mean("inbox_error")
        if not self.has_text_scores:
            return [int(i) for i in np.argsort(-pix, kind="stable")]
        txt = np.nan_to_num(self.mean("t_ned_drop"), nan=-np.inf)
        return [int(i) for i in np.lexsort((-pix, -txt))]

    def per_image_ranking(self) -> np.ndarray:
        """M×N: each image's own token order (ΔT-NED, ties by Δ in-box error)."""
        out = []
        for j in range(self.num_images):
            txt = np.nan_to_num(self.t_ned_drop[j], nan=0.0)
            out.append(np.lexsort((-self.inbox_error[j], -txt)))
        return np.stack(out)

    def concentration_ranking(self) -> list[int]:
        """The old dataset ranking (mean concentration), kept for comparison."""
        return [int(i) for i in np.argsort(-self.mean("concentration"), kind="stable")]

    def pick(self, share: float = 0.8) -> Pick:
        """:func:`pick_by_share` on the mean effects (ΔT-NED when OCR ran, else Δ in-box error)."""
        if self.has_text_scores and np.nansum(np.clip(self.mean("t_ned_drop"), 0, None)) > 0:
            return pick_by_share(self.mean("t_ned_drop"), share, "mean ΔT-NED")
        return pick_by_share(self.mean("inbox_error"), share, "mean Δ in-box error")

    def rows(self, level: float = 0.95) -> list[dict]:
        """One row per token, ranked: the table the app shows (numbers with s.e. and CI)."""
        stats = {}
        for m in METRICS:
            mean, se = mean_se(self.values(m))
            lo, hi = self.ci(m, level)
            stats[m] = (mean, se, lo, hi)
        pct = f"{round(level * 100)}%"
        out = []
        for rank, i in enumerate(self.ranking(), 1):
            row = {"rank": rank, "token": i}
            for m, short in (("t_ned_drop", "ΔT-NED"), ("inbox_error", "Δ in-box error"),
                             ("concentration", "concentration")):
                if m == "t_ned_drop" and not self.has_text_scores:
                    continue
                mean, se, lo, hi = (float(a[i]) for a in stats[m])
                row[short] = round(mean, 4)
                row[f"{short} s.e."] = round(se, 4)
                row[f"{short} {pct} CI"] = f"[{lo:.3f}, {hi:.3f}]"
            out.append(row)
        return out

    def summary(self) -> dict:
        return dict(num_images=self.num_images, num_tokens=self.num_tokens, ranked_by=self.ranked_by,
                    protocol=self.protocol, baseline=self.baseline.describe(), note=self.note,
                    base_t_ned=float(np.nanmean(self.base_t_ned)) if self.base_t_ned.size else None)


def text_importance(tok, images: torch.Tensor, masks: torch.Tensor, *, scorer=None,
                    baseline=None, batch_size: int = 64, progress: ProgressFn = None,
                    note: str = "") -> TextImportance:
    """Ablate every token of every image (one batched decode per image) and measure ΔT-NED (with a
    ``scorer`` from :mod:`.tokbench`), Δ in-box error and concentration.

    images: M×3×S×S in [-1, 1] at the tokenizer's size; masks: M×S×S bool text regions (e.g.
    :func:`~softvq_demo.analysis.text_tokens.boxes_to_mask` of the boxes); scorer: ``None`` (pixels
    only), :class:`~.tokbench.GroundTruthText` or :class:`~.tokbench.OriginalOCR` for the same
    images; baseline: ``None`` (the default, :func:`~.baseline.default_baseline`), ``"zero"``, a
    tensor or a :class:`~.baseline.Baseline`. Images whose mask is empty or full are refused.
    """
    if images.shape[0] != masks.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {masks.shape[0]} masks")
    if scorer is not None and len(scorer) != images.shape[0]:
        raise ValueError(f"the scorer holds references for {len(scorer)} images, not {images.shape[0]}")
    base = resolve(tok, baseline)
    lat = encode(tok, images).latents
    m, n = lat.shape[:2]
    drop = np.full((m, n), np.nan)
    inbox = np.zeros((m, n))
    conc = np.zeros((m, n))
    base_tned = np.full(m, np.nan)
    for j in range(m):
        mask = masks[j].bool()
        batch = torch.cat([lat[j:j + 1], ablated_latents(lat[j], base.tokens)])
        recs = decode(tok, batch, batch_size=batch_size)
        err = ((recs - images[j:j + 1].float()).abs().mean(1) / 2.0)       # K×H×W, 0–1 units
        in_err = err[:, mask].mean(1)
        inbox[j] = (in_err[1:] - in_err[0]).numpy()
        maps = ((recs[1:] - recs[:1]).abs().mean(1) / 2.0)
        conc[j] = region_effects(maps, mask)[2].numpy()
        if scorer is not None:
            s = scorer.score(j, recs)
            base_tned[j] = s[0]
            drop[j] = s[0] - s[1:]
        if progress is not None:
            progress((j + 1) / m, f"ablated every token of image {j + 1}/{m}")
    return TextImportance(drop, inbox, conc, base_tned, base,
                          None if scorer is None else scorer.name, note=note)


# --------------------------------------------------------------------------- figure
def importance_figure(results: dict, top: Optional[int] = None, level: float = 0.95,
                      title: Optional[str] = None):
    """Ranked bars of mean ΔT-NED (or Δ in-box error without OCR) with CI error bars, and the
    concentration beside each bar (second axis); one trace pair per tokenizer."""
    # plotly only for figures: analysis/ imports without it (the GPU machines have none)
    import plotly.graph_objects as go

    fig = go.Figure()
    captions = []
    for name, imp in results.items():
        metric = "t_ned_drop" if imp.has_text_scores else "inbox_error"
        order = imp.ranking()[:top] if top else imp.ranking()
        mean = imp.mean(metric)
        lo, hi = imp.ci(metric, level)
        conc = imp.mean("concentration")
        x = [f"{name} · t{i}" if len(results) > 1 else f"t{i}" for i in order]
        fig.add_trace(go.Bar(
            x=x, y=[float(mean[i]) for i in order], name=f"{name}: {METRIC_LABELS[metric]}",
            error_y=dict(type="data", symmetric=False,
                         array=[float(hi[i] - mean[i]) for i in order],
                         arrayminus=[float(mean[i] - lo[i]) for i in order]),
            hovertemplate="%{x}<br>%{y:.4f}<extra></extra>"))
        fig.add_trace(go.Scatter(
            x=x, y=[float(conc[i]) for i in order], yaxis="y2", mode="markers",
            name=f"{name}: concentration", marker=dict(symbol="diamond", size=7),
            hovertemplate="%{x}<br>concentration %{y:.2f}<extra></extra>"))
        captions.append(f"{name}: {imp.num_images} images, {imp.baseline.label}")
    fig.update_layout(
        title=title or "Token importance for text (bars: mean with "
                       f"{round(level * 100)}% bootstrap CI over images)",
        xaxis_title="token, most important first", yaxis_title="effect on text when ablated",
        yaxis2=dict(title="concentration", overlaying="y", side="right"),
        height=380, margin=dict(l=50, r=60, t=60, b=90), barmode="group",
        legend=dict(orientation="h", y=1.12, x=0.5, xanchor="center"),
        annotations=[dict(text="<br>".join(captions), showarrow=False, xref="paper", yref="paper",
                          x=0, y=-0.3, xanchor="left", font=dict(size=10))])
    return fig


__all__ = ["TextSet", "textscenes_set", "TextImportance", "text_importance", "Pick", "pick_by_share",
           "importance_figure", "mean_se", "bootstrap_ci", "METRICS", "METRIC_LABELS"]
