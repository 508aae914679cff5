"""The prefix strip: how a 1D tokenizer spends its tokens (FlexTok-style), for any tokenizer.

Two rows of reconstructions for k = 1, 2, 4, …, N:

- **first k tokens**: ``tok.decode(latents[:, :k])`` when the tokenizer is prefix-decodable
  (``tok.prefix_decodable``, see :meth:`~softvq_demo.models.base.Tokenizer.check_token_count`);
  otherwise tokens k…N−1 are replaced by the ablation baseline and all N are decoded — the label
  says which;
- **k most important tokens**: the k highest-ranked tokens kept, the rest replaced by the baseline
  (the ranking is given, e.g. the image's own ablation effect or a dataset-level importance).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch

from .ablation import keep_tokens
from .baseline import Baseline, resolve
from .codec import decode
from .pictures import to_uint8


def doubling_ks(n: int) -> list[int]:
    """1, 2, 4, … up to ``n``, always ending with ``n``."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [int(n)]


@dataclass
class PrefixStrip:
    """Reconstructions (K×3×H×W in [-1, 1]) and a label for each, per row."""

    ks: list[int]
    first: torch.Tensor
    first_labels: list[str]
    top: torch.Tensor
    top_labels: list[str]
    prefix_decoded: bool             # True: "first k" row is a true prefix decode
    baseline: Baseline
    ranking_source: str
    notes: list[str] = field(default_factory=list)

    def rows(self) -> list[tuple[str, torch.Tensor, list[str]]]:
        first = "first k tokens" + (" (prefix decode)" if self.prefix_decoded else
                                    " (the rest → baseline)")
        return [(first, self.first, self.first_labels),
                (f"k most important ({self.ranking_source}; the rest → baseline)", self.top,
                 self.top_labels)]


@torch.no_grad()
def prefix_strip(tok, latents: torch.Tensor, ranking: Sequence[int], *, baseline=None,
                 ks: Optional[Sequence[int]] = None, ranking_source: str = "given ranking",
                 batch_size: int = 32) -> PrefixStrip:
    """Reconstructions of one image from its first k and from its k most important tokens.

    latents: N×D (or 1×N×D). ranking: the N token indices, most important first. ks: default
    :func:`doubling_ks`. baseline: as everywhere (:func:`~softvq_demo.analysis.baseline.resolve`).
    """
    if latents.dim() == 3:
        if latents.shape[0] != 1:
            raise ValueError("prefix_strip works on one image's latents")
        latents = latents[0]
    latents = latents.float().cpu()
    n = latents.shape[0]
    order = [int(i) for i in ranking]
    if sorted(order) != list(range(n)):
        raise ValueError(f"ranking must be a permutation of the {n} token indices")
    ks = doubling_ks(n) if ks is None else [int(k) for k in ks]
    if any(not 1 <= k <= n for k in ks):
        raise ValueError(f"k must be in 1..{n}")
    base = resolve(tok, baseline)
    prefix = bool(getattr(tok, "prefix_decodable", False))
    notes = []
    if prefix:
        first = []
        for k in ks:      # different lengths: one decode per k
            tok.check_token_count(k)
            first.append(decode(tok, latents[:k].unsqueeze(0), batch_size=batch_size)[0])
        first = torch.stack(first)
        first_labels = [f"first {k}" for k in ks]
    else:
        batch = torch.stack([keep_tokens(latents, base.tokens, list(range(k))) for k in ks])
        first = decode(tok, batch, batch_size=batch_size)
        first_labels = [f"first {k} (+{n - k} baseline)" if k < n else f"all {n}" for k in ks]
        notes.append(f"this {getattr(tok, 'family', '')} tokenizer cannot decode fewer than {n} "
                     f"tokens: the 'first k' row keeps tokens 0…k−1 and replaces the others with "
                     f"{'zero vector' if base.mode == 'zero' else base.source}")
    batch = torch.stack([keep_tokens(latents, base.tokens, order[:k]) for k in ks])
    top = decode(tok, batch, batch_size=batch_size)
    top_labels = [f"top {k}" if k < n else f"all {n}" for k in ks]
    return PrefixStrip(ks=ks, first=first, first_labels=first_labels, top=top, top_labels=top_labels,
                       prefix_decoded=prefix, baseline=base, ranking_source=ranking_source, notes=notes)


def strip_image(strip: PrefixStrip, pad: int = 2) -> np.ndarray:
    """Both rows tiled into one H×W×3 uint8 image (row 1: first k, row 2: top k), for a gallery."""
    rows = [strip.first, strip.top]
    k, _, h, w = strip.first.shape
    out = np.full((2 * (h + pad) + pad, k * (w + pad) + pad, 3), 255, np.uint8)
    for r, imgs in enumerate(rows):
        for c in range(k):
            y, x = pad + r * (h + pad), pad + c * (w + pad)
            out[y:y + h, x:x + w] = to_uint8(imgs[c])
    return out


__all__ = ["PrefixStrip", "prefix_strip", "strip_image", "doubling_ks"]
