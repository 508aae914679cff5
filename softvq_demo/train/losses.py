"""Losses of the four trainers (tokenizers: reconstruction, soft-VQ entropy, VQ; generators:
flow matching, masked-token cross-entropy)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def text_weight_map(mask: torch.Tensor, text_weight: float, dilate: int = 1) -> torch.Tensor:
    """B×1×H×W weights: 1 everywhere, 1 + text_weight on the word's pixels (dilated by
    ``dilate`` px so the glyph edges count too)."""
    m = mask.float()[:, None]
    if dilate > 0:
        m = F.max_pool2d(m, 2 * dilate + 1, stride=1, padding=dilate)
    return 1.0 + text_weight * m


def _image_grads(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]


def reconstruction_loss(recon: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, *,
                        text_weight: float = 4.0, l1_weight: float = 1.0, l2_weight: float = 1.0,
                        grad_weight: float = 0.0) -> dict[str, torch.Tensor]:
    """Text-weighted L1 + L2 (and optionally L1 on image gradients, which keeps glyph edges
    sharp). Images in [-1, 1]; every term is a weighted mean over pixels and channels."""
    recon, target = recon.float(), target.float()
    w = text_weight_map(mask, text_weight)
    norm = w.mean()
    diff = recon - target
    l1 = (w * diff.abs()).mean() / norm
    l2 = (w * diff.pow(2)).mean() / norm
    out = dict(l1=l1, l2=l2)
    total = l1_weight * l1 + l2_weight * l2
    if grad_weight > 0:
        gx_r, gy_r = _image_grads(recon)
        gx_t, gy_t = _image_grads(target)
        wx, wy = torch.maximum(w[..., :, 1:], w[..., :, :-1]), torch.maximum(w[..., 1:, :], w[..., :-1, :])
        grad = ((wx * (gx_r - gx_t).abs()).mean() / wx.mean()
                + (wy * (gy_r - gy_t).abs()).mean() / wy.mean()) / 2
        out["grad"] = grad
        total = total + grad_weight * grad
    with torch.no_grad():
        mse = diff.pow(2).mean()
        out["psnr"] = 10 * torch.log10(4.0 / mse.clamp_min(1e-10))
        m = mask[:, None].float()
        out["text_mse"] = (diff.pow(2) * m).sum() / (m.sum() * recon.shape[1]).clamp_min(1)
    out["rec"] = total
    return out


def entropy(p: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return -(p * torch.log(p.clamp_min(1e-12))).sum(dim)


def soft_vq_entropy_loss(probs: torch.Tensor, num_codebooks: int = 1) -> dict[str, torch.Tensor]:
    """SoftVQ's entropy regulariser on the posteriors p (B×N×V): the per-token (sample-wise)
    entropy is pushed down (confident assignments) while the entropy of the codebook-average
    posterior is pushed up (every codeword used): loss = E[H(p)] − H(E[p]), per codebook."""
    p = probs.float()
    b, n, v = p.shape
    sample = entropy(p).mean()
    groups = p.reshape(b, num_codebooks, n // num_codebooks, v)
    avg = groups.mean(dim=(0, 2))                                # K×V
    avg_entropy = entropy(avg).mean()
    return dict(entropy=sample - avg_entropy, sample_entropy=sample, avg_entropy=avg_entropy,
                perplexity=torch.exp(avg_entropy))


def vq_losses(z: torch.Tensor, codes: torch.Tensor, beta: float) -> dict[str, torch.Tensor]:
    """VQ-VAE codebook loss ‖sg(z) − e‖² and commitment β‖z − sg(e)‖² (means over elements)."""
    codebook = F.mse_loss(codes, z.detach())
    commit = F.mse_loss(z, codes.detach())
    return dict(codebook=codebook, commit=commit, vq=codebook + beta * commit)


def flow_matching_loss(model, x: torch.Tensor, y: torch.Tensor, *, num_classes: int,
                       label_dropout: float = 0.1, generator=None) -> dict[str, torch.Tensor]:
    """Linear path x_t = (1 − t)·x + t·ε (t = 0 data, t = 1 noise), velocity target ε − x
    (what ``sampling/flow.py`` integrates from t = 1 to 0); labels dropped to the null class
    ``num_classes`` with probability ``label_dropout`` for classifier-free guidance."""
    b = x.shape[0]
    dev = x.device
    t = torch.rand(b, device=dev, generator=generator)
    eps = torch.randn(x.shape, device=dev, generator=generator)
    tt = t.view(b, *([1] * (x.ndim - 1)))
    xt = (1 - tt) * x + tt * eps
    drop = torch.rand(b, device=dev, generator=generator) < label_dropout
    y = torch.where(drop, torch.full_like(y, num_classes), y)
    v = model(xt, t, y)
    loss = (v.float() - (eps - x)).pow(2).mean()
    return dict(loss=loss, fm=loss)


def cosine_mask(ids: torch.Tensor, generator=None) -> torch.Tensor:
    """MaskGIT's cosine schedule: mask ratio r = cos(π/2·u), u ~ U(0, 1); ceil(r·N) positions
    (at least one) chosen uniformly per sequence. Returns a bool mask B×N."""
    b, n = ids.shape
    dev = ids.device
    u = torch.rand(b, device=dev, generator=generator)
    count = torch.ceil(torch.cos(u * math.pi / 2) * n).clamp(1, n)
    order = torch.rand(b, n, device=dev, generator=generator).argsort(dim=1).argsort(dim=1)
    return order < count[:, None]


def masked_token_loss(model, ids: torch.Tensor, y: torch.Tensor, *, mask_id: int,
                      label_dropout: float = 0.1, label_smoothing: float = 0.1,
                      generator=None) -> dict[str, torch.Tensor]:
    """Cross-entropy on the masked positions only (as MaskGIT/TiTok), class token dropped with
    probability ``label_dropout`` (the "no class" token) for classifier-free guidance."""
    mask = cosine_mask(ids, generator)
    inputs = torch.where(mask, torch.full_like(ids, mask_id), ids)
    drop = torch.rand(ids.shape[0], device=ids.device, generator=generator) < label_dropout
    logits = model(inputs, y, drop_class=drop).float()
    target = ids[mask]
    picked = logits[mask]
    loss = F.cross_entropy(picked, target, label_smoothing=label_smoothing)
    with torch.no_grad():
        acc = (picked.argmax(-1) == target).float().mean()
    return dict(loss=loss, ce=loss, acc=acc)
