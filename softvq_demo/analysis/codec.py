"""Batched encode / decode / reconstruct: how every tab, the evaluation and the benchmarks run a
tokenizer over images.

Images are B×3×H×W in [-1, 1] (3×H×W for one image); latents are B×N×D (N×D for one image).
Everything comes back as float32 CPU tensors, whatever device and precision the model runs in
(bf16 autocast on CUDA, fp32 on the CPU: :mod:`softvq_demo.device`).
"""
from __future__ import annotations

import math
import time
from typing import Optional

import torch
from tqdm.auto import tqdm

from ..cancel import raise_if_cancelled
from ..device import autocast, module_device
from ..models.base import Encoded


def as_batch(images: torch.Tensor) -> torch.Tensor:
    """3×H×W or B×3×H×W → B×3×H×W, with a clear message for anything else."""
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images B×3×H×W (or 3×H×W), got {tuple(images.shape)}")
    return images


def param_dtype(tok) -> torch.dtype:
    """The dtype of the model's weights (float32 when it has none)."""
    for p in tok.parameters():
        return p.dtype
    return torch.float32


def sync(dev: torch.device) -> None:
    """Wait for queued CUDA work, so that wall-clock timings mean what they say."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _batches(total: int, batch_size: int, progress: bool, desc: str):
    for start in tqdm(range(0, total, batch_size), desc=desc, unit="batch", leave=False,
                      disable=not progress):
        raise_if_cancelled()   # a cancelled event stops between batches
        yield start


@torch.no_grad()
def encode(tok, images: torch.Tensor, batch_size: int = 64, *, progress: bool = False,
           desc: str = "encode") -> Encoded:
    """Encode B×3×H×W images in [-1, 1]; returns an ``Encoded`` with float32 CPU tensors."""
    images = as_batch(images)
    dev = module_device(tok)
    parts = []
    for start in _batches(images.shape[0], batch_size, progress, desc):
        chunk = images[start:start + batch_size].to(dev, dtype=torch.float32)
        with autocast(dev):
            parts.append(tok.encode(chunk))
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
def decode(tok, latents: torch.Tensor, batch_size: int = 32, *, progress: bool = False,
           desc: str = "decode") -> torch.Tensor:
    """Decode B×N×D latents (N×D for one image) in chunks; returns float32 CPU images in [-1, 1]."""
    if latents.dim() == 2:
        latents = latents.unsqueeze(0)
    dev = module_device(tok)
    dtype = param_dtype(tok)
    out = []
    for start in _batches(latents.shape[0], batch_size, progress, desc):
        chunk = latents[start:start + batch_size].to(dev)
        if chunk.is_floating_point():
            chunk = chunk.to(dtype if dtype.is_floating_point else torch.float32)
        with autocast(dev):
            img = tok.decode(chunk)
        out.append(img.float().cpu())
    return torch.cat(out).clamp(-1, 1)


def reconstruct(tok, images: torch.Tensor) -> tuple[torch.Tensor, Encoded, dict[str, float]]:
    """Encode + decode with timings. Returns (reconstruction B×3×H×W, Encoded, timings in s)."""
    dev = module_device(tok)
    sync(dev)
    t0 = time.perf_counter()
    enc = encode(tok, images)
    sync(dev)
    t1 = time.perf_counter()
    rec = decode(tok, enc.latents)
    sync(dev)
    t2 = time.perf_counter()
    return rec, enc, {"encode_s": t1 - t0, "decode_s": t2 - t1, "total_s": t2 - t0}


@torch.no_grad()
def reconstruct_images(tok, images: torch.Tensor, batch_size: int = 32, *, progress: bool = False,
                       desc: str = "reconstruct") -> torch.Tensor:
    """Encode and decode a large set batch by batch, the latents staying on the model's device
    (only one batch alive at a time); returns the float32 CPU reconstructions in [-1, 1]."""
    images = as_batch(images)
    dev = module_device(tok)
    outs = []
    for start in _batches(images.shape[0], batch_size, progress, desc):
        x = images[start:start + batch_size].to(dev)
        with autocast(dev):
            y = tok.decode(tok.encode(x).latents)
        outs.append(y.float().clamp(-1, 1).cpu())
    return torch.cat(outs)


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
