"""The previous revision's SiT fast-path block layout (the first benchmark run's code, 2026-11-22),
kept out of the production path for the benchmarks' same-run A/B (``bench.gpu``, ``bench.headline``):
LayerNorm at the start of each block, SDPA's own kernel choice.

    with previous_blocks(sit_fast(gen)):
        sample_sit_fast(gen, noise, y, precompute=False, ...)

Inside the ``with`` the fast copy's trunk / finish / velocity run the old layout (compiled like
the current one when the copy is); the runners built inside are dropped on the way out, since
their graphs hold the old kernels.
"""
from __future__ import annotations

import contextlib
import types

import torch
import torch.nn.functional as F

from ..sampling.fast.runtime import _maybe_compile
from ..sampling.fast.sit import SiTFast, _modulated_norm, _sit_block, _sit_finish


def _embed(x, w, b, pos):
    return F.linear(x.to(w.dtype), w, b).float() + pos


def _block(h, mod, qkv_w, qkv_b, proj_w, proj_b, fc1_w, fc1_b, fc2_w, fc2_b, heads: int):
    hidden = h.shape[-1]
    a = _modulated_norm(h, mod[:, :2 * hidden], qkv_w.dtype)
    h, _ = _sit_block(h, a, mod, mod[:, :2 * hidden], qkv_w, qkv_b, proj_w, proj_b, fc1_w, fc1_b,
                      fc2_w, fc2_b, heads, None)
    return h


def _finish(h, fmod, w, b, x, ca, cb, cc, noise, cfg, guided: bool):
    return _sit_finish(_modulated_norm(h, fmod, w.dtype), w, b, x, ca, cb, cc, noise, cfg, guided)


@contextlib.contextmanager
def previous_blocks(fast: SiTFast):
    """Run ``fast`` (a ``SiTFast``) with the previous revision's block layout inside the block."""
    on = fast.compiled
    f_embed = _maybe_compile(_embed, on, {0: (0, 1), 3: (0,)})
    f_block = _maybe_compile(_block, on, {0: (0, 1), 1: (0,)})
    f_finish = _maybe_compile(_finish, on, {0: (0, 1), 1: (0,), 4: (0, 1), 8: (0, 1)})
    w6 = 6 * fast.hidden

    def final_mods(mods):
        return mods[:, fast.depth * w6:]

    def trunk(self, x, mods):
        h = f_embed(x, self.x_w, self.x_b, self.pos)
        for i, weights in enumerate(self.blocks):
            h = f_block(h, mods[:, i * w6:(i + 1) * w6], *weights, self.heads)
        return h

    def finish(self, out_of_trunk, mods, x, ca, cb, cc, noise, cfg, guided):
        return f_finish(out_of_trunk, final_mods(mods), self.fin_w, self.fin_b, x, ca, cb, cc,
                        noise, cfg, guided)

    def velocity(self, x, t, y):
        mods = self.modulation(t.float(), self.y_table.index_select(0, y))
        a = _modulated_norm(trunk(self, x.float(), mods), final_mods(mods), self.fin_w.dtype)
        return F.linear(a, self.fin_w, self.fin_b).float()

    fast.runners.clear()
    fast.velocities.clear()
    for name, fn in (("trunk", trunk), ("finish", finish), ("velocity", velocity)):
        setattr(fast, name, types.MethodType(fn, fast))
    try:
        yield fast
    finally:
        for name in ("trunk", "finish", "velocity"):
            fast.__dict__.pop(name, None)
        fast.runners.clear()
        fast.velocities.clear()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
