"""MaskGIT iterative decoding, with the schedule of TiTok's official ``ImageBert.generate``.

Start from all-mask; at step s of S (ratio r = (s+1)/S):
- temperature τ = randomize_temperature·(1 − r) (so the last step is greedy);
- classifier-free guidance: ``linear`` uses scale 0 on the first step (no uncond pass) and
  r_prev·guidance_scale afterwards, ``constant`` a fixed scale, both combining as
  cond + (cond − uncond)·scale; ``power-cosine`` (MDT's schedule) combines as
  uncond + (cond − uncond)·scale with scale = (g − 1)·(1 − cos(π·(s/S)^pow))/2 + 1;
- optionally (what the reported gFIDs used) divide logits by 0.5 + 0.8·(1 − r);
- draw ids ~ argmax(logits + τ·Gumbel) at masked positions, confidence = chosen logit + τ·Gumbel
  (+∞ for tokens already fixed), and re-mask the floor(N·arccos(r)/(π/2)) least confident
  (at least 1, at most masked − 1) unless it is the last step.

Upstream draws the first Gumbel noise over the whole B×N×V logits. By the Gumbel-max theorem,
argmax(l + τ·G) is a draw from softmax(l/τ), so we draw it by inverting that distribution's CDF
with one uniform number per token instead: the same distribution, with B×N random numbers rather
than B×N×V. That matters because seeds are CPU generators (the same seed gives the same draws on
any device): producing 16M CPU Gumbel numbers per step cost ~100 ms at batch 128 on an H100.
With τ = 0 (the last step, or randomize_temperature 0) both reduce to the same argmax.

The conditional and unconditional passes run as ONE forward of 2B sequences. Upstream takes the
number to re-mask from the first sample of the batch; we take it per sample, which is the same
number except after exact ties in confidence, and keeps each sample independent of its batch.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Union

import torch

from ..cancel import raise_if_cancelled
from ..device import autocast, module_device
from ..models.maskgit import GUIDANCE_DECAYS
from .settings import resolve

Labels = Union[torch.Tensor, Sequence[int], int]
Seed = Union[int, torch.Generator, None]


def _uniform(shape: torch.Size, rng: Optional[torch.Generator], device: torch.device) -> torch.Tensor:
    """U[0, 1) drawn on the RNG's own device (CPU for seeds), then moved to ``device``."""
    return torch.rand(shape, generator=rng, device=rng.device if rng is not None else device).to(device)


def _gumbel(shape: torch.Size, rng: Optional[torch.Generator], device: torch.device) -> torch.Tensor:
    """Gumbel(0, 1) noise with upstream's clamp (keeps the logs finite at u = 0 and u → 1)."""
    eps = 1e-20
    return -torch.log((-torch.log(_uniform(shape, rng, device).clamp(min=eps))).clamp(min=eps))


def sample_categorical(logits: torch.Tensor, tau: float, rng: Optional[torch.Generator]) -> torch.Tensor:
    """One draw per row from softmax(logits / τ) — the law of argmax(logits + τ·Gumbel) —
    by inverse CDF; τ = 0 gives the argmax."""
    if tau <= 0:
        return logits.argmax(dim=-1)
    cdf = torch.softmax(logits / tau, dim=-1).cumsum(dim=-1)
    u = _uniform(logits.shape[:-1] + (1,), rng, logits.device) * cdf[..., -1:]
    # First index whose cumulative mass exceeds u (right=True never picks a zero-mass code).
    return torch.searchsorted(cdf, u, right=True).clamp(max=logits.shape[-1] - 1)[..., 0]


def _cfg_scale_power_cosine(step: int, steps: int, guidance_scale: float, power: float) -> torch.Tensor:
    # fp32 tensor arithmetic, as upstream, so the scale is bit-identical.
    t = torch.tensor(step / steps, dtype=torch.float32) ** torch.tensor(power, dtype=torch.float32)
    scale_step = (1 - torch.cos(t * math.pi)) * 1 / 2
    return (guidance_scale - 1) * scale_step + 1


def resolve_options(gen, steps, guidance_scale, guidance_decay, randomize_temperature, seed):
    """(steps, scale, decay, temperature, rng): the generator's release settings under the given
    options (None = not given), checked against ``sampling.settings``; an int seed becomes a CPU
    generator. Shared by this sampler and the fast path's."""
    opts = resolve(gen, dict(steps=steps, guidance_scale=guidance_scale, guidance_decay=guidance_decay,
                             randomize_temperature=randomize_temperature))
    rng = seed if seed is None or isinstance(seed, torch.Generator) \
        else torch.Generator().manual_seed(int(seed))
    return (opts["steps"], opts["guidance_scale"], opts["guidance_decay"],
            opts["randomize_temperature"], rng)


@torch.no_grad()
def sample_maskgit(gen, labels: Labels, *, steps: Optional[int] = None,
                   guidance_scale: Optional[float] = None, guidance_decay: Optional[str] = None,
                   randomize_temperature: Optional[float] = None, seed: Seed = None,
                   progress: Optional[Callable[[int, int], None]] = None,
                   guidance_scale_pow: float = 3.0, softmax_temperature_annealing: bool = True
                   ) -> torch.Tensor:
    """Generate token ids B×N for class ``labels`` (defaults: the generator config's release
    settings). ``softmax_temperature_annealing`` is on by default because the official ImageNet
    sampling script (whose gFIDs the README reports) turns it on; the demo notebook leaves it off.
    Deterministic for a given seed (an int or a ``torch.Generator``)."""
    steps, scale, decay, temperature, rng = resolve_options(gen, steps, guidance_scale, guidance_decay,
                                                            randomize_temperature, seed)

    device = module_device(gen)
    y = torch.as_tensor([labels] if isinstance(labels, int) else labels).long().reshape(-1).to(device)
    b, n, mask_id = y.shape[0], gen.num_tokens, gen.mask_token_id
    ids = torch.full((b, n), mask_id, dtype=torch.long, device=device)
    drop = torch.cat([torch.zeros(b, dtype=torch.bool), torch.ones(b, dtype=torch.bool)]).to(device)

    cfg = scale if decay == "constant" else 0.0
    for step in range(steps):
        raise_if_cancelled()
        ratio = (step + 1) / steps
        tau = temperature * (1.0 - ratio)
        is_mask = ids == mask_id
        if decay == "power-cosine":
            cfg = _cfg_scale_power_cosine(step, steps, scale, guidance_scale_pow).to(device)

        guided = isinstance(cfg, torch.Tensor) or cfg != 0
        with autocast(device):  # bf16 on CUDA, as everywhere in the package; fp32 on CPU
            if guided:
                both = gen(ids.repeat(2, 1), y.repeat(2), drop_class=drop)
            else:
                logits = gen(ids, y)
        if guided:
            cond, uncond = both.float().chunk(2)
            if decay == "power-cosine":
                logits = uncond + (cond - uncond) * cfg
            else:
                logits = cond + (cond - uncond) * cfg
        logits = logits.float()
        if softmax_temperature_annealing:
            logits = logits / (0.5 + 0.8 * (1 - ratio))

        sampled = sample_categorical(logits, tau, rng)
        chosen = logits.gather(-1, sampled[..., None])[..., 0]
        sampled = torch.where(is_mask, sampled, ids)
        if step == steps - 1:
            ids = sampled
        else:
            chosen = torch.where(is_mask, chosen, torch.full_like(chosen, math.inf))
            confidence = chosen + tau * _gumbel(chosen.shape, rng, device) if tau > 0 else chosen
            # How many to re-mask: arccos schedule, at least 1, leaving at least one newly fixed.
            target = math.floor(n * math.acos(ratio) / (math.pi * 0.5))
            masked = is_mask.sum(dim=-1, keepdim=True)
            count = (masked - 1).clamp(max=target).clamp(min=1)
            cut_off = confidence.sort(dim=-1).values.gather(-1, count - 1)
            ids = torch.where(confidence <= cut_off, torch.full_like(sampled, mask_id), sampled)

        if decay == "linear":
            cfg = ratio * scale
        if progress is not None:
            progress(step + 1, steps)
    return ids


__all__ = ["sample_maskgit", "sample_categorical", "GUIDANCE_DECAYS"]
