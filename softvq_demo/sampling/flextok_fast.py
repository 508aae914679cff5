"""FlexTok's decoder steps on the fast path: bf16, compiled, CUDA graphs (not measured yet).

``FlexTokFast(tok)`` holds a bf16 copy of the flow decoder (its LayerNorms still compute in
float32, as the official ``Fp32LayerNorm`` does) and runs each Euler step of the official
``MinRFPipeline`` — both guidance halves as one batch of 2B rows, the CFG or APG combination and
the update x ← x − v/T — as one compiled function. On CUDA the step is compiled with
``mode="reduce-overhead"`` (torch.compile captures and replays it as a CUDA graph: one launch per
step, no host syncs); the sampler state (x, the APG momentum) stays float32 between steps. On the
CPU everything runs eagerly in the model's own dtype, which is how the tests check the arithmetic
against ``FlexTok.sample_latents``.

Not wired into ``FlexTok.decode`` (models do not import sampling): ``enable_fast_decode(tok)``
installs it, and ``python -m softvq_demo.bench.flextok`` times it against the reference path.
Switches as for the other fast paths: ``SOFTVQ_COMPILE=0`` (no torch.compile),
``SOFTVQ_CUDA_GRAPHS=0`` (compiled, no graphs).
"""
from __future__ import annotations

import copy
import os
from typing import Callable, Optional

import torch

from ..device import module_device
from ..models.flextok import FlexTok, apg_velocity

BF16 = torch.bfloat16


def _env_on(name: str) -> bool:
    return os.environ.get(name, "1").lower() not in ("0", "false", "no", "off")


class FlexTokFast:
    """Drop-in for ``FlexTok.sample_latents`` with a low-precision, compiled decoder step."""

    def __init__(self, tok: FlexTok, dtype: Optional[torch.dtype] = None,
                 compile: Optional[bool] = None, graphs: Optional[bool] = None):
        self.tok = tok
        self.device = module_device(tok)
        cuda = self.device.type == "cuda"
        self.dtype = dtype or (BF16 if cuda else next(tok.decoder.parameters()).dtype)
        self.decoder = copy.deepcopy(tok.decoder).to(self.dtype).eval().requires_grad_(False)
        self.compiled = cuda and (compile if compile is not None else _env_on("SOFTVQ_COMPILE"))
        self.graphs = self.compiled and (graphs if graphs is not None else _env_on("SOFTVQ_CUDA_GRAPHS"))
        self._steps: dict[tuple[bool, bool], Callable] = {}

    def _step_fn(self, guided: bool, apg: bool) -> Callable:
        key = (guided, apg)
        if key not in self._steps:
            fn = self._guided_step if guided else self._plain_step
            if apg and guided:
                fn = self._apg_step
            if self.compiled:
                fn = torch.compile(fn, mode="reduce-overhead" if self.graphs else "default",
                                   dynamic=False)
            self._steps[key] = fn
        return self._steps[key]

    # each step: x (float32) → x − dt·v; everything tensor-valued so one graph serves all steps
    def _plain_step(self, x, t, values, keep, flags, momentum, dt, scale):
        v = self.tok.velocity(x, t, values, keep, decoder=self.decoder).float()
        return x - dt * v, momentum

    def _halves(self, x, t, values, keep, flags):
        v = self.tok.velocity(torch.cat([x, x]), torch.cat([t, t]), torch.cat([values, values]),
                              torch.cat([keep, keep]), flags, decoder=self.decoder).float()
        return v.chunk(2)

    def _guided_step(self, x, t, values, keep, flags, momentum, dt, scale):
        v_c, v_u = self._halves(x, t, values, keep, flags)
        return x - dt * (v_u + scale * (v_c - v_u)), momentum

    def _apg_step(self, x, t, values, keep, flags, momentum, dt, scale):
        v_c, v_u = self._halves(x, t, values, keep, flags)
        v, momentum = apg_velocity(v_c, v_u, scale, momentum)
        return x - dt * v, momentum

    @torch.no_grad()
    def sample_latents(self, values: torch.Tensor, noise: torch.Tensor, steps: int,
                       guidance_scale: float = 1.0, apg: bool = False) -> torch.Tensor:
        b, k = values.shape[:2]
        dev = self.device
        values = values.to(dev)
        keep = torch.full((b,), k, dtype=torch.long, device=dev)
        flags = torch.arange(2 * b, device=dev) >= b
        guided = guidance_scale != 1
        step = self._step_fn(guided, apg)
        x = noise.to(dev, torch.float32).clone()
        momentum = torch.zeros_like(x)
        dt = torch.tensor(1.0 / steps, device=dev)
        scale = torch.tensor(float(guidance_scale), device=dev)
        for i in range(steps, 0, -1):
            t = torch.full((b,), i / steps, device=dev)
            if self.graphs:
                torch.compiler.cudagraph_mark_step_begin()
            x, momentum = step(x, t, values, keep, flags, momentum, dt, scale)
            if self.graphs:  # graph outputs are overwritten by the next replay
                x, momentum = x.clone(), momentum.clone()
        return x


def enable_fast_decode(tok: FlexTok, **kwargs) -> FlexTokFast:
    """Route ``tok.decode``'s sampler through a ``FlexTokFast`` (e.g. on a CUDA device)."""
    fast = FlexTokFast(tok, **kwargs)
    tok.fast_sampler = fast
    return fast
