"""The ablation baseline: what an ablated token is replaced with, the one default of library and app.

Default (:data:`DEFAULT_BASELINE` = ``"mean"``): the **per-position dataset mean token** — for each
token index n, the mean of token n over :data:`BASELINE_IMAGES` (256) images of the textscenes
*train* split (seed 0, rendered at the tokenizer's own size). The train split never shares an
image with the held-out split the analyses are measured on. Replacing a token by its position's
mean removes what this image put there while keeping the decoder's input in distribution; zero is
often far outside it (a mean token's norm is smaller than a real token's — the mean of many
directions — and :class:`Baseline` records both norms so a figure can say so).

Every analysis result that ablates carries its :class:`Baseline` (``.label`` for figures), so a
figure always says which baseline it used.
"""
from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import Optional

import torch

from ..data import textscenes as ts
from .codec import encode

DEFAULT_BASELINE = "mean"
BASELINES = ("mean", "zero")
BASELINE_IMAGES = 256
BASELINE_SPLIT = "train"


@dataclass
class Baseline:
    """What ablated tokens are replaced with, and where it came from.

    tokens: N×D replacement (row n replaces token n). source: the data in words, e.g. "per-position
    mean over 256 textscenes train images (128 px)". token_norm / baseline_norm: mean L2 norm of
    the real tokens in that data and of the baseline rows (NaN when no data was used).
    """

    mode: str
    tokens: torch.Tensor
    source: str
    num_images: int = 0
    token_norm: float = float("nan")
    baseline_norm: float = float("nan")

    @property
    def label(self) -> str:
        """One line for a figure caption: "baseline: per-position mean token over 256 …"."""
        if self.mode == "zero":
            return "baseline: zero vector"
        return f"baseline: {self.source}"

    def describe(self) -> dict:
        return dict(mode=self.mode, source=self.source, num_images=self.num_images,
                    token_norm=round(self.token_norm, 4), baseline_norm=round(self.baseline_norm, 4))


def zero_baseline(tok) -> Baseline:
    """Every ablated token becomes the zero vector."""
    return Baseline("zero", torch.zeros(tok.num_tokens, tok.token_dim), "zero vector")


def baseline_from_latents(latents: torch.Tensor, source: str) -> Baseline:
    """Per-position mean of M×N×D latents; ``source`` says in words what the M images were."""
    if latents.dim() != 3 or latents.shape[0] < 1:
        raise ValueError(f"expected latents M×N×D of at least one image, got {tuple(latents.shape)}")
    lat = latents.float()
    mean = lat.mean(0)
    return Baseline("mean", mean, source, num_images=int(lat.shape[0]),
                    token_norm=float(lat.norm(dim=-1).mean()), baseline_norm=float(mean.norm(dim=-1).mean()))


def baseline_from_images(tok, images: torch.Tensor, source: str) -> Baseline:
    """Per-position mean token of ``images`` (M×3×S×S in [-1, 1], at the tokenizer's size)."""
    return baseline_from_latents(encode(tok, images).latents, source)


_cache: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def default_baseline(tok, mode: str = DEFAULT_BASELINE, count: int = BASELINE_IMAGES,
                     seed: int = 0) -> Baseline:
    """The library's and the app's default baseline for ``tok`` (computed once per model object).

    ``mode="mean"``: per-position mean over ``count`` textscenes train images rendered at
    ``tok.image_size`` (about 6 s for 256 images at 128 px on one CPU core; cached).
    ``mode="zero"``: the zero vector.
    """
    if mode == "zero":
        return zero_baseline(tok)
    if mode != "mean":
        raise ValueError(f"unknown baseline {mode!r}: use one of {', '.join(BASELINES)}")
    key = (int(count), int(seed))
    with _lock:
        hit = _cache.get(tok, {}).get(key)
    if hit is not None:
        return hit
    seed_ = ts.split_seed(BASELINE_SPLIT, seed)
    size = int(tok.image_size)
    images = ts.to_tensor(ts.render_batch(seed_, range(int(count)), image_size=size)[0])
    base = baseline_from_images(
        tok, images, f"per-position mean token over {int(count)} textscenes {BASELINE_SPLIT} images "
                     f"(seed {int(seed)}, {size} px)")
    with _lock:
        _cache.setdefault(tok, {})[key] = base
    return base


def resolve(tok, baseline: Optional[object] = None) -> Baseline:
    """A :class:`Baseline` from ``None`` (the default), a mode name, an N×D tensor or a Baseline."""
    if baseline is None:
        return default_baseline(tok)
    if isinstance(baseline, Baseline):
        out = baseline
    elif isinstance(baseline, str):
        out = default_baseline(tok, baseline)
    elif isinstance(baseline, torch.Tensor):
        out = Baseline("mean", baseline.float(), "per-position mean given by the caller")
    else:
        raise TypeError(f"baseline must be None, a mode name, a tensor or a Baseline, got {type(baseline).__name__}")
    if tuple(out.tokens.shape) != (tok.num_tokens, tok.token_dim):
        raise ValueError(f"baseline has shape {tuple(out.tokens.shape)}, this tokenizer needs "
                         f"{(tok.num_tokens, tok.token_dim)}")
    return out


__all__ = ["DEFAULT_BASELINE", "BASELINES", "BASELINE_IMAGES", "Baseline", "default_baseline",
           "zero_baseline", "baseline_from_images", "baseline_from_latents", "resolve"]
