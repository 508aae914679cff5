"""What the tokens say about the codebook.

SoftVQ: each token is a softmax-weighted sum of the codewords of its group's codebook (token n uses
codebook n // (N/K)); its posterior ``probs[n]`` tells which codewords it mixes, its entropy how
many (the effective number of codewords is exp(entropy)). TiTok: each token is one codeword; the
indices and their usage are what there is to see.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch


def group_of_tokens(num_tokens: int, num_codebooks: int) -> list[int]:
    """Codebook group of each token: consecutive blocks of N/K tokens."""
    k = max(1, int(num_codebooks))
    if num_tokens % k:
        raise ValueError(f"{num_tokens} tokens do not split into {k} codebook groups")
    per = num_tokens // k
    return [n // per for n in range(num_tokens)]


def entropy(probs: torch.Tensor, base: float = math.e) -> torch.Tensor:
    """Entropy of each posterior along the last axis (…×V → …), in nats (or bits with base=2)."""
    p = probs.float().clamp_min(0)
    p = p / p.sum(-1, keepdim=True).clamp_min(1e-12)
    h = -(p * torch.log(p.clamp_min(1e-12))).sum(-1)
    return h / math.log(base)


def effective_codewords(probs: torch.Tensor) -> torch.Tensor:
    """exp(entropy): the number of equally-weighted codewords giving the same entropy (1..V)."""
    return torch.exp(entropy(probs))


@dataclass
class TokenStats:
    entropy_bits: torch.Tensor      # N
    effective: torch.Tensor         # N
    top_index: torch.Tensor         # N (argmax codeword)
    top_prob: torch.Tensor          # N


def token_stats(probs: torch.Tensor) -> TokenStats:
    """Per-token entropy, effective number of codewords and top codeword of one image (N×V)."""
    if probs.dim() == 3:
        probs = probs[0]
    top_p, top_i = probs.float().max(-1)
    return TokenStats(entropy(probs, 2), effective_codewords(probs), top_i, top_p)


def top_codewords(probs: torch.Tensor, groups: Sequence[int], top: int = 16) -> dict[int, list[int]]:
    """For each group, the ``top`` codewords with the most posterior mass over that group's tokens
    (one image N×V, or a batch B×N×V), in decreasing order of mass."""
    if probs.dim() == 3:
        probs = probs.sum(0)
    out = {}
    g = torch.tensor(groups)
    for k in sorted(set(groups)):
        mass = probs[g == k].float().sum(0)
        t = min(int(top), mass.shape[0])
        out[k] = [int(i) for i in torch.argsort(mass, descending=True)[:t]]
    return out


def posterior_figure(probs: torch.Tensor, num_codebooks: int = 1, top: int = 16,
                     title: str = "Soft posteriors: tokens × top codewords"):
    """Plotly heatmaps, one per codebook group: rows are the group's tokens, columns its ``top``
    codewords (by mass); hover shows token, codeword id, probability and the token's entropy."""
    # plotly only for figures: analysis/ imports without it (the GPU machines have none)
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    if probs.dim() == 3:
        probs = probs[0]
    probs = probs.float().cpu()
    n, v = probs.shape
    groups = group_of_tokens(n, num_codebooks)
    tops = top_codewords(probs, groups, top)
    ents = entropy(probs, 2)
    kk = len(tops)
    fig = make_subplots(rows=1, cols=kk, subplot_titles=[f"codebook {k}" for k in range(kk)],
                        horizontal_spacing=0.06 if kk > 1 else 0.02)
    for k in range(kk):
        toks = [i for i in range(n) if groups[i] == k]
        cols = tops[k]
        z = probs[toks][:, cols].numpy()
        rest = 1 - z.sum(1, keepdims=True)
        custom = np.stack(np.broadcast_arrays(
            np.array(cols)[None, :], np.array([float(ents[i]) for i in toks])[:, None],
            rest), -1)
        fig.add_trace(go.Heatmap(
            z=z, x=[f"c{c}" for c in cols], y=[f"t{i}" for i in toks], zmin=0, zmax=1,
            colorscale="Viridis", showscale=(k == kk - 1), customdata=custom,
            colorbar=dict(title="p", len=0.9),
            hovertemplate=("token %{y}<br>codeword %{customdata[0]}<br>p = %{z:.3f}"
                           "<br>token entropy %{customdata[1]:.2f} bits"
                           "<br>mass outside these columns %{customdata[2]:.3f}<extra></extra>")),
            row=1, col=k + 1)
        fig.update_yaxes(autorange="reversed", row=1, col=k + 1)
    fig.update_layout(title=title, height=max(300, 22 * (n // max(kk, 1)) + 120),
                      margin=dict(l=50, r=20, t=70, b=40))
    return fig


def entropy_figure(probs: torch.Tensor, title: str = "Per-token entropy and effective codewords"):
    """Plotly bars: entropy (bits) per token with the effective number of codewords on hover."""
    # plotly only for figures: analysis/ imports without it (the GPU machines have none)
    import plotly.graph_objects as go

    stats = token_stats(probs)
    n = stats.entropy_bits.shape[0]
    fig = go.Figure()
    fig.add_trace(go.Bar(
        x=list(range(n)), y=stats.entropy_bits.tolist(), name="entropy (bits)",
        customdata=np.stack([stats.effective.numpy(), stats.top_index.numpy(),
                             stats.top_prob.numpy()], -1),
        hovertemplate=("token %{x}<br>entropy %{y:.2f} bits<br>effective codewords "
                       "%{customdata[0]:.2f}<br>top codeword %{customdata[1]} "
                       "(p=%{customdata[2]:.3f})<extra></extra>")))
    fig.add_trace(go.Scatter(x=list(range(n)), y=stats.effective.tolist(), name="effective codewords",
                             mode="lines+markers", yaxis="y2",
                             hovertemplate="token %{x}<br>effective %{y:.2f}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="token index", yaxis_title="entropy (bits)",
                      yaxis2=dict(title="effective codewords", overlaying="y", side="right"),
                      height=320, margin=dict(l=50, r=60, t=50, b=40),
                      legend=dict(orientation="h", y=1.12, x=0.5, xanchor="center"))
    return fig


@dataclass
class Usage:
    """Codebook usage over a set of images, per codebook group."""

    hard: torch.Tensor        # K×V: how often each codeword is a token's argmax / hard index
    soft: Optional[torch.Tensor]  # K×V: summed posterior mass (SoftVQ only)
    num_images: int

    @property
    def num_codebooks(self) -> int:
        return self.hard.shape[0]

    def used_fraction(self) -> list[float]:
        return [float((row > 0).float().mean()) for row in self.hard]

    def perplexity(self) -> list[float]:
        """exp(entropy) of the hard-usage distribution of each codebook."""
        return [float(effective_codewords(row.float().unsqueeze(0))[0]) if row.sum() > 0 else 0.0
                for row in self.hard]

    def summary(self) -> list[dict]:
        v = self.hard.shape[1]
        return [{"codebook": k, "codewords": v, "used": int((self.hard[k] > 0).sum()),
                 "used %": round(100 * self.used_fraction()[k], 1),
                 "perplexity": round(self.perplexity()[k], 2)} for k in range(self.num_codebooks)]


def codebook_usage(indices: torch.Tensor, codebook_size: int, num_codebooks: int = 1,
                   probs: Optional[torch.Tensor] = None) -> Usage:
    """Usage from token-order indices B×N (and SoftVQ posteriors B×N×V when given)."""
    if not codebook_size or indices is None:
        raise ValueError("this tokenizer has continuous tokens and no codebook (e.g. MAETok): "
                         "there is no codebook usage to count")
    if indices.dim() == 1:
        indices = indices.unsqueeze(0)
    b, n = indices.shape
    groups = torch.tensor(group_of_tokens(n, num_codebooks))
    hard = torch.zeros(num_codebooks, codebook_size, dtype=torch.long)
    soft = torch.zeros(num_codebooks, codebook_size) if probs is not None else None
    for k in range(num_codebooks):
        ids = indices[:, groups == k].reshape(-1).long()
        hard[k] = torch.bincount(ids, minlength=codebook_size)[:codebook_size]
        if probs is not None:
            soft[k] = probs[:, groups == k].float().sum((0, 1))
    return Usage(hard=hard, soft=soft, num_images=b)


def usage_figure(usage: Usage, title: Optional[str] = None):
    """Plotly bars of codeword usage (sorted by frequency), one trace per codebook."""
    # plotly only for figures: analysis/ imports without it (the GPU machines have none)
    import plotly.graph_objects as go

    fig = go.Figure()
    for k in range(usage.num_codebooks):
        counts = usage.hard[k].float()
        order = torch.argsort(counts, descending=True)
        freq = (counts[order] / counts.sum().clamp_min(1)).tolist()
        custom = [[int(i)] + ([float(usage.soft[k][i] / usage.soft[k].sum().clamp_min(1e-12))]
                              if usage.soft is not None else [float("nan")]) for i in order]
        fig.add_trace(go.Bar(
            x=list(range(len(freq))), y=freq, name=f"codebook {k}", customdata=custom,
            hovertemplate=("rank %{x}<br>codeword %{customdata[0]}<br>argmax share %{y:.4f}"
                           + ("<br>soft mass share %{customdata[1]:.4f}" if usage.soft is not None
                              else "") + "<extra>codebook " + str(k) + "</extra>")))
    used = ", ".join(f"cb{s['codebook']}: {s['used']}/{s['codewords']} used, "
                     f"perplexity {s['perplexity']}" for s in usage.summary())
    fig.update_layout(title=title or f"Codebook usage over {usage.num_images} images ({used})",
                      xaxis_title="codewords, most used first", yaxis_title="share of tokens (log)",
                      yaxis_type="log", barmode="overlay", height=330,
                      margin=dict(l=50, r=20, t=60, b=40))
    return fig


def categorical_colorscale(num: int) -> list:
    """A stepped plotly colorscale giving categories 0..num-1 (as z values) distinct flat colours
    from a 24-colour qualitative palette (cycled past 24): ids are names, not quantities."""
    # plotly only for figures: analysis/ imports without it (the GPU machines have none)
    from plotly.colors import qualitative

    palette = qualitative.Dark24
    num = max(1, int(num))
    scale = []
    for c in range(num):
        color = palette[c % len(palette)]
        scale += [[c / num, color], [(c + 1) / num, color]]
    return scale


def indices_figure(indices: torch.Tensor, usage: Optional[Usage] = None,
                   title: str = "Hard token indices", num_codebooks: Optional[int] = None):
    """Plotly grid of one image's token indices (16 per row), each cell labelled with its codeword
    id and coloured by id on a categorical scale (equal ids share a colour, no order implied).
    With a dataset ``usage``, hover gives each token's codeword share **in its own codebook**
    (token n uses codebook n // (N/K))."""
    # plotly only for figures: analysis/ imports without it (the GPU machines have none)
    import plotly.graph_objects as go

    if indices.dim() == 2:
        indices = indices[0]
    ids = indices.long().tolist()
    n = len(ids)
    k = num_codebooks or (usage.num_codebooks if usage is not None else 1)
    groups = group_of_tokens(n, k)
    if usage is not None:
        if usage.num_codebooks != k:
            raise ValueError(f"usage has {usage.num_codebooks} codebooks, the tokens {k}")
        totals = usage.hard.sum(1).clamp_min(1)
        share = [float(usage.hard[groups[i]][c] / totals[groups[i]]) for i, c in enumerate(ids)]
    else:
        share = [float("nan")] * n
    distinct = sorted(set(ids))
    category = {c: j for j, c in enumerate(distinct)}
    cols = min(n, 16)
    rows = int(math.ceil(n / cols))
    z = np.full((rows, cols), np.nan)
    text = [["" for _ in range(cols)] for _ in range(rows)]
    custom = np.full((rows, cols, 4), np.nan)
    for i, c in enumerate(ids):
        r, col = divmod(i, cols)
        z[r, col] = category[c] + 0.5
        text[r][col] = str(c)
        custom[r, col] = (i, c, groups[i], share[i])
    fig = go.Figure(go.Heatmap(
        z=z, text=text, texttemplate="%{text}", zmin=0, zmax=len(distinct),
        colorscale=categorical_colorscale(len(distinct)), showscale=False, customdata=custom,
        xgap=2, ygap=2,
        hovertemplate=("token %{customdata[0]}<br>codeword %{customdata[1]} of codebook "
                       "%{customdata[2]}<br>share of that codebook's tokens over the dataset "
                       "%{customdata[3]:.4f}<extra></extra>")))
    fig.update_yaxes(autorange="reversed", title="row", dtick=1)
    fig.update_xaxes(title="column (token = 16·row + column)", dtick=1)
    fig.update_layout(title=title + f" ({len(distinct)} distinct codewords; colours are categories)",
                      height=120 + 50 * rows, margin=dict(l=50, r=20, t=50, b=40))
    return fig
