"""FSQ level usage: how often each dimension of a finite-scalar-quantised token takes each level.

FSQ (Mentzer et al., arXiv 2309.15505; FlexTok's regularizer) has no learned codebook: a token is d
scalars, dimension j rounded to one of L_j fixed levels, and its id is the mixed-radix number of
those level indices (dimension 0 least significant, as in the official ``quantize_fsq.py``). So
instead of a codeword heatmap we count, per dimension, how often each level is used. Per dimension
we also give the plug-in entropy of that histogram against its maximum log2(L_j) (uniform use), and
the *perplexity* 2^H ("effective levels"); a 95% bootstrap interval over tokens says how much the
estimate is worth for a small set (the plug-in estimate is biased low when tokens are few).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch


def level_indices(ids: torch.Tensor, levels: Sequence[int]) -> torch.Tensor:
    """FSQ ids (any shape) → level indices (..., d), c_j = (id // basis_j) mod L_j."""
    levels = [int(v) for v in levels]
    basis = torch.tensor([math.prod(levels[:j]) for j in range(len(levels))], dtype=torch.long)
    ids = torch.as_tensor(ids).long().cpu()
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= math.prod(levels)):
        raise ValueError(f"FSQ ids must lie in 0..{math.prod(levels) - 1}")
    return (ids[..., None] // basis) % torch.tensor(levels, dtype=torch.long)


def level_values(level: int) -> list[float]:
    """The values a dimension with ``level`` levels takes: (c − L//2)/(L//2), c = 0..L−1."""
    half = level // 2
    return [(c - half) / half for c in range(level)]


def _entropy_bits(counts: np.ndarray) -> float:
    total = counts.sum()
    if total == 0:
        return float("nan")
    p = counts[counts > 0] / total
    return float(-(p * np.log2(p)).sum())


@dataclass
class LevelHistogram:
    levels: list[int]
    counts: list[np.ndarray]        # per dimension j: counts of its L_j levels
    num_tokens: int
    entropy_ci: list[tuple[float, float]]  # 95% bootstrap interval of each dimension's entropy

    def frequencies(self, j: int) -> np.ndarray:
        c = self.counts[j]
        return c / max(1, c.sum())

    def entropy_bits(self, j: int) -> float:
        return _entropy_bits(self.counts[j])

    def summary(self) -> list[dict]:
        rows = []
        for j, level in enumerate(self.levels):
            h = self.entropy_bits(j)
            lo, hi = self.entropy_ci[j]
            rows.append({"dimension": j, "levels": level, "tokens": self.num_tokens,
                         "levels used": int((self.counts[j] > 0).sum()),
                         "entropy (bits)": round(h, 3), "95% CI": f"{lo:.3f}–{hi:.3f}",
                         "max (uniform)": round(math.log2(level), 3),
                         "effective levels": round(2 ** h, 2) if math.isfinite(h) else None})
        return rows


def level_histogram(ids: torch.Tensor, levels: Sequence[int], *, bootstrap: int = 200,
                    seed: int = 0) -> LevelHistogram:
    """Per-dimension level counts over all tokens in ``ids`` (B×N, or any shape)."""
    levels = [int(v) for v in levels]
    codes = level_indices(ids, levels).reshape(-1, len(levels)).numpy()
    n = codes.shape[0]
    counts = [np.bincount(codes[:, j], minlength=L)[:L] for j, L in enumerate(levels)]
    rng = np.random.default_rng(seed)
    cis = []
    for j, L in enumerate(levels):
        if n == 0:
            cis.append((float("nan"), float("nan")))
            continue
        # resampling tokens with replacement = a multinomial draw of the counts (cheap for any n)
        draws = rng.multinomial(n, counts[j] / n, size=bootstrap)
        hs = [_entropy_bits(row) for row in draws]
        cis.append((float(np.percentile(hs, 2.5)), float(np.percentile(hs, 97.5))))
    return LevelHistogram(levels, counts, n, cis)


def level_histogram_figure(hist: LevelHistogram, title: Optional[str] = None):
    """Plotly: one bar group per FSQ dimension, bars = share of tokens at each level value."""
    # plotly only for figures: analysis/ imports without it (the GPU machines have none)
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    d = len(hist.levels)
    names = [f"dim {j}: H = {hist.entropy_bits(j):.2f} / {math.log2(L):.2f} bits"
             for j, L in enumerate(hist.levels)]
    fig = make_subplots(rows=1, cols=d, subplot_titles=names, shared_yaxes=True)
    for j, L in enumerate(hist.levels):
        vals = level_values(L)
        freq = hist.frequencies(j)
        fig.add_trace(go.Bar(x=[f"{v:+.2f}" for v in vals], y=freq, showlegend=False,
                             customdata=hist.counts[j],
                             hovertemplate=f"dim {j}" + "<br>value %{x}<br>share %{y:.3f}"
                                           "<br>count %{customdata}<extra></extra>"),
                      row=1, col=j + 1)
        fig.add_hline(y=1 / L, line_dash="dot", line_color="gray", row=1, col=j + 1)
    fig.update_layout(title=title or f"FSQ level usage over {hist.num_tokens} tokens "
                                     "(dotted: uniform use)",
                      height=320, margin=dict(l=50, r=20, t=70, b=40), bargap=0.1)
    fig.update_annotations(font_size=10)
    fig.update_yaxes(title_text="share of tokens", row=1, col=1)
    return fig
