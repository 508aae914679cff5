"""Per-token ablation, token subsets, swaps and interpolation for 1D tokenizers.

Every function takes a :class:`~softvq_demo.models.base.Tokenizer` (or its latents) and returns
tensors, numbers or plotly figures, so it works the same from a notebook, a script or the app.
Images are B×3×H×W in [-1, 1]; latents are N×D for one image (or B×N×D for a batch). Encoding and
decoding in batches is :mod:`.codec`'s; turning maps into pictures is :mod:`.pictures`'.

The central operation is :func:`ablate_tokens`: decode the image N times, each time with one token
replaced (by zero, the dataset mean, noise or another image's token), in batched decoder passes,
and measure how much each token changes the reconstruction.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Sequence, Union

import torch

from ..device import module_device
from .baseline import DEFAULT_BASELINE, Baseline, default_baseline
from .codec import decode, encode, sync

REPLACEMENTS = ("zero", "mean", "noise", "other")
REPLACEMENT_LABELS = {
    "zero": "zero vector",
    "mean": "per-position dataset mean token",
    "noise": "Gaussian noise",
    "other": "another image's token",
}

ProgressFn = Optional[Callable[[float, str], None]]


# --------------------------------------------------------------------------- replacements
def mean_latents(tok, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """The dataset-mean token per position (N×D), from a set of images."""
    return encode(tok, images, batch_size).latents.mean(0)


def replacement_tokens(latents: torch.Tensor, mode: str, *, mean: Optional[torch.Tensor] = None,
                       other: Optional[torch.Tensor] = None, seed: int = 0,
                       noise_scale: Optional[float] = None) -> torch.Tensor:
    """What each token is replaced with when it is ablated: an N×D tensor.

    mode: ``zero``; ``mean`` (``mean`` N×D required: the dataset mean token of each position);
    ``noise`` (Gaussian with the latents' own per-dimension mean and spread, or ``noise_scale``);
    ``other`` (``other`` N×D: another image's latents, token i replaced by its token i).
    """
    if latents.dim() != 2:
        raise ValueError(f"expected one image's latents N×D, got {tuple(latents.shape)}")
    if mode == "zero":
        return torch.zeros_like(latents)
    if mode == "mean":
        if mean is None:
            raise ValueError("mode 'mean' needs the dataset mean latents")
        return _check_like(mean, latents, "mean latents").to(latents.dtype)
    if mode == "noise":
        gen = torch.Generator().manual_seed(int(seed))
        noise = torch.randn(latents.shape, generator=gen, dtype=torch.float32)
        if noise_scale is not None:
            return (noise * float(noise_scale)).to(latents.dtype)
        mu = latents.float().mean(0, keepdim=True)
        sd = latents.float().std(0, keepdim=True).clamp_min(1e-6)
        return (mu + sd * noise).to(latents.dtype)
    if mode == "other":
        if other is None:
            raise ValueError("mode 'other' needs a second image's latents")
        return _check_like(other, latents, "other image's latents").to(latents.dtype)
    raise ValueError(f"unknown replacement {mode!r}; choose one of {', '.join(REPLACEMENTS)}")


def _check_like(t: torch.Tensor, ref: torch.Tensor, what: str) -> torch.Tensor:
    if t.dim() == 3 and t.shape[0] == 1:
        t = t[0]
    if tuple(t.shape) != tuple(ref.shape):
        raise ValueError(f"{what} have shape {tuple(t.shape)}, expected {tuple(ref.shape)} "
                         "(same tokenizer?)")
    return t.to(ref.device)


def _check_indices(indices: Iterable[int], n: int) -> list[int]:
    out = []
    for i in indices:
        i = int(i)
        if not 0 <= i < n:
            raise ValueError(f"token index {i} out of range: this tokenizer has tokens 0..{n - 1}")
        out.append(i)
    return out


def ablated_latents(latents: torch.Tensor, replacement: torch.Tensor,
                    indices: Optional[Sequence[int]] = None) -> torch.Tensor:
    """A batch K×N×D where row k is ``latents`` with token ``indices[k]`` replaced (all by default)."""
    n = latents.shape[0]
    idx = list(range(n)) if indices is None else _check_indices(indices, n)
    batch = latents.unsqueeze(0).repeat(len(idx), 1, 1)
    rows = torch.arange(len(idx))
    cols = torch.tensor(idx, dtype=torch.long)
    batch[rows, cols] = replacement[cols].to(batch.dtype)
    return batch


def replace_tokens(latents: torch.Tensor, replacement: torch.Tensor,
                   indices: Sequence[int]) -> torch.Tensor:
    """``latents`` (N×D) with every token in ``indices`` replaced at once."""
    out = latents.clone()
    idx = _check_indices(indices, latents.shape[0])
    if idx:
        out[idx] = replacement[idx].to(out.dtype)
    return out


def keep_tokens(latents: torch.Tensor, replacement: torch.Tensor, keep: Sequence[int]) -> torch.Tensor:
    """Keep only the tokens in ``keep``; every other token gets its replacement."""
    n = latents.shape[0]
    keep_set = set(_check_indices(keep, n))
    return replace_tokens(latents, replacement, [i for i in range(n) if i not in keep_set])


# --------------------------------------------------------------------------- ablation
def diff_maps(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-pixel mean absolute difference over channels, in [0, 1] pixel units: K×H×W."""
    return ((images - reference).abs().mean(1) / 2.0).float()


@dataclass
class AblationResult:
    """Result of :func:`ablate_tokens` (all CPU float32)."""

    latents: torch.Tensor        # N×D, the image's latents
    replacement: torch.Tensor    # N×D, what each token was replaced with
    mode: str
    base: torch.Tensor           # 3×H×W, reconstruction with every token intact
    ablated: torch.Tensor        # N×3×H×W, reconstruction with token i replaced
    maps: torch.Tensor           # N×H×W, |ablated_i − base| averaged over channels, [0, 1] units
    effect: torch.Tensor         # N, mean of maps[i]: how much token i changes the image
    seconds: float = 0.0
    extras: dict = field(default_factory=dict)
    baseline_label: str = ""     # what the ablated tokens became, in words (for figure captions)

    @property
    def num_tokens(self) -> int:
        return self.latents.shape[0]

    def ranking(self) -> list[int]:
        """Token indices by decreasing effect."""
        return [int(i) for i in torch.argsort(self.effect, descending=True)]


def ablate_tokens(tok, latents: torch.Tensor, mode: str = DEFAULT_BASELINE, *,
                  mean: Optional[Union[torch.Tensor, Baseline]] = None,
                  other: Optional[torch.Tensor] = None, seed: int = 0, batch_size: int = 64,
                  base: Optional[torch.Tensor] = None) -> AblationResult:
    """Decode with each token replaced in turn, in batched passes; one row per token.

    ``latents``: N×D (one image). ``base``: its plain reconstruction when already computed.
    ``mode`` defaults to the one documented baseline (:mod:`.baseline`): ``"mean"`` with ``mean``
    None uses :func:`~.baseline.default_baseline`; ``mean`` may be a tensor or a Baseline.
    """
    if latents.dim() == 3:
        if latents.shape[0] != 1:
            raise ValueError("ablate_tokens works on one image's latents at a time")
        latents = latents[0]
    latents = latents.float().cpu()
    label = f"baseline: {REPLACEMENT_LABELS.get(mode, mode)}"
    if mode == "mean":
        if mean is None:
            mean = default_baseline(tok)
        if isinstance(mean, Baseline):
            label, mean = mean.label, mean.tokens
        else:
            label = "baseline: per-position mean token given by the caller"
    repl = replacement_tokens(latents, mode, mean=mean, other=other, seed=seed)
    dev = module_device(tok)
    sync(dev)
    t0 = time.perf_counter()
    batch = ablated_latents(latents, repl)
    if base is None:
        batch = torch.cat([latents.unsqueeze(0), batch])
    images = decode(tok, batch, batch_size=batch_size)
    sync(dev)
    seconds = time.perf_counter() - t0
    if base is None:
        base, images = images[0], images[1:]
    base = base.float().cpu()
    maps = diff_maps(images, base.unsqueeze(0))
    effect = maps.flatten(1).mean(1)
    return AblationResult(latents=latents, replacement=repl, mode=mode, base=base, ablated=images,
                          maps=maps, effect=effect, seconds=seconds, baseline_label=label)


def reconstruct_subset(tok, latents: torch.Tensor, replacement: torch.Tensor,
                       keep: Sequence[int]) -> torch.Tensor:
    """Decode keeping only ``keep`` tokens (the rest replaced); returns 3×H×W."""
    return decode(tok, keep_tokens(latents, replacement, keep))[0]


def top_k_tokens(effect: torch.Tensor, k: int) -> list[int]:
    n = effect.shape[0]
    k = _check_k(k, n)
    return sorted(int(i) for i in torch.argsort(effect, descending=True)[:k])


def first_k_tokens(n: int, k: int) -> list[int]:
    return list(range(_check_k(k, n)))


def _check_k(k, n: int) -> int:
    k = int(k)
    if not 0 <= k <= n:
        raise ValueError(f"k = {k} out of range: choose 0..{n}")
    return k


def k_sweep(tok, latents: torch.Tensor, replacement: torch.Tensor, order: Sequence[int],
            ks: Sequence[int], reference: Optional[torch.Tensor] = None,
            batch_size: int = 32) -> dict[str, list[float]]:
    """Reconstruction error when keeping the first ``k`` tokens of ``order``, for each k.

    ``reference`` (3×H×W) defaults to the full reconstruction. Returns {"k": [...], "mae": [...]}.
    """
    n = latents.shape[0]
    order = _check_indices(order, n)
    batch = torch.stack([keep_tokens(latents, replacement, order[:_check_k(k, n)]) for k in ks])
    images = decode(tok, batch, batch_size=batch_size)
    if reference is None:
        reference = decode(tok, latents)[0]
    mae = diff_maps(images, reference.unsqueeze(0)).flatten(1).mean(1)
    return {"k": [int(k) for k in ks], "mae": [float(m) for m in mae]}


def swap_tokens(latents_a: torch.Tensor, latents_b: torch.Tensor,
                indices: Sequence[int]) -> torch.Tensor:
    """A's latents with the tokens in ``indices`` taken from B."""
    if tuple(latents_a.shape) != tuple(latents_b.shape):
        raise ValueError(f"latent shapes differ: {tuple(latents_a.shape)} vs {tuple(latents_b.shape)}")
    return replace_tokens(latents_a, latents_b, indices)


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation per token (rows of N×D), falling back to lerp for parallel rows."""
    an = a / a.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    bn = b / b.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    dot = (an * bn).sum(-1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    lerp = (1 - t) * a + t * b
    sl = (torch.sin((1 - t) * omega) / so) * a + (torch.sin(t * omega) / so) * b
    return torch.where(so.abs() < 1e-4, lerp, sl)


def interpolate_latents(latents_a: torch.Tensor, latents_b: torch.Tensor, steps: int = 5,
                        method: str = "linear") -> tuple[torch.Tensor, list[float]]:
    """``steps`` latents from A (t=0) to B (t=1). Returns (steps×N×D, ts)."""
    steps = int(steps)
    if not 2 <= steps <= 64:
        raise ValueError(f"steps = {steps} out of range: choose 2..64")
    if tuple(latents_a.shape) != tuple(latents_b.shape):
        raise ValueError(f"latent shapes differ: {tuple(latents_a.shape)} vs {tuple(latents_b.shape)}")
    ts = [i / (steps - 1) for i in range(steps)]
    if method == "linear":
        out = [(1 - t) * latents_a + t * latents_b for t in ts]
    elif method == "slerp":
        out = [slerp(latents_a.float(), latents_b.float(), t) for t in ts]
    else:
        raise ValueError(f"unknown interpolation {method!r}: use 'linear' or 'slerp'")
    return torch.stack(out), ts


# --------------------------------------------------------------------------- figures
def effect_bar_figure(effect: torch.Tensor, selected: Optional[int] = None,
                      title: str = "Effect of ablating each token", highlight: Sequence[int] = ()):
    """Plotly bar chart of per-token effects (mean |Δ| in pixel units)."""
    # plotly only for figures: analysis/ imports without it (the GPU machines have none)
    import plotly.graph_objects as go

    vals = [float(v) for v in effect]
    n = len(vals)
    hl = set(int(i) for i in highlight)
    colors = ["#d62728" if i == selected else "#ff7f0e" if i in hl else "#1f77b4" for i in range(n)]
    ranks = {int(t): r + 1 for r, t in enumerate(torch.argsort(torch.as_tensor(vals), descending=True))}
    fig = go.Figure(go.Bar(
        x=list(range(n)), y=vals, marker_color=colors,
        customdata=[[ranks[i]] for i in range(n)],
        hovertemplate="token %{x}<br>mean |Δ| %{y:.4f}<br>rank %{customdata[0]}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="token index", yaxis_title="mean |Δ pixel| (0–1)",
                      height=320, margin=dict(l=50, r=20, t=50, b=40), bargap=0.15)
    fig.update_xaxes(dtick=1 if n <= 16 else 2 if n <= 32 else max(1, n // 16))
    return fig


def sweep_figure(curves: dict[str, dict[str, list[float]]], title: str = "Keeping k tokens"):
    """Plotly line chart of error versus k for several orders (e.g. top-k, first-k)."""
    # plotly only for figures: analysis/ imports without it (the GPU machines have none)
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, c in curves.items():
        fig.add_trace(go.Scatter(x=c["k"], y=c["mae"], mode="lines+markers", name=name,
                                 hovertemplate="k=%{x}<br>mean |Δ| %{y:.4f}<extra>" + name + "</extra>"))
    fig.update_layout(title=title, xaxis_title="tokens kept (k)",
                      yaxis_title="mean |Δ| vs full reconstruction", height=300,
                      margin=dict(l=50, r=20, t=50, b=40))
    return fig
