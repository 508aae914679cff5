"""Deletion curves: how much is a token ranking worth? (a faithfulness check)

For k = 1 … N, ablate (replace by the :mod:`baseline`) the **top-k** tokens of a ranking, **k
random** tokens (several draws) and the **bottom-k**, and measure the damage to the text:
ΔT-NED (T-NED of the plain reconstruction minus T-NED after the ablation, by a scorer of
:mod:`.tokbench`) and Δ in-box error (in-box mean |ablated − original| minus the same for the plain
reconstruction, pixel units). Curves are means ± standard errors over the images (random: the
draws are averaged per image first). A ranking is worth something where top-k lies above random-k.

Every k is one batched decode of all images × (top, bottom, draws) — fast on CPU.
The ranking is either one order for all images (a dataset-level ranking, which should be measured
on images it was not computed on) or one order per image (M×N, e.g. each upload's own ranking).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from .baseline import Baseline, resolve
from .codec import decode, encode
from .importance import mean_se

ProgressFn = Optional[Callable[[float, str], None]]
ORDERS = ("top", "random", "bottom")
ORDER_LABELS = {"top": "top-k of the ranking", "random": "k random tokens", "bottom": "bottom-k"}
CURVE_METRICS = {"t_ned_drop": "ΔT-NED (drop after ablating k tokens)",
                 "inbox_error": "Δ in-box error (pixel units)"}


def default_ks(n: int) -> list[int]:
    return list(range(1, int(n) + 1))


@dataclass
class DeletionCurves:
    """Mean ± s.e. over images of each metric after ablating k tokens, per order.

    values[metric][order]: M×len(ks) per-image values (random: mean over the draws).
    """

    ks: list[int]
    values: dict
    baseline: Baseline
    protocol: Optional[str]
    ranking_source: str
    random_draws: int
    region: str                      # "text box" or "whole image"
    base_t_ned: np.ndarray           # M
    extras: dict = field(default_factory=dict)

    @property
    def num_images(self) -> int:
        return next(iter(self.values["inbox_error"].values())).shape[0]

    def curve(self, metric: str = "t_ned_drop", order: str = "top") -> tuple[np.ndarray, np.ndarray]:
        """(mean, s.e.) over images for each k."""
        return mean_se(self.values[metric][order])

    def gap(self, metric: str = "t_ned_drop", order: str = "top", against: str = "random"
            ) -> tuple[float, float]:
        """Mean over k of (order − against), and its s.e. over images (per-image mean over k)."""
        d = self.values[metric][order] - self.values[metric][against]
        per_image = np.nanmean(d, axis=1)
        se = float(np.nanstd(per_image, ddof=1) / np.sqrt(len(per_image))) if len(per_image) > 1 else 0.0
        return float(np.nanmean(per_image)), se

    def rows(self, metric: str = "t_ned_drop") -> list[dict]:
        out = []
        for i, k in enumerate(self.ks):
            row = {"k": k}
            for order in ORDERS:
                mean, se = self.curve(metric, order)
                row[f"{order} mean"] = round(float(mean[i]), 4)
                row[f"{order} s.e."] = round(float(se[i]), 4)
            out.append(row)
        return out

    def summary(self) -> dict:
        out = dict(num_images=self.num_images, ks=self.ks, protocol=self.protocol,
                   ranking_source=self.ranking_source, random_draws=self.random_draws,
                   region=self.region, baseline=self.baseline.describe())
        for metric in CURVE_METRICS:
            if metric == "t_ned_drop" and self.protocol is None:
                continue
            out[f"{metric}_top_minus_random"] = self.gap(metric, "top", "random")
            out[f"{metric}_random_minus_bottom"] = self.gap(metric, "random", "bottom")
        return out


def _ablate_rows(lat: torch.Tensor, repl: torch.Tensor, sets: Sequence[Sequence[int]]) -> torch.Tensor:
    out = lat.unsqueeze(0).repeat(len(sets), 1, 1)
    for r, s in enumerate(sets):
        if len(s):
            idx = torch.as_tensor(list(s), dtype=torch.long)
            out[r, idx] = repl[idx].to(out.dtype)
    return out


def deletion_curves(tok, images: torch.Tensor, ranking, *, scorer=None,
                    masks: Optional[torch.Tensor] = None, baseline=None,
                    ks: Optional[Sequence[int]] = None, random_draws: int = 3, seed: int = 0,
                    ranking_source: str = "", batch_size: int = 64,
                    progress: ProgressFn = None) -> DeletionCurves:
    """Deletion curves of ``ranking`` on ``images`` (M×3×S×S in [-1, 1]).

    ranking: N token indices (most important first; one order for all images) or an M×N array
    (one order per image). scorer: a :mod:`.tokbench` scorer for the same images (``None``: pixels
    only). masks: M×S×S text regions for the in-box error (``None``: the whole image, named so).
    ks: default 1..N. random_draws: random sets per image and k (seeded by ``seed``).
    """
    base = resolve(tok, baseline)
    lat = encode(tok, images).latents
    m, n = lat.shape[:2]
    rank = np.asarray(ranking, dtype=np.int64)
    if rank.ndim == 1 and rank.shape[0] == n:
        rank = np.broadcast_to(rank, (m, n))
    if rank.shape != (m, n) or any(sorted(r) != list(range(n)) for r in rank):
        raise ValueError(f"ranking must be a permutation of the {n} token indices (or one per image)")
    ks = default_ks(n) if ks is None else [int(k) for k in ks]
    if any(not 1 <= k <= n for k in ks):
        raise ValueError(f"k must be in 1..{n}")
    if scorer is not None and len(scorer) != m:
        raise ValueError(f"the scorer holds references for {len(scorer)} images, not {m}")
    if masks is not None and masks.shape[0] != m:
        raise ValueError(f"{masks.shape[0]} masks for {m} images")
    draws = max(1, int(random_draws))
    rng = np.random.default_rng(seed)
    per = 2 + draws

    def errors(recs: torch.Tensor, j_of_row: Sequence[int]) -> np.ndarray:
        err = (recs - images[list(j_of_row)].float()).abs().mean(1) / 2.0
        if masks is None:
            return err.flatten(1).mean(1).numpy()
        return np.array([float(err[r][masks[j].bool()].mean()) for r, j in enumerate(j_of_row)])

    plain = decode(tok, lat, batch_size=batch_size)
    base_err = errors(plain, range(m))
    base_tned = np.array([scorer.score(j, plain[j:j + 1])[0] for j in range(m)]) if scorer else np.full(m, np.nan)
    values = {metric: {o: np.full((m, len(ks)), np.nan) for o in ORDERS} for metric in CURVE_METRICS}
    for ki, k in enumerate(ks):
        rows, owner = [], []
        for j in range(m):
            sets = [rank[j, :k], rank[j, n - k:]] + [rng.choice(n, k, replace=False) for _ in range(draws)]
            rows.append(_ablate_rows(lat[j], base.tokens, sets))
            owner += [j] * per
        recs = decode(tok, torch.cat(rows), batch_size=batch_size)      # one batched pass per k
        err = errors(recs, owner).reshape(m, per) - base_err[:, None]
        values["inbox_error"]["top"][:, ki] = err[:, 0]
        values["inbox_error"]["bottom"][:, ki] = err[:, 1]
        values["inbox_error"]["random"][:, ki] = err[:, 2:].mean(1)
        if scorer is not None:
            t = np.stack([scorer.score(j, recs[j * per:(j + 1) * per]) for j in range(m)])
            drop = base_tned[:, None] - t
            values["t_ned_drop"]["top"][:, ki] = drop[:, 0]
            values["t_ned_drop"]["bottom"][:, ki] = drop[:, 1]
            values["t_ned_drop"]["random"][:, ki] = drop[:, 2:].mean(1)
        if progress is not None:
            progress((ki + 1) / len(ks), f"k = {k}: {m} images × {per} ablations decoded")
    return DeletionCurves(ks=ks, values=values, baseline=base,
                          protocol=None if scorer is None else scorer.name,
                          ranking_source=ranking_source or ("one ranking for all images" if np.asarray(ranking).ndim == 1
                                                            else "each image's own ranking"),
                          random_draws=draws, region="whole image" if masks is None else "text box",
                          base_t_ned=base_tned)


def deletion_figure(curves: dict, metric: str = "t_ned_drop", title: Optional[str] = None):
    """Lines with ±1 s.e. bands: top-k, random-k, bottom-k for one or more tokenizers
    (``curves`` = {name: DeletionCurves}); the caption names the images, baseline and protocol."""
    # plotly only for figures: analysis/ imports without it (the GPU machines have none)
    import plotly.graph_objects as go

    if metric not in CURVE_METRICS:
        raise ValueError(f"unknown metric {metric!r}: use one of {', '.join(CURVE_METRICS)}")
    dash = {"top": "solid", "random": "dash", "bottom": "dot"}
    palette = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
    fig = go.Figure()
    notes = []
    for ci, (name, dc) in enumerate(curves.items()):
        if metric == "t_ned_drop" and dc.protocol is None:
            notes.append(f"{name}: no OCR ran, no ΔT-NED curve")
            continue
        color = palette[ci % len(palette)]
        for order in ORDERS:
            mean, se = dc.curve(metric, order)
            label = f"{name}: {ORDER_LABELS[order]}" + (f" ({dc.random_draws} draws)" if order == "random" else "")
            fig.add_trace(go.Scatter(x=dc.ks + dc.ks[::-1], y=list(mean + se) + list((mean - se)[::-1]),
                                     fill="toself", fillcolor=color, opacity=0.12, line=dict(width=0),
                                     hoverinfo="skip", showlegend=False))
            fig.add_trace(go.Scatter(x=dc.ks, y=mean.tolist(), mode="lines+markers", name=label,
                                     line=dict(color=color, dash=dash[order]),
                                     customdata=se.tolist(),
                                     hovertemplate="k=%{x}<br>%{y:.4f} ± %{customdata:.4f}<extra>"
                                                   + label + "</extra>"))
        notes.append(f"{name}: {dc.num_images} images, {dc.ranking_source}, {dc.baseline.label}"
                     + (f"; {dc.region}" if metric == "inbox_error" else ""))
    protocols = sorted({dc.protocol for dc in curves.values() if dc.protocol})
    if metric == "t_ned_drop" and protocols:
        notes.append("T-NED: " + "; ".join(protocols))
    fig.update_layout(
        title=title or f"Deletion curves: {CURVE_METRICS[metric]} (mean ± s.e. over images)",
        xaxis_title="tokens ablated (k)", yaxis_title=CURVE_METRICS[metric], height=420,
        margin=dict(l=50, r=20, t=60, b=120), legend=dict(orientation="h", y=1.15, x=0.5, xanchor="center"),
        annotations=[dict(text="<br>".join(notes), showarrow=False, xref="paper", yref="paper",
                          x=0, y=-0.32, xanchor="left", align="left", font=dict(size=10))])
    return fig


__all__ = ["DeletionCurves", "deletion_curves", "deletion_figure", "default_ks", "ORDERS"]
