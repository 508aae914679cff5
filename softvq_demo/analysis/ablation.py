"""Per-token ablation, token subsets, swaps and interpolation for 1D tokenizers.

Every function takes a :class:`~softvq_demo.models.base.Tokenizer` (or its latents) and returns
tensors, numbers or plotly figures, so it works the same from a notebook, a script or the app.
Images are B×3×H×W in [-1, 1]; latents are N×D for one image (or B×N×D for a batch).

The central operation is :func:`ablate_tokens`: decode the image N times, each time with one token
replaced (by zero, the dataset mean, noise or another image's token), in batched decoder passes,
and measure how much each token changes the reconstruction.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Sequence, Union

import numpy as np
import torch

from ..cancel import raise_if_cancelled
from ..device import autocast, module_device

REPLACEMENTS = ("zero", "mean", "noise", "other")
REPLACEMENT_LABELS = {
    "zero": "zero vector",
    "mean": "dataset mean token",
    "noise": "Gaussian noise",
    "other": "another image's token",
}

ProgressFn = Optional[Callable[[float, str], None]]


# --------------------------------------------------------------------------- encode / decode
def _device(tok: torch.nn.Module) -> torch.device:
    return module_device(tok)


def _as_batch(images: torch.Tensor) -> torch.Tensor:
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images B×3×H×W (or 3×H×W), got {tuple(images.shape)}")
    return images


@torch.no_grad()
def encode(tok, images: torch.Tensor, batch_size: int = 64):
    """Encode B×3×H×W images in [-1, 1]; returns an ``Encoded`` with float32 CPU tensors."""
    from ..models.base import Encoded

    images = _as_batch(images)
    dev = _device(tok)
    parts = []
    for start in range(0, images.shape[0], batch_size):
        raise_if_cancelled()
        chunk = images[start:start + batch_size].to(dev, dtype=torch.float32)
        with autocast(dev):
            enc = tok.encode(chunk)
        parts.append(enc)
    if len(parts) == 1:
        enc = parts[0]
        return Encoded(latents=enc.latents.float().cpu(),
                       probs=None if enc.probs is None else enc.probs.float().cpu(),
                       indices=None if enc.indices is None else enc.indices.cpu(),
                       extras={k: v.cpu() for k, v in (enc.extras or {}).items()
                               if isinstance(v, torch.Tensor)})

    def cat(name):
        vals = [getattr(p, name) for p in parts]
        if any(v is None for v in vals):
            return None
        out = torch.cat([v.cpu() for v in vals])
        return out if name == "indices" else out.float()

    return Encoded(latents=cat("latents"), probs=cat("probs"), indices=cat("indices"))


@torch.no_grad()
def decode(tok, latents: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """Decode B×N×D latents (N×D for one image) in chunks; returns float32 CPU images in [-1, 1]."""
    if latents.dim() == 2:
        latents = latents.unsqueeze(0)
    dev = _device(tok)
    dtype = _param_dtype(tok)
    out = []
    for start in range(0, latents.shape[0], batch_size):
        raise_if_cancelled()
        chunk = latents[start:start + batch_size].to(dev)
        if chunk.is_floating_point():
            chunk = chunk.to(dtype if dtype.is_floating_point else torch.float32)
        with autocast(dev):
            img = tok.decode(chunk)
        out.append(img.float().cpu())
    return torch.cat(out).clamp(-1, 1)


def _param_dtype(tok) -> torch.dtype:
    for p in tok.parameters():
        return p.dtype
    return torch.float32


def reconstruct(tok, images: torch.Tensor) -> tuple[torch.Tensor, object, dict[str, float]]:
    """Encode + decode with timings. Returns (reconstruction B×3×H×W, Encoded, timings in s)."""
    dev = _device(tok)
    _sync(dev)
    t0 = time.perf_counter()
    enc = encode(tok, images)
    _sync(dev)
    t1 = time.perf_counter()
    rec = decode(tok, enc.latents)
    _sync(dev)
    t2 = time.perf_counter()
    return rec, enc, {"encode_s": t1 - t0, "decode_s": t2 - t1, "total_s": t2 - t0}


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def compression_ratio(tok, image_size: Optional[int] = None) -> tuple[float, str]:
    """Raw RGB bits / token bits; returns (ratio, explanation).

    Discrete tokens cost ``log2(codebook_size)`` bits each; continuous tokens are counted at 16 bits
    per dimension (bf16), the usual convention for continuous latents.
    """
    size = image_size or tok.image_size
    raw_bits = size * size * 3 * 8
    n = tok.num_tokens
    if getattr(tok, "is_discrete", False) and tok.codebook_size:
        bits = n * math.log2(tok.codebook_size)
        how = f"{n} tokens × log2({tok.codebook_size}) = {bits:.0f} bits"
    else:
        bits = n * tok.token_dim * 16
        how = f"{n} tokens × {tok.token_dim} dims × 16 bits = {bits:.0f} bits"
    return raw_bits / bits, f"{size}×{size}×3×8 = {raw_bits} bits / ({how})"


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

    @property
    def num_tokens(self) -> int:
        return self.latents.shape[0]

    def ranking(self) -> list[int]:
        """Token indices by decreasing effect."""
        return [int(i) for i in torch.argsort(self.effect, descending=True)]


def ablate_tokens(tok, latents: torch.Tensor, mode: str = "zero", *,
                  mean: Optional[torch.Tensor] = None, other: Optional[torch.Tensor] = None,
                  seed: int = 0, batch_size: int = 64,
                  base: Optional[torch.Tensor] = None) -> AblationResult:
    """Decode with each token replaced in turn, in batched passes; one row per token.

    ``latents``: N×D (one image). ``base``: its plain reconstruction when already computed.
    """
    if latents.dim() == 3:
        if latents.shape[0] != 1:
            raise ValueError("ablate_tokens works on one image's latents at a time")
        latents = latents[0]
    latents = latents.float().cpu()
    repl = replacement_tokens(latents, mode, mean=mean, other=other, seed=seed)
    dev = _device(tok)
    _sync(dev)
    t0 = time.perf_counter()
    batch = ablated_latents(latents, repl)
    if base is None:
        batch = torch.cat([latents.unsqueeze(0), batch])
    images = decode(tok, batch, batch_size=batch_size)
    _sync(dev)
    seconds = time.perf_counter() - t0
    if base is None:
        base, images = images[0], images[1:]
    base = base.float().cpu()
    maps = diff_maps(images, base.unsqueeze(0))
    effect = maps.flatten(1).mean(1)
    return AblationResult(latents=latents, replacement=repl, mode=mode, base=base, ablated=images,
                          maps=maps, effect=effect, seconds=seconds)


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


# --------------------------------------------------------------------------- pictures
# A perceptual colormap (inferno), 9 anchors interpolated linearly: no matplotlib needed.
_INFERNO = np.array([
    [0, 0, 4], [31, 12, 72], [85, 15, 109], [136, 34, 106], [186, 54, 85],
    [227, 89, 51], [249, 140, 10], [249, 201, 50], [252, 255, 164]], dtype=np.float32)


def colorize(values: Union[np.ndarray, torch.Tensor], vmax: Optional[float] = None) -> np.ndarray:
    """H×W values → H×W×3 uint8 inferno image; 0 is black, ``vmax`` (default: the max) is yellow."""
    v = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    v = v.astype(np.float32)
    top = float(vmax) if vmax is not None else float(v.max()) if v.size else 1.0
    x = np.clip(v / max(top, 1e-8), 0, 1) * (len(_INFERNO) - 1)
    lo = np.floor(x).astype(int)
    hi = np.minimum(lo + 1, len(_INFERNO) - 1)
    frac = (x - lo)[..., None]
    rgb = _INFERNO[lo] * (1 - frac) + _INFERNO[hi] * frac
    return rgb.round().astype(np.uint8)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """3×H×W in [-1, 1] → H×W×3 uint8."""
    if image.dim() == 4:
        image = image[0]
    arr = ((image.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte()
    return arr.permute(1, 2, 0).numpy()


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """Blend a colorized heat map over an H×W×3 uint8 image."""
    return (image.astype(np.float32) * (1 - alpha) + heat.astype(np.float32) * alpha).round().astype(np.uint8)


def upscale(image: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement (keeps pixels crisp in the UI)."""
    factor = max(1, int(factor))
    return image.repeat(factor, 0).repeat(factor, 1) if factor > 1 else image


def map_grid(maps: torch.Tensor, columns: Optional[int] = None, pad: int = 2,
             vmax: Optional[float] = None, tile: Optional[int] = None) -> np.ndarray:
    """Tile K×H×W difference maps (shared colour scale) into one uint8 image, row-major.
    ``tile``: shrink each map to tile×tile first (max-pooling, so small hot spots stay visible)."""
    if tile is not None and tile < maps.shape[-1]:
        maps = torch.nn.functional.adaptive_max_pool2d(maps.unsqueeze(1).float(), tile)[:, 0]
    k, h, w = maps.shape
    columns = columns or int(math.ceil(math.sqrt(k)))
    rows = int(math.ceil(k / columns))
    top = float(maps.max()) if vmax is None else vmax
    grid = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, 3), 255, np.uint8)
    for i in range(k):
        r, c = divmod(i, columns)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        grid[y:y + h, x:x + w] = colorize(maps[i], top)
    return grid


def effect_bar_figure(effect: torch.Tensor, selected: Optional[int] = None,
                      title: str = "Effect of ablating each token", highlight: Sequence[int] = ()):
    """Plotly bar chart of per-token effects (mean |Δ| in pixel units)."""
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
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, c in curves.items():
        fig.add_trace(go.Scatter(x=c["k"], y=c["mae"], mode="lines+markers", name=name,
                                 hovertemplate="k=%{x}<br>mean |Δ| %{y:.4f}<extra>" + name + "</extra>"))
    fig.update_layout(title=title, xaxis_title="tokens kept (k)",
                      yaxis_title="mean |Δ| vs full reconstruction", height=300,
                      margin=dict(l=50, r=20, t=50, b=40))
    return fig
