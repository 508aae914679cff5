"""SiT on the fast path: a functional bf16 forward, Euler / SDE sampling as CUDA-graph replays,
and a graph-captured velocity for Heun (see the package docstring for what differs from a plain
bf16 forward, all exact rewrites).

The generator's weights come through ``SiT.functional_weights()``, the documented hook that
names each tensor this layout needs.
"""
from __future__ import annotations

import math
import os
from collections import OrderedDict
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...device import module_device
from ..flow import path_coefficients, sample_flow, time_grid, validate_options
from . import kernels
from .runtime import (BF16, LOCK, _attention_qkv, _Graphs, _maybe_compile, _PerModelCache,
                      compile_enabled, graphs_enabled, pick_attention)

GELU_EPILOGUE = True                # SiT fc1: cuBLASLt bias+GELU epilogue on CUDA (tanh GELU there)
MOD_TABLE_BYTES = 256 * 2 ** 20     # precomputed adaLN table: always allowed up to this size
MOD_TABLE_FRACTION = 0.1            # ... and on a GPU up to this fraction of its memory


# --------------------------------------------------------------------------- functional pieces


def _timestep_features(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32,
                                                            device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def _sit_modulation(t: torch.Tensor, y_emb: torch.Tensor, w0, b0, w2, b2, ada_w, ada_b) -> torch.Tensor:
    """adaLN modulations of every layer (and the final layer) for rows (t, y): R × (L·6H + 2H).

    Same arithmetic as SiT under bf16 autocast: t-MLP in bf16, c = t_emb + y_emb in float32,
    SiLU(c) in float32, then the modulation product in bf16 -- here for all layers at once."""
    te = F.linear(F.silu(F.linear(_timestep_features(t).to(w0.dtype), w0, b0)), w2, b2)
    c = te.float() + y_emb
    return F.linear(F.silu(c).to(ada_w.dtype), ada_w, ada_b)


def _modulated_norm(h: torch.Tensor, mod2: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """adaLN: LayerNorm(h)·(1 + scale) + shift in float32, cast to the matmul dtype.
    mod2: R × 2H (shift, scale) -- the first third of a block's modulation, or the final layer's."""
    shift, scale = mod2.float().unsqueeze(1).chunk(2, dim=-1)
    return (F.layer_norm(h, (h.shape[-1],), eps=1e-6) * (1 + scale) + shift).to(dtype)


def _sit_embed(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, pos: torch.Tensor,
               mod2: torch.Tensor, res_dtype: torch.dtype = torch.float32
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Token embedding (h, stored in ``res_dtype``) and the first block's modulated LayerNorm of
    it (computed from the float32 value before any rounding of the stored stream)."""
    h = F.linear(x.to(w.dtype), w, b).float() + pos
    return h.to(res_dtype), _modulated_norm(h, mod2, w.dtype)


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, cfg: Optional[tuple], gelu: bool = False
            ) -> torch.Tensor:
    """x·wᵀ + b (then tanh GELU) on 2-D x: cuBLAS, or the skinny Triton kernel config ``cfg``
    that ``kernels.pick_linear`` timed faster for this shape (few rows: batch-1 sampling)."""
    if cfg is not None:
        return torch.ops.softvq.skinny_linear(x, w, b, 1 if gelu else 0, *cfg)
    if not gelu:
        return F.linear(x, w, b)
    if GELU_EPILOGUE and x.is_cuda:
        # fc1 + bias + tanh-GELU in one cuBLASLt call (GELU_BIAS epilogue): the 4H-wide
        # activation is written once instead of written, read and written again
        return torch._addmm_activation(b, x, w.t(), use_gelu=True)
    return F.gelu(F.linear(x, w, b), approximate="tanh")


def _sit_block(h: torch.Tensor, a: torch.Tensor, mod: torch.Tensor, mod_next: torch.Tensor,
               qkv_w, qkv_b, proj_w, proj_b, fc1_w, fc1_b, fc2_w, fc2_b, heads: int,
               attn: Optional[str] = None, lin: Optional[tuple] = None, fused_norm: bool = False,
               split: Optional[tuple] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One SiT block, its LayerNorms shifted by one: takes h (R×N×H residual stream, float32 by
    default) and a = this block's modulated LN1(h); returns the new h and the NEXT block's (or
    the final layer's) modulated LN1 of it (``mod_next``: R×2H shift, scale). Same arithmetic as
    a plain block; the shift lets the last residual add and the next LayerNorm share one pass over
    h (one read of the stream per layer less). mod: R×6H, (shift, scale, gate) × 2.

    The residual adds and LayerNorms always run in float32; h is only *stored* in its own dtype
    (bf16 halves the bytes of the two passes per layer, at a rounding of the stream per add).
    ``attn``: the attention kernel (``runtime.pick_attention``); ``lin``: per product (qkv, proj,
    fc1, fc2) None for cuBLAS or a skinny-kernel config (``kernels.pick_linear``); ``fused_norm``:
    each residual add + LayerNorm + modulation as one Triton pass (``kernels.residual_norm``,
    the same arithmetic as the expressions below, which torch.compile fuses less well: it loops
    over rows wider than 1024 and re-reads them); ``split`` (with ``fused_norm``): split-K
    parts for proj and fc2 (0: a plain product; ``kernels.pick_split``), their float32 partial
    sums and the bias added by the norm pass that consumes them (few rows: batch 1)."""
    r, n, hidden = h.shape
    dt = qkv_w.dtype
    lin = lin or (None, None, None, None)
    qkv = _linear(a.reshape(r * n, hidden), qkv_w, qkv_b, lin[0]).view(r, n, 3 * hidden)
    o = _attention_qkv(qkv, heads, attn).reshape(r * n, hidden)
    if fused_norm:
        split = split or (0, 0)
        h, m = _product_norm(h, o, proj_w, proj_b, lin[1], split[0], mod[:, 2 * hidden:3 * hidden],
                             mod[:, 3 * hidden:5 * hidden])
        u = _linear(m.reshape(r * n, hidden), fc1_w, fc1_b, lin[2], gelu=True)
        return _product_norm(h, u, fc2_w, fc2_b, lin[3], split[1], mod[:, 5 * hidden:], mod_next)
    o = _linear(o, proj_w, proj_b, lin[1]).view(r, n, hidden)
    ga, sm, cm, gm = mod[:, 2 * hidden:].float().unsqueeze(1).chunk(4, dim=-1)
    hf = h.float() + ga * o.float()
    m = (F.layer_norm(hf, (hidden,), eps=1e-6) * (1 + cm) + sm).to(dt)
    u = _linear(m.reshape(r * n, hidden), fc1_w, fc1_b, lin[2], gelu=True)
    m = _linear(u, fc2_w, fc2_b, lin[3]).view(r, n, hidden)
    hf = hf.to(h.dtype).float() + gm * m.float()
    return hf.to(h.dtype), _modulated_norm(hf, mod_next, dt)


def _product_norm(h, x, w, b, lin: Optional[tuple], parts: int, gate, shift_scale):
    """residual_norm(h, x·wᵀ + b): the product in ``parts`` split-K partial sums summed by the
    norm pass, or a plain (or skinny) product."""
    r, n, hidden = h.shape
    if parts:
        p = kernels.split_product(x, w, parts).view(parts, r, n, hidden)
        return kernels.residual_norm_op(h, p, gate, shift_scale, bias=b)
    o = _linear(x, w, b, lin).view(r, n, hidden)
    return kernels.residual_norm_op(h, o, gate, shift_scale)


def _sit_finish(a, w, b, x, ca, cb, cc, noise, cfg, guided: bool):
    """Final projection (a: the final layer's modulated LayerNorm), CFG combination and the
    sampler update x' = a·x + b·v (+ c·noise)."""
    v = F.linear(a, w, b).float()
    if guided:
        v_cond, v_uncond = v.chunk(2)
        v = v_uncond + cfg * (v_cond - v_uncond)
    out = ca * x + cb * v
    if noise is not None:
        out = out + cc * noise
    return out


# --------------------------------------------------------------------------- the fast copy


class SiTFast:
    """A SiT's weights in bf16 (float32 on the CPU), laid out for the functional forward."""

    def __init__(self, gen: nn.Module, dtype: Optional[torch.dtype] = None,
                 compile: Optional[bool] = None, residual: Optional[torch.dtype] = None):
        self.device = module_device(gen)
        self.dtype = dtype or (BF16 if self.device.type == "cuda" else torch.float32)
        self.residual = residual or residual_dtype(self.dtype)
        self.compiled = compile_enabled(self.device, compile)
        self.num_tokens, self.token_dim = int(gen.num_tokens), int(gen.token_dim)
        self.hidden, self.depth, self.heads = int(gen.hidden_size), int(gen.depth), int(gen.num_heads)
        self.num_classes, self.null_class = int(gen.num_classes), int(gen.null_class)

        def cast(p: torch.Tensor) -> torch.Tensor:
            return p.detach().to(self.dtype).contiguous()

        with torch.no_grad():
            w = gen.functional_weights()
            self.x_w, self.x_b = cast(w["x_embed"][0]), cast(w["x_embed"][1])
            self.pos = w["pos"].detach().float().contiguous()
            self.t_w0, self.t_b0, self.t_w2, self.t_b2 = (cast(p) for p in w["t_mlp"])
            self.y_table = w["y_table"].detach().float()
            self.ada_w = torch.cat([cast(wt) for wt, _ in w["adaln"]])
            self.ada_b = torch.cat([cast(b) for _, b in w["adaln"]])
            self.blocks = [tuple(cast(p) for p in blk) for blk in w["blocks"]]
            self.fin_w, self.fin_b = cast(w["final"][0]), cast(w["final"][1])
        self.mod_width = self.ada_w.shape[0]
        on = self.compiled
        self.attn = pick_attention(self.device, self.num_tokens, self.heads, self.hidden // self.heads,
                                   self.dtype)
        self.f_mod = _maybe_compile(_sit_modulation, on, {0: (0,), 1: (0,)})
        self.f_embed = _maybe_compile(_sit_embed, on, {0: (0, 1), 3: (0,), 4: (0,)})
        self.fused_norm = (self.dtype == BF16 and
                           kernels.residual_norm_ok(self.device, self.hidden, self.residual, self.dtype))
        # with the fused norm every kernel of a block is a library or Triton call already:
        # compiling it would only add trace time (and possibly copies of the strided mod views)
        self.f_block = _sit_block if self.fused_norm else _maybe_compile(
            _sit_block, on, {0: (0, 1), 1: (0, 1), 2: (0,), 3: (0,)})
        self.f_finish = _maybe_compile(_sit_finish, on, {0: (0, 1), 3: (0, 1), 7: (0, 1)})
        self.runners: "OrderedDict[tuple, _FlowRunner]" = OrderedDict()
        self.velocities: "OrderedDict[tuple, FastVelocity]" = OrderedDict()
        self.lin_picks: dict = {}
        self.split_cache: dict = {}

    def linear_picks(self, rows: int) -> Optional[tuple]:
        """Per product (qkv, proj, fc1, fc2) of a block, at ``rows`` token rows: None for cuBLAS
        or the skinny Triton config timed faster (CUDA, bf16, at most 128 rows: batch 1)."""
        if (self.device.type != "cuda" or rows > 128 or self.dtype != BF16
                or not kernels.AVAILABLE):
            return None
        if rows not in self.lin_picks:
            h = self.hidden
            f = self.blocks[0][4].shape[0]
            shapes = ((3 * h, h, 0), (h, h, 0), (f, h, 1), (h, f, 0))
            picks = tuple(kernels.pick_linear(rows, n, k, act, self.device, self.dtype)
                          for n, k, act in shapes)
            self.lin_picks[rows] = picks if any(p is not None for p in picks) else None
        return self.lin_picks[rows]

    def split_picks(self, rows: int) -> Optional[tuple]:
        """Split-K parts for (proj, fc2) at ``rows`` token rows (0: plain; ``kernels.pick_split``,
        timed once per process: CUDA, bf16, fused norm, at most ``kernels.SPLIT_MAX_ROWS`` rows)."""
        if (self.device.type != "cuda" or not self.fused_norm or rows > kernels.SPLIT_MAX_ROWS
                or not kernels.AVAILABLE):
            return None
        if rows not in self.split_cache:
            h, f = self.hidden, self.blocks[0][4].shape[0]
            picks = tuple(kernels.pick_split(rows, self.num_tokens, h, k, self.device, self.dtype,
                                             self.residual) for k in (h, f))
            self.split_cache[rows] = picks if any(picks) else None
        return self.split_cache[rows]

    # -- pieces used by the runners
    def modulation(self, t: torch.Tensor, y_emb: torch.Tensor) -> torch.Tensor:
        return self.f_mod(t, y_emb, self.t_w0, self.t_b0, self.t_w2, self.t_b2, self.ada_w, self.ada_b)

    def trunk(self, x: torch.Tensor, mods: torch.Tensor) -> torch.Tensor:
        """Embedding and all blocks: x R×N×D (float32), mods R×(L·6H+2H) → the final layer's
        modulated LayerNorm R×N×H (in the weights' dtype), ready for ``fin_w``.

        mods holds [block 0: 6H | block 1: 6H | ... | final: 2H]; block i also gets the first 2H
        of what follows it (block i+1's shift and scale, or the final layer's), since each block
        ends with the next one's LayerNorm."""
        w6, w2 = 6 * self.hidden, 2 * self.hidden
        rows = int(x.shape[0]) * int(x.shape[1])
        lin, split = self.linear_picks(rows), self.split_picks(rows)
        h, a = self.f_embed(x, self.x_w, self.x_b, self.pos, mods[:, :w2], self.residual)
        for i, weights in enumerate(self.blocks):
            nxt = (i + 1) * w6
            h, a = self.f_block(h, a, mods[:, i * w6:nxt], mods[:, nxt:nxt + w2], *weights,
                                self.heads, self.attn, lin, self.fused_norm, split)
        return a

    def finish(self, out_of_trunk, mods, x, ca, cb, cc, noise, cfg, guided: bool) -> torch.Tensor:
        """Final layer + CFG + sampler update on what ``trunk`` returned."""
        return self.f_finish(out_of_trunk, self.fin_w, self.fin_b, x, ca, cb, cc, noise, cfg, guided)

    def final_mods(self, mods: torch.Tensor) -> torch.Tensor:
        return mods[:, self.depth * 6 * self.hidden:]

    def velocity(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Eager functional forward (float32 in and out): what ``gen(x, t, y)`` computes."""
        mods = self.modulation(t.float(), self.y_table.index_select(0, y))
        a = self.trunk(x.float(), mods)
        return F.linear(a, self.fin_w, self.fin_b).float()

    def weight_bytes(self) -> int:
        tensors = [self.x_w, self.x_b, self.t_w0, self.t_b0, self.t_w2, self.t_b2, self.ada_w,
                   self.ada_b, self.fin_w, self.fin_b] + [p for blk in self.blocks for p in blk]
        return sum(t.numel() * t.element_size() for t in tensors)

_SIT_CACHE = _PerModelCache()


def residual_dtype(weights: Optional[torch.dtype] = None) -> torch.dtype:
    """The residual stream's storage dtype: bf16 when the weights are bf16 (the CUDA default:
    the two passes per layer move a third fewer bytes; agreement with float32 measured in
    docs/benchmarks.md), float32 otherwise; ``SOFTVQ_RESIDUAL`` = fp32 / bf16 overrides."""
    value = os.environ.get("SOFTVQ_RESIDUAL", "auto").strip().lower()
    if value in ("bf16", "bfloat16"):
        return BF16
    if value in ("fp32", "float32"):
        return torch.float32
    return BF16 if weights == BF16 else torch.float32


def sit_fast(gen: nn.Module, compile: Optional[bool] = None,
             dtype: Optional[torch.dtype] = None, residual: Optional[torch.dtype] = None) -> SiTFast:
    """The (cached) fast copy of a SiT; rebuilt when its weights change. ``dtype``: weight and
    matmul precision (default bf16 on CUDA, float32 elsewhere); ``residual``: the residual
    stream's storage dtype (default ``residual_dtype``: bf16 with bf16 weights)."""
    device = module_device(gen)
    on = compile_enabled(device, compile)
    res = residual or residual_dtype(dtype or (BF16 if device.type == "cuda" else torch.float32))
    return _SIT_CACHE.get(gen, ("sit", on, dtype, res),
                          lambda: SiTFast(gen, dtype=dtype, compile=on, residual=res))


# --------------------------------------------------------------------------- sampling


def table_limit(device: torch.device) -> int:
    """Largest precomputed adaLN table (bytes): ``MOD_TABLE_BYTES``, or on a GPU
    ``MOD_TABLE_FRACTION`` of its memory if that is more (H100 80 GB: 8 GB, which holds B=64 ×
    250 steps of SiT-XL, 6.4 GB). The table replaces reading the 28 adaLN matrices (0.45 GB in
    bf16) at every step by reading B+1 rows of it."""
    limit = MOD_TABLE_BYTES
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        limit = max(limit, int(MOD_TABLE_FRACTION * total))
    return limit


def use_table(fast: "SiTFast", batch: int, steps: int) -> bool:
    return _FlowRunner.table_bytes(fast, batch, steps) <= table_limit(fast.device)


def _sde_coefficients(grid: Sequence[float], method: str, path: str) -> list[tuple[float, float, float]]:
    """Per step (a, b, c) with x' = a·x + b·v + c·ε -- the Euler / Euler–Maruyama update of
    ``sample_flow`` rewritten in closed form (score = ((α/α̇)·v − x)/(σ² − (α/α̇)·σ̇·σ))."""
    out = []
    total = len(grid) - 1
    for i in range(total):
        t, dt = grid[i], grid[i + 1] - grid[i]
        if method == "euler":
            out.append((1.0, dt, 0.0))
            continue
        tt = torch.tensor(t, dtype=torch.float64)
        alpha, sigma, d_alpha, d_sigma = (float(v) for v in path_coefficients(tt, path))
        ratio = alpha / d_alpha
        denom = sigma ** 2 - ratio * d_sigma * sigma
        k = 0.5 * (2.0 * t) / denom
        noise = math.sqrt(2.0 * t) * math.sqrt(abs(dt)) if i < total - 1 else 0.0
        out.append((1.0 + dt * k, dt * (1.0 - k * ratio), noise))
    return out


class _FlowRunner:
    """Static buffers and graphs for sampling B images with one SiTFast (Euler or SDE)."""

    def __init__(self, fast: SiTFast, batch: int, steps_cap: int, precompute: bool,
                 noise_table: bool, sde: bool, graphs: bool):
        self.fast, self.batch = fast, batch
        dev, n, d = fast.device, fast.num_tokens, fast.token_dim
        self.steps_cap, self.precompute, self.noise_table, self.sde = steps_cap, precompute, noise_table, sde
        self.x = torch.zeros(batch, n, d, device=dev)
        self.step = torch.zeros(1, dtype=torch.long, device=dev)
        self.coef = torch.zeros(steps_cap, 3, device=dev)
        self.times = torch.zeros(steps_cap, device=dev)
        self.cfg = torch.zeros((), device=dev)
        self.y_rows = torch.zeros(2 * batch, fast.hidden, device=dev)        # cond rows, null rows
        self.noise = torch.zeros(steps_cap, batch, n, d, device=dev) if noise_table else None
        self.mod_table = (torch.zeros(steps_cap, batch + 1, fast.mod_width, dtype=fast.dtype, device=dev)
                          if precompute else None)
        # rows of the table each kind of step reads: the B labels, then (guided) B times the null row
        self.rows = {False: torch.arange(batch, device=dev),
                     True: torch.cat([torch.arange(batch), torch.full((batch,), batch)]).to(dev)}
        self.graphs = _Graphs(dev, graphs)

    @staticmethod
    def table_bytes(fast: SiTFast, batch: int, steps: int) -> int:
        return steps * (batch + 1) * fast.mod_width * torch.finfo(fast.dtype).bits // 8

    def _step(self, guided: bool) -> None:
        f, b = self.fast, self.batch
        rows = 2 * b if guided else b
        x = self.x
        x_in = torch.cat([x, x]) if guided else x
        if self.precompute:
            mods = self.mod_table.index_select(0, self.step)[0].index_select(0, self.rows[guided])
        else:
            t = self.times.index_select(0, self.step).expand(rows)
            mods = f.modulation(t, self.y_rows[:rows])
        a = f.trunk(x_in, mods)
        coef = self.coef.index_select(0, self.step)[0]
        if not self.sde:
            noise = None
        elif self.noise_table:
            noise = self.noise.index_select(0, self.step)[0]
        else:
            noise = torch.randn(x.shape, device=x.device, dtype=x.dtype)
        out = f.finish(a, mods, x, coef[0], coef[1], coef[2], noise, self.cfg, guided)
        self.x.copy_(out)
        self.step.add_(1)

    def run(self, noise: torch.Tensor, labels: torch.Tensor, grid: list[float],
            coefs: list[tuple[float, float, float]], guided: list[bool], cfg_scale: float,
            sde_noise: Optional[torch.Tensor], progress: Optional[Callable[[int, int], None]]
            ) -> torch.Tensor:
        f, b = self.fast, self.batch
        total = len(coefs)
        dev = f.device
        # ---- write this run's inputs into the static buffers (host -> device copies, no waits)
        self.coef[:total].copy_(torch.tensor(coefs, dtype=torch.float32), non_blocking=False)
        t_steps = torch.tensor(grid[:total], dtype=torch.float64).to(torch.float32)
        self.times[:total].copy_(t_steps)
        self.cfg.fill_(float(cfg_scale))
        labels = labels.to(dev)
        null = torch.full((b,), f.null_class, dtype=torch.long, device=dev)
        self.y_rows.copy_(f.y_table.index_select(0, torch.cat([labels, null])))
        if self.noise_table and sde_noise is not None:
            self.noise[:sde_noise.shape[0]].copy_(sde_noise)
        if self.precompute:
            # one product for every (step, row): rows = B labels + the null class (in chunks of
            # steps, so that a large table never has a second, temporary copy)
            t_dev = t_steps.to(dev)
            y_rows = self.y_rows[:b + 1]
            chunk = max(1, MOD_TABLE_BYTES // self.table_bytes(f, b, 1))
            for s0 in range(0, total, chunk):
                s1 = min(total, s0 + chunk)
                t_all = t_dev[s0:s1].repeat_interleave(b + 1)
                y_all = y_rows.repeat(s1 - s0, 1)
                self.mod_table[s0:s1].copy_(f.modulation(t_all, y_all).view(s1 - s0, b + 1, -1))

        def reset() -> None:
            self.x.copy_(noise)
            self.step.zero_()

        for kind in sorted(set(guided)):  # every graph is captured before the first step
            self.graphs.prepare(kind, lambda k=kind: self._step(k), reset)
        reset()
        every = max(1, total // 20)
        for i in range(total):
            self.graphs.run(guided[i], lambda g=guided[i]: self._step(g))
            if progress is not None:
                if dev.type == "cuda" and ((i + 1) % every == 0 or i + 1 == total):
                    torch.cuda.current_stream(dev).synchronize()  # honest progress, ~20 waits a run
                progress(i + 1, total)
        return self.x.clone()


@torch.no_grad()
def sample_sit_fast(gen: nn.Module, noise: torch.Tensor, labels: torch.Tensor, *, steps: int = 50,
                    method: str = "euler", cfg_scale: float = 1.0, guidance_low: float = 0.0,
                    guidance_high: float = 1.0, path: str = "linear", null_class: Optional[int] = None,
                    rng: Optional[torch.Generator] = None,
                    progress: Optional[Callable[[int, int], None]] = None,
                    compile: Optional[bool] = None, graphs: Optional[bool] = None,
                    precompute: Optional[bool] = None, dtype: Optional[torch.dtype] = None
                    ) -> torch.Tensor:
    """Same contract as ``sample_flow(gen, noise, labels, ...)`` (float32 result).

    Euler and SDE run as graph replays; Heun runs ``sample_flow`` with a ``FastVelocity``.
    SDE noise: with ``rng`` the draws are the reference's (same generator, same order); without
    it they are drawn on the device inside the graph."""
    validate_options(steps, method, cfg_scale, guidance_low, guidance_high, path)
    fast = sit_fast(gen, compile, dtype)
    device = fast.device
    if null_class is not None and null_class != fast.null_class:
        raise ValueError(f"null class {null_class} differs from the generator's {fast.null_class}")
    noise = noise.to(device)
    labels = labels.to(device)
    use_graphs = graphs_enabled(device, graphs)
    if method == "heun":
        vel = fast_velocity(gen, compile=compile, graphs=use_graphs, dtype=dtype)
        return sample_flow(vel, noise.float(), labels, steps=steps, method=method, cfg_scale=cfg_scale,
                           guidance_low=guidance_low, guidance_high=guidance_high, path=path,
                           null_class=fast.null_class, rng=rng, progress=progress).float()
    grid = time_grid(steps, method)
    total = len(grid) - 1
    guided_run = cfg_scale > 1.0
    guided = [guided_run and guidance_low <= grid[i] <= guidance_high for i in range(total)]
    coefs = _sde_coefficients(grid, method, path)
    sde = method == "sde"
    sde_noise = None
    if sde and rng is not None:  # the reference's draws: one randn per stochastic step, in order
        draws = [torch.randn(noise.shape, generator=rng, dtype=torch.float64, device=rng.device)
                 for _ in range(total - 1)]
        sde_noise = torch.stack(draws).to(device=device, dtype=torch.float32)
    batch = int(noise.shape[0])
    if precompute is None:
        precompute = use_table(fast, batch, total)
    cap = total if precompute or sde_noise is not None else 1000
    key = (batch, precompute, sde_noise is not None, sde, use_graphs)
    with LOCK:
        runner = fast.runners.get(key)
        if runner is None or runner.steps_cap < total:
            fast.runners.pop(key, None)
            big = precompute and _FlowRunner.table_bytes(fast, batch, max(cap, total)) > MOD_TABLE_BYTES
            while len(fast.runners) >= (1 if big else 3):  # bound the memory held by graphs, tables
                fast.runners.popitem(last=False)
            if big and device.type == "cuda":
                torch.cuda.empty_cache()
            runner = _FlowRunner(fast, batch, max(cap, total), precompute, sde_noise is not None,
                                 sde, use_graphs)
            fast.runners[key] = runner
        fast.runners.move_to_end(key)
        return runner.run(noise.float(), labels, grid, coefs, guided, cfg_scale, sde_noise, progress)


class FastVelocity:
    """``v = fv(x, t, y)``: the generator's velocity through the fast path, one graph per batch
    size. Accepted by ``sample_flow`` in place of the model (returns float32)."""

    def __init__(self, fast: SiTFast, graphs: bool):
        self.fast = fast
        self.graphs = _Graphs(fast.device, graphs)
        self.buffers: dict = {}

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        f = self.fast
        rows = int(x.shape[0])
        t = t.expand(rows) if t.ndim == 0 else t
        if not self.graphs.enabled:
            return f.velocity(x, t, y)
        buf = self.buffers.get(rows)
        if buf is None:
            dev = f.device
            buf = dict(x=torch.zeros(rows, f.num_tokens, f.token_dim, device=dev),
                       t=torch.zeros(rows, device=dev), y=torch.zeros(rows, dtype=torch.long, device=dev))
            self.buffers[rows] = buf
        buf["x"].copy_(x)
        buf["t"].copy_(t)
        buf["y"].copy_(y)

        def fn() -> None:
            buf["out"] = f.velocity(buf["x"], buf["t"], buf["y"])

        self.graphs.prepare(rows, fn)
        self.graphs.run(rows, fn)
        return buf["out"].clone()


def fast_velocity(gen: nn.Module, compile: Optional[bool] = None, graphs: Optional[bool] = None,
                  dtype: Optional[torch.dtype] = None) -> FastVelocity:
    """A graph-captured ``v = fv(x, t, y)`` for ``sample_flow`` (any method)."""
    fast = sit_fast(gen, compile, dtype)
    use = graphs_enabled(fast.device, graphs)
    key = ("velocity", use)
    if key not in fast.velocities:
        fast.velocities[key] = FastVelocity(fast, use)
    return fast.velocities[key]
