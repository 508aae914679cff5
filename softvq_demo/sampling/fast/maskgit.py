"""MaskGIT on the fast path: ``sample_maskgit_fast`` reproduces ``sampling.maskgit.sample_maskgit``
step for step with the same random draws (drawn up front in the same order), a bf16 compiled copy
of the network, and every step as a graph replay without host syncs. It reaches the generator
through ``body``, ``num_tokens``, ``mask_token_id``, ``no_class_id`` and ``codebook_size``.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Callable, Optional

import torch
from torch import nn

from ...device import module_device
from ..maskgit import _cfg_scale_power_cosine, resolve_options
from .runtime import BF16, LOCK, _Graphs, _PerModelCache, compile_enabled, graphs_enabled, low_precision_copy


def _categorical_from_uniform(logits: torch.Tensor, tau: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``sampling.maskgit.sample_categorical`` with its uniform numbers given (τ > 0)."""
    cdf = torch.softmax(logits / tau, dim=-1).cumsum(dim=-1)
    u = u[..., None] * cdf[..., -1:]
    return torch.searchsorted(cdf, u, right=True).clamp(max=logits.shape[-1] - 1)[..., 0]


def _gumbel_from_uniform(u: torch.Tensor) -> torch.Tensor:
    eps = 1e-20
    return -torch.log((-torch.log(u.clamp(min=eps))).clamp(min=eps))


class _MaskGITRunner:
    def __init__(self, model: nn.Module, batch: int, steps: int, device: torch.device, graphs: bool):
        self.model, self.batch, self.steps = model, batch, steps
        n = model.num_tokens
        self.ids = torch.zeros(batch, n, dtype=torch.long, device=device)
        self.cls = torch.zeros(2 * batch, 1, dtype=torch.long, device=device)
        self.step = torch.zeros(1, dtype=torch.long, device=device)
        self.scalars = torch.zeros(steps, 4, device=device)   # tau, cfg, anneal, remask target
        self.u_cat = torch.zeros(steps, batch, n, device=device)
        self.u_gum = torch.zeros(steps, batch, n, device=device)
        self.graphs = _Graphs(device, graphs)
        self.device = device

    def _step(self, guided: bool, stochastic: bool, last: bool, power_cosine: bool) -> None:
        m, b = self.model, self.batch
        mask_id = m.mask_token_id
        ids = self.ids
        s = self.scalars.index_select(0, self.step)[0]
        tau, cfg, anneal, target = s[0], s[1], s[2], s[3]
        is_mask = ids == mask_id
        if guided:
            seq = torch.cat([self.cls, ids.repeat(2, 1)], dim=1)
            with torch.autocast(device_type=self.device.type, dtype=BF16,
                                enabled=self.device.type == "cuda", cache_enabled=False):
                both = m.body(seq)
            cond, uncond = both.float().chunk(2)
            logits = uncond + (cond - uncond) * cfg if power_cosine else cond + (cond - uncond) * cfg
        else:
            seq = torch.cat([self.cls[:b], ids], dim=1)
            with torch.autocast(device_type=self.device.type, dtype=BF16,
                                enabled=self.device.type == "cuda", cache_enabled=False):
                logits = m.body(seq)
        logits = logits.float() / anneal
        if stochastic:
            u = self.u_cat.index_select(0, self.step)[0]
            sampled = _categorical_from_uniform(logits, tau, u)
        else:
            sampled = logits.argmax(dim=-1)
        chosen = logits.gather(-1, sampled[..., None])[..., 0]
        sampled = torch.where(is_mask, sampled, ids)
        if last:
            self.ids.copy_(sampled)
        else:
            chosen = torch.where(is_mask, chosen, torch.full_like(chosen, math.inf))
            if stochastic:
                confidence = chosen + tau * _gumbel_from_uniform(self.u_gum.index_select(0, self.step)[0])
            else:
                confidence = chosen
            masked = is_mask.sum(dim=-1, keepdim=True)
            count = torch.minimum(masked - 1, target.long()).clamp(min=1)
            cut_off = confidence.sort(dim=-1).values.gather(-1, count - 1)
            self.ids.copy_(torch.where(confidence <= cut_off, torch.full_like(sampled, mask_id), sampled))
        self.step.add_(1)

_MASKGIT_CACHE = _PerModelCache()


@torch.no_grad()
def sample_maskgit_fast(gen: nn.Module, labels, *, steps: Optional[int] = None,
                        guidance_scale: Optional[float] = None, guidance_decay: Optional[str] = None,
                        randomize_temperature: Optional[float] = None, seed=None,
                        progress: Optional[Callable[[int, int], None]] = None,
                        guidance_scale_pow: float = 3.0, softmax_temperature_annealing: bool = True,
                        compile: Optional[bool] = None, graphs: Optional[bool] = None) -> torch.Tensor:
    """``sampling.maskgit.sample_maskgit`` on the fast path: same options, same random draws."""
    steps, scale, decay, temperature, rng = resolve_options(gen, steps, guidance_scale, guidance_decay,
                                                            randomize_temperature, seed)
    device = module_device(gen)
    on_cuda = device.type == "cuda"
    y = torch.as_tensor([labels] if isinstance(labels, int) else labels).long().reshape(-1)
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= gen.num_classes):
        raise ValueError(f"class labels must be in 0..{gen.num_classes - 1}")
    y = y.to(device)
    b, n = int(y.shape[0]), gen.num_tokens
    use_compile = compile_enabled(device, compile)
    use_graphs = graphs_enabled(device, graphs)
    model = _MASKGIT_CACHE.get(gen, ("maskgit", use_compile), lambda: (
        low_precision_copy(gen, BF16, keep_fp32=(), compile=use_compile) if on_cuda else gen))

    # ---- host-side schedule, exactly as sample_maskgit computes it
    plan, scalars = [], []
    cfg = scale if decay == "constant" else 0.0
    for step in range(steps):
        ratio = (step + 1) / steps
        tau = temperature * (1.0 - ratio)
        if decay == "power-cosine":
            cfg = float(_cfg_scale_power_cosine(step, steps, scale, guidance_scale_pow))
            guided = True
        else:
            guided = cfg != 0
        anneal = (0.5 + 0.8 * (1 - ratio)) if softmax_temperature_annealing else 1.0
        target = math.floor(n * math.acos(ratio) / (math.pi * 0.5))
        last = step == steps - 1
        plan.append((guided, tau > 0, last, decay == "power-cosine"))
        scalars.append((tau, cfg, anneal, float(target)))
        if decay == "linear":
            cfg = ratio * scale
    # ---- random draws, in sample_maskgit's order (categorical, then Gumbel, per step)
    u_cat, u_gum = [], []
    zeros = torch.zeros(b, n)
    for guided, stochastic, last, _ in plan:
        if stochastic:
            u_cat.append(torch.rand((b, n, 1), generator=rng,
                                    device=rng.device if rng is not None else device)[..., 0].to(device))
            if not last:
                u_gum.append(torch.rand((b, n), generator=rng,
                                        device=rng.device if rng is not None else device).to(device))
            else:
                u_gum.append(zeros.to(device))
        else:
            u_cat.append(zeros.to(device))
            u_gum.append(zeros.to(device))

    with LOCK:
        runners = model.__dict__.setdefault("_fast_runners", OrderedDict())
        key = (b, steps, tuple(plan), use_graphs)
        runner = runners.get(key)
        if runner is None:
            while len(runners) >= 3:
                runners.popitem(last=False)
            runner = runners[key] = _MaskGITRunner(model, b, steps, device, use_graphs)
        runners.move_to_end(key)
        runner.scalars.copy_(torch.tensor(scalars, dtype=torch.float32))
        runner.u_cat.copy_(torch.stack(u_cat))
        runner.u_gum.copy_(torch.stack(u_gum))
        cond = y + gen.codebook_size + 1
        runner.cls.copy_(torch.cat([cond, torch.full_like(cond, gen.no_class_id)])[:, None])

        def reset() -> None:
            runner.ids.fill_(gen.mask_token_id)
            runner.step.zero_()

        for kind in dict.fromkeys(plan):
            runner.graphs.prepare(kind, lambda k=kind: runner._step(*k), reset)
        reset()
        for i, kind in enumerate(plan):
            runner.graphs.run(kind, lambda k=kind: runner._step(*k))
            if progress is not None:
                progress(i + 1, steps)
        return runner.ids.clone()
