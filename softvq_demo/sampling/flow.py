"""Flow-matching samplers for SiT: ODE (Euler, Heun) and SDE (Euler–Maruyama).

Time runs from t=1 (noise) to t=0 (data), as in the official SoftVQ/REPA samplers. The state is
kept in float64 and the network is called in the noise's dtype, like the official code, so the
results match it to rounding. Classifier-free guidance evaluates the conditional and
unconditional halves in ONE batched call (the official generation script duplicates the batch
twice and so does twice the work). The time grid is built on the host, so the loop never waits
on the GPU to decide whether a step is guided.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from ..cancel import raise_if_cancelled
from .settings import check

PATHS = ("linear", "cosine")


def path_coefficients(t: torch.Tensor, path: str):
    """alpha_t, sigma_t and their time derivatives for x_t = alpha_t·x + sigma_t·eps."""
    if path == "linear":
        return 1 - t, t, -torch.ones_like(t), torch.ones_like(t)
    if path == "cosine":
        half_pi = math.pi / 2
        return (torch.cos(t * half_pi), torch.sin(t * half_pi),
                -half_pi * torch.sin(t * half_pi), half_pi * torch.cos(t * half_pi))
    raise ValueError(f"unknown path {path!r}: use one of {', '.join(PATHS)}")


def score_from_velocity(v: torch.Tensor, x: torch.Tensor, t: float, path: str) -> torch.Tensor:
    tt = torch.full((), t, dtype=x.dtype, device=x.device)
    alpha, sigma, d_alpha, d_sigma = path_coefficients(tt, path)
    ratio = alpha / d_alpha
    return (ratio * v - x) / (sigma ** 2 - ratio * d_sigma * sigma)


def time_grid(steps: int, method: str) -> list[float]:
    if method == "sde":  # stop short of 0 for the stochastic steps, then one mean step to 0
        grid = torch.linspace(1.0, 0.04, steps, dtype=torch.float64).tolist()
        return grid + [0.0]
    return torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64).tolist()


def validate_options(steps: int, method: str, cfg_scale: float, guidance_low: float,
                     guidance_high: float, path: str) -> None:
    """The SiT sampler's options against :mod:`.settings` (one range per option), and the path."""
    check("sit", dict(steps=steps, method=method, cfg_scale=cfg_scale, guidance_low=guidance_low,
                      guidance_high=guidance_high))
    if path not in PATHS:
        raise ValueError(f"unknown path {path!r}: use one of {', '.join(PATHS)}")


@torch.no_grad()
def sample_flow(model: Callable, noise: torch.Tensor, labels: torch.Tensor, *, steps: int = 50,
                method: str = "euler", cfg_scale: float = 1.0, guidance_low: float = 0.0,
                guidance_high: float = 1.0, path: str = "linear", null_class: int = 1000,
                rng: Optional[torch.Generator] = None,
                progress: Optional[Callable[[int, int], None]] = None) -> torch.Tensor:
    """Integrate from ``noise`` (t=1) to data (t=0). Returns float64 tokens shaped like noise.

    ``model(x, t, y)`` returns the velocity. SDE noise is drawn like the official sampler: one
    ``randn`` per stochastic step, in step order, from ``rng`` (or torch's global generator).
    """
    validate_options(steps, method, cfg_scale, guidance_low, guidance_high, path)
    call_dtype = noise.dtype
    device = noise.device
    guided = cfg_scale > 1.0
    labels = labels.to(device)
    both_labels = torch.cat([labels, torch.full_like(labels, null_class)]) if guided else labels
    grid = time_grid(steps, method)

    def velocity(x: torch.Tensor, t: float, guide: bool) -> torch.Tensor:
        x_in = torch.cat([x, x]) if guide else x
        y_in = both_labels if guide else labels
        t_in = torch.full((x_in.shape[0],), t, dtype=torch.float64, device=device).to(call_dtype)
        v = model(x_in.to(call_dtype), t_in, y_in).to(torch.float64)
        if guide:
            v_cond, v_uncond = v.chunk(2)
            v = v_uncond + cfg_scale * (v_cond - v_uncond)
        return v

    def is_guided(t: float) -> bool:
        return guided and guidance_low <= t <= guidance_high

    # All SDE noise is drawn up front (same order as drawing per step) so the loop never
    # copies from the host.
    sde_noise = None
    if method == "sde":
        draws = [torch.randn(noise.shape, generator=rng, dtype=torch.float64,
                             device=rng.device if rng is not None else device)
                 for _ in range(len(grid) - 2)]
        sde_noise = torch.stack(draws).to(device=device, dtype=torch.float64) if draws else None

    x = noise.to(torch.float64)
    total = len(grid) - 1
    for i in range(total):
        raise_if_cancelled()
        t_cur, t_next = grid[i], grid[i + 1]
        dt = t_next - t_cur
        guide = is_guided(t_cur)
        if method == "sde":
            v = velocity(x, t_cur, guide)
            diffusion = 2.0 * t_cur
            drift = v - 0.5 * diffusion * score_from_velocity(v, x, t_cur, path)
            x_next = x + drift * dt
            if i < total - 1:  # the last step is the deterministic mean step
                x_next = x_next + math.sqrt(diffusion) * sde_noise[i] * math.sqrt(abs(dt))
        else:
            v = velocity(x, t_cur, guide)
            x_next = x + dt * v
            if method == "heun" and i < total - 1:
                v_next = velocity(x_next, t_next, guide)
                x_next = x + dt * (0.5 * v + 0.5 * v_next)
        x = x_next
        if progress is not None:
            progress(i + 1, total)
    return x


def network_evaluations(steps: int, method: str, cfg_scale: float, guidance_low: float,
                        guidance_high: float) -> int:
    """How many batch-B network evaluations a run costs (a guided call counts twice)."""
    grid = time_grid(steps, method)
    n = 0
    for i in range(len(grid) - 1):
        per_call = 2 if cfg_scale > 1.0 and guidance_low <= grid[i] <= guidance_high else 1
        calls = 2 if method == "heun" and i < len(grid) - 2 else 1
        n += per_call * calls
    return n
