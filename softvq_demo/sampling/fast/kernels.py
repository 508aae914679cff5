"""Triton kernels for the SiT fast path's two memory-bound shapes, each behind a custom op so
torch.compile treats it as one opaque call (and CUDA graphs capture it like any kernel):

- ``short_attention``: softmax(q kᵀ/√d) v for sequences of at most 128 tokens (a 1D tokenizer's
  32-64), one program per (row, head) holding the whole sequence: q, k, v are read straight out
  of the qkv product (R×N×3HD, no strided SDPA views) and the output is written in the R×N×HD
  layout the projection reads. Same arithmetic as flash attention: scores in float32, the
  unnormalised probabilities rounded to the value dtype for the P·V product, divided by the row
  sum at the end.
- ``skinny_linear``: act(a·wᵀ + b) for few rows (batch-1 sampling: 32-128 token rows), where a
  weight-streaming kernel with many narrow column tiles (and, for narrow outputs, a split of the
  reduction into fp32 partial sums) keeps every SM reading weights; cuBLAS's tiles for such
  shapes leave most SMs idle. Used only where ``pick_linear`` timed it faster than cuBLAS.

Both are checked against float32 by the picks that choose them (``runtime.pick_attention``,
``pick_linear``), on this GPU, before use; nothing here runs on the CPU.

Launch variants of the two memory-bound kernels (``residual_norm``, ``short_attention``),
chosen by ``NORM_LAUNCH`` / ``ATTN_LAUNCH`` (``*_BY_TOKENS[n]`` overrides them for sequences of
n tokens) and timed side by side by ``python -m softvq_demo.bench.memkernels``. Both kernels
only stream bytes, so what a variant can change is how many bytes each SM has in flight, how
many instructions each byte costs and how few bytes are fetched twice; the arithmetic (float32
math, rtne downcasts) is the same in every variant, only the order of float32 sums differs:

- residual_norm: one row per program padded to a power of two (the first kernel: 2048 lanes
  for a 1152 row, 44% idle but still issuing), or ``rows`` token rows per program (all of one
  sequence, so the gate, shift and scale -- L2 reads per row that outweigh the row's own HBM
  bytes -- are loaded once per program), the row ``split`` into a power-of-two part and an
  unmasked rest (1152 = 1024 + 128), shift and scale loaded ``early`` (before the two
  reductions, not after them).
- short_attention: one (row, head) per program as before, or ``items`` (row, head) pairs per
  program in an unrolled or a ``stages``-deep pipelined loop, and head dims
  that are no power of two ``split_d`` into a power-of-two part plus a 16-wide rest (72 = 64 +
  16 lanes instead of 128: smaller tiles, fewer registers, more programs per SM).
"""
from __future__ import annotations

import math
import os
from typing import Optional

import torch

from .capture import no_collection

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - CPU-only installs
    triton = None
    tl = None

AVAILABLE = triton is not None

if AVAILABLE:
    @triton.jit
    def _short_attn_kernel(qkv_ptr, out_ptr, N, stride_qr, stride_qn, stride_or, stride_on, qk_scale,
                           H: tl.constexpr, D: tl.constexpr, BLOCK_N: tl.constexpr,
                           BLOCK_D: tl.constexpr):
        pid = tl.program_id(0)
        r = pid // H
        h = pid % H
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        mask = (offs_n[:, None] < N) & (offs_d[None, :] < D)
        ptrs = qkv_ptr + r * stride_qr + offs_n[:, None] * stride_qn + h * D + offs_d[None, :]
        q = tl.load(ptrs, mask=mask, other=0.0)
        k = tl.load(ptrs + H * D, mask=mask, other=0.0)
        v = tl.load(ptrs + 2 * H * D, mask=mask, other=0.0)
        s = tl.dot(q, tl.trans(k)) * qk_scale           # log2 domain: qk_scale = log2(e)/sqrt(d)
        s = tl.where(offs_n[None, :] < N, s, float("-inf"))
        p = tl.math.exp2(s - tl.max(s, 1)[:, None])
        denom = tl.sum(p, 1)
        o = tl.dot(p.to(v.dtype), v) / denom[:, None]
        optrs = out_ptr + r * stride_or + offs_n[:, None] * stride_on + h * D + offs_d[None, :]
        tl.store(optrs, o.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _residual_norm_kernel(h_ptr, o_ptr, g_ptr, ss_ptr, hout_ptr, m_ptr, n_tok, stride_g,
                              stride_ss, eps, H: tl.constexpr, BLOCK: tl.constexpr,
                              H_DOWN: tl.constexpr):
        row = tl.program_id(0)
        r = row // n_tok
        cols = tl.arange(0, BLOCK)
        ok = cols < H
        base = row.to(tl.int64) * H
        h = tl.load(h_ptr + base + cols, mask=ok, other=0.0).to(tl.float32)
        o = tl.load(o_ptr + base + cols, mask=ok, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + r * stride_g + cols, mask=ok, other=0.0).to(tl.float32)
        x = h + g * o
        if H_DOWN:  # a bf16 stream: round to nearest even, as PyTorch's .to()
            tl.store(hout_ptr + base + cols, x.to(hout_ptr.dtype.element_ty, fp_downcast_rounding="rtne"),
                     mask=ok)
        else:
            tl.store(hout_ptr + base + cols, x, mask=ok)
        mean = tl.sum(x, 0) / H
        d = tl.where(ok, x - mean, 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(d * d, 0) / H + eps)
        shift = tl.load(ss_ptr + r * stride_ss + cols, mask=ok, other=0.0).to(tl.float32)
        scale = tl.load(ss_ptr + r * stride_ss + H + cols, mask=ok, other=0.0).to(tl.float32)
        y = d * rstd * (1.0 + scale) + shift
        tl.store(m_ptr + base + cols, y.to(m_ptr.dtype.element_ty, fp_downcast_rounding="rtne"), mask=ok)

    @triton.jit
    def _attn_item(qkv_ptr, out_ptr, item, N, stride_qr, stride_qn, stride_or, stride_on, qk_scale,
                   H: tl.constexpr, D: tl.constexpr, BLOCK_N: tl.constexpr, DA: tl.constexpr,
                   DB: tl.constexpr):
        # one (row, head): _short_attn_kernel's arithmetic; DB > 0 splits the head dim into DA
        # (a power of two <= D, unmasked) and DB (the rest, padded to >= 16 for tl.dot)
        r = item // H
        h = item % H
        offs_n = tl.arange(0, BLOCK_N)
        n_ok = offs_n[:, None] < N
        offs_a = tl.arange(0, DA)
        qrow = qkv_ptr + r * stride_qr + offs_n[:, None] * stride_qn + h * D
        orow = out_ptr + r * stride_or + offs_n[:, None] * stride_on + h * D
        if DB == 0:
            mask = n_ok & (offs_a[None, :] < D)
            q = tl.load(qrow + offs_a[None, :], mask=mask, other=0.0)
            k = tl.load(qrow + H * D + offs_a[None, :], mask=mask, other=0.0)
            v = tl.load(qrow + 2 * H * D + offs_a[None, :], mask=mask, other=0.0)
            s = tl.dot(q, tl.trans(k))
        else:
            offs_b = DA + tl.arange(0, DB)
            mask_b = n_ok & (offs_b[None, :] < D)
            qa = tl.load(qrow + offs_a[None, :], mask=n_ok, other=0.0)
            ka = tl.load(qrow + H * D + offs_a[None, :], mask=n_ok, other=0.0)
            va = tl.load(qrow + 2 * H * D + offs_a[None, :], mask=n_ok, other=0.0)
            qb = tl.load(qrow + offs_b[None, :], mask=mask_b, other=0.0)
            kb = tl.load(qrow + H * D + offs_b[None, :], mask=mask_b, other=0.0)
            vb = tl.load(qrow + 2 * H * D + offs_b[None, :], mask=mask_b, other=0.0)
            s = tl.dot(qb, tl.trans(kb), tl.dot(qa, tl.trans(ka)))
        s = s * qk_scale                                 # log2 domain: qk_scale = log2(e)/sqrt(d)
        s = tl.where(offs_n[None, :] < N, s, float("-inf"))
        p = tl.math.exp2(s - tl.max(s, 1)[:, None])
        denom = tl.sum(p, 1)
        if DB == 0:
            o = tl.dot(p.to(v.dtype), v) / denom[:, None]
            tl.store(orow + offs_a[None, :], o.to(out_ptr.dtype.element_ty), mask=mask)
        else:
            p = p.to(va.dtype)
            oa = tl.dot(p, va) / denom[:, None]
            tl.store(orow + offs_a[None, :], oa.to(out_ptr.dtype.element_ty), mask=n_ok)
            ob = tl.dot(p, vb) / denom[:, None]
            tl.store(orow + offs_b[None, :], ob.to(out_ptr.dtype.element_ty), mask=mask_b)

    @triton.jit
    def _short_attn_items_kernel(qkv_ptr, out_ptr, N, stride_qr, stride_qn, stride_or, stride_on,
                                 qk_scale, H: tl.constexpr, D: tl.constexpr,
                                 BLOCK_N: tl.constexpr, DA: tl.constexpr, DB: tl.constexpr,
                                 ITEMS: tl.constexpr, STAGES: tl.constexpr,
                                 UNROLL: tl.constexpr):
        # ITEMS consecutive (row, head) pairs: the heads of a row, then the next row's
        first = tl.program_id(0) * ITEMS
        if UNROLL:
            for i in tl.static_range(ITEMS):
                _attn_item(qkv_ptr, out_ptr, first + i, N, stride_qr, stride_qn, stride_or,
                           stride_on, qk_scale, H, D, BLOCK_N, DA, DB)
        else:  # a loop Triton's pipeliner can prefetch (STAGES-deep) while the dots run
            for i in tl.range(0, ITEMS, num_stages=STAGES):
                _attn_item(qkv_ptr, out_ptr, first + i, N, stride_qr, stride_qn, stride_or,
                           stride_on, qk_scale, H, D, BLOCK_N, DA, DB)

    @triton.jit
    def _ld32(ptrs, ok, MASKED: tl.constexpr, EVICT: tl.constexpr):
        if MASKED:
            x = tl.load(ptrs, mask=ok, other=0.0, eviction_policy=EVICT)
        else:
            x = tl.load(ptrs, eviction_policy=EVICT)
        return x.to(tl.float32)

    @triton.jit
    def _ld_product(o_ptr, bias_ptr, base, cols, ok, stride_os, MASKED: tl.constexpr,
                    STREAM: tl.constexpr, KEEP: tl.constexpr, O_PARTS: tl.constexpr):
        # the product's output at rows ``base`` and ``cols``, in float32: one load, or the bias
        # plus the split-K partial sums in a fixed order
        if O_PARTS == 0:
            return _ld32(o_ptr + base + cols[None, :], ok[None, :], MASKED, STREAM)
        acc = _ld32(bias_ptr + cols, ok, MASKED, KEEP)[None, :]
        for s in tl.static_range(O_PARTS):
            acc += _ld32(o_ptr + s * stride_os + base + cols[None, :], ok[None, :], MASKED, STREAM)
        return acc

    @triton.jit
    def _st_round(ptrs, x, ok, MASKED: tl.constexpr, DOWN: tl.constexpr):
        if DOWN:  # a 16-bit output: round to nearest even, as PyTorch's .to()
            x = x.to(ptrs.dtype.element_ty, fp_downcast_rounding="rtne")
        if MASKED:
            tl.store(ptrs, x, mask=ok)
        else:
            tl.store(ptrs, x)

    @triton.jit
    def _residual_norm_rows_kernel(h_ptr, o_ptr, g_ptr, ss_ptr, hout_ptr, m_ptr, bias_ptr, n_tok,
                                   stride_g, stride_ss, stride_os, eps, H: tl.constexpr,
                                   ROWS: tl.constexpr, BLOCK_A: tl.constexpr,
                                   BLOCK_B: tl.constexpr, H_DOWN: tl.constexpr,
                                   M_DOWN: tl.constexpr, EARLY: tl.constexpr,
                                   STREAM: tl.constexpr, KEEP: tl.constexpr,
                                   O_PARTS: tl.constexpr):
        # ROWS token rows of one sequence per program (ROWS divides n_tok), each row in two
        # column parts: [0, BLOCK_A) and, if BLOCK_B > 0, BLOCK_A + [0, BLOCK_B); a part is
        # masked only where it reaches past H. gate, shift, scale: one load per program,
        # broadcast over its rows. O_PARTS > 0: o is a split-K product's O_PARTS float32
        # partial sums (stride_os apart) still without its bias, summed here.
        row0 = tl.program_id(0) * ROWS
        r = row0 // n_tok
        base = (row0 + tl.arange(0, ROWS)).to(tl.int64)[:, None] * H
        g_row = g_ptr + r * stride_g
        s_row = ss_ptr + r * stride_ss
        MA: tl.constexpr = BLOCK_A > H
        ca = tl.arange(0, BLOCK_A)
        ok_a = ca < H
        ha = _ld32(h_ptr + base + ca[None, :], ok_a[None, :], MA, STREAM)
        oa = _ld_product(o_ptr, bias_ptr, base, ca, ok_a, stride_os, MA, STREAM, KEEP, O_PARTS)
        ga = _ld32(g_row + ca, ok_a, MA, KEEP)
        if BLOCK_B > 0:
            MB: tl.constexpr = BLOCK_A + BLOCK_B > H
            cb = BLOCK_A + tl.arange(0, BLOCK_B)
            ok_b = cb < H
            hb = _ld32(h_ptr + base + cb[None, :], ok_b[None, :], MB, STREAM)
            ob = _ld_product(o_ptr, bias_ptr, base, cb, ok_b, stride_os, MB, STREAM, KEEP, O_PARTS)
            gb = _ld32(g_row + cb, ok_b, MB, KEEP)
        if EARLY:  # shift and scale in flight during the reductions
            sha = _ld32(s_row + ca, ok_a, MA, KEEP)
            sca = _ld32(s_row + H + ca, ok_a, MA, KEEP)
            if BLOCK_B > 0:
                shb = _ld32(s_row + cb, ok_b, MB, KEEP)
                scb = _ld32(s_row + H + cb, ok_b, MB, KEEP)
        xa = ha + ga[None, :] * oa
        _st_round(hout_ptr + base + ca[None, :], xa, ok_a[None, :], MA, H_DOWN)
        total = tl.sum(xa, 1)
        if BLOCK_B > 0:
            xb = hb + gb[None, :] * ob
            _st_round(hout_ptr + base + cb[None, :], xb, ok_b[None, :], MB, H_DOWN)
            total += tl.sum(xb, 1)
        mean = (total / H)[:, None]
        da = xa - mean
        if MA:
            da = tl.where(ok_a[None, :], da, 0.0)
        sq = tl.sum(da * da, 1)
        if BLOCK_B > 0:
            db = xb - mean
            if MB:
                db = tl.where(ok_b[None, :], db, 0.0)
            sq += tl.sum(db * db, 1)
        rstd = (1.0 / tl.sqrt(sq / H + eps))[:, None]
        if not EARLY:
            sha = _ld32(s_row + ca, ok_a, MA, KEEP)
            sca = _ld32(s_row + H + ca, ok_a, MA, KEEP)
            if BLOCK_B > 0:
                shb = _ld32(s_row + cb, ok_b, MB, KEEP)
                scb = _ld32(s_row + H + cb, ok_b, MB, KEEP)
        ya = da * rstd * (1.0 + sca[None, :]) + sha[None, :]
        _st_round(m_ptr + base + ca[None, :], ya, ok_a[None, :], MA, M_DOWN)
        if BLOCK_B > 0:
            yb = db * rstd * (1.0 + scb[None, :]) + shb[None, :]
            _st_round(m_ptr + base + cb[None, :], yb, ok_b[None, :], MB, M_DOWN)

    @triton.jit
    def _gelu_tanh(x):
        # 0.5·x·(1 + tanh(√(2/π)(x + 0.044715x³))), tanh through exp2 (PyTorch's tanh GELU)
        u = 0.7978845608028654 * (x + 0.044715 * x * x * x)
        t = 1.0 - 2.0 / (tl.math.exp2(2.8853900817779268 * u) + 1.0)
        return 0.5 * x * (1.0 + t)

    @triton.jit
    def _skinny_kernel(a_ptr, w_ptr, b_ptr, out_ptr, M, N, K,
                       stride_am, stride_wn, stride_os, stride_om,
                       K_PER_SPLIT: tl.constexpr,   # a loop bound as constexpr: Triton 3.6's
                       # interpreter (with NumPy 2) cannot take a runtime one; a few shapes only
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       SPLIT: tl.constexpr, ACT: tl.constexpr):
        pid_n = tl.program_id(0)
        pid_s = tl.program_id(1)
        offs_m = tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        k0 = pid_s * K_PER_SPLIT
        a_ptrs = a_ptr + offs_m[:, None] * stride_am + (k0 + offs_k)[None, :]
        w_ptrs = w_ptr + offs_n[None, :] * stride_wn + (k0 + offs_k)[:, None]
        m_ok = offs_m[:, None] < M
        n_ok = offs_n[None, :] < N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for kk in range(0, K_PER_SPLIT, BLOCK_K):
            a = tl.load(a_ptrs, mask=m_ok, other=0.0)
            w = tl.load(w_ptrs, mask=n_ok, other=0.0)
            acc = tl.dot(a, w, acc)
            a_ptrs += BLOCK_K
            w_ptrs += BLOCK_K
        out_mask = m_ok & n_ok
        if SPLIT == 1:
            acc += tl.load(b_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
            if ACT == 1:
                acc = _gelu_tanh(acc)
            tl.store(out_ptr + offs_m[:, None] * stride_om + offs_n[None, :],
                     acc.to(out_ptr.dtype.element_ty), mask=out_mask)
        else:
            tl.store(out_ptr + pid_s * stride_os + offs_m[:, None] * stride_om + offs_n[None, :],
                     acc, mask=out_mask)

    @triton.jit
    def _split_sum_kernel(part_ptr, b_ptr, out_ptr, MN, N, SPLIT: tl.constexpr, ACT: tl.constexpr,
                          BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        ok = offs < MN
        acc = tl.load(b_ptr + offs % N, mask=ok, other=0.0).to(tl.float32)
        for s in tl.static_range(SPLIT):
            acc += tl.load(part_ptr + s * MN + offs, mask=ok, other=0.0)
        if ACT == 1:
            acc = _gelu_tanh(acc)
        tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=ok)


def _next_pow2(n: int, least: int = 16) -> int:
    return max(least, 1 << max(0, int(n) - 1).bit_length())


def short_attention_ok(tokens: int, head_dim: int) -> bool:
    return AVAILABLE and tokens <= 128 and head_dim <= 128


# How ``short_attention`` launches (``ATTN_VARIANTS`` names the ones the benchmark times):
# items: (row, head) pairs per program (reduced to a divisor of rows·heads); unroll: those in
# an unrolled loop, else a tl.range loop pipelined ``stages`` deep; split_d: a head dim that is
# no power of two as a power-of-two part + a 16-wide rest; num_warps None: the first kernel's
# rule (4 up to a 64×128 tile, else 8). items=1, split_d=False, num_warps=None is that kernel
# itself (``_short_attn_kernel``, unchanged). Persistent grids (a few programs per SM looping
# over the pairs) measured 0.86-1.06x "base" at 64 tokens and no better than "split w2" at 32
# on the H200 (2026-12-02): not kept.
ATTN_BASE = dict(items=1, unroll=True, stages=1, split_d=False, num_warps=None)
ATTN_VARIANTS = {
    "base": ATTN_BASE,
    "w2": dict(ATTN_BASE, num_warps=2),
    "w8": dict(ATTN_BASE, num_warps=8),
    "split": dict(ATTN_BASE, split_d=True, num_warps=4),
    "split w2": dict(ATTN_BASE, split_d=True, num_warps=2),
    "split w8": dict(ATTN_BASE, split_d=True, num_warps=8),
    "split i2": dict(ATTN_BASE, split_d=True, items=2, num_warps=4),
    "split i2 pipe2": dict(ATTN_BASE, split_d=True, items=2, unroll=False, stages=2, num_warps=4),
    "split i4 pipe2": dict(ATTN_BASE, split_d=True, items=4, unroll=False, stages=2, num_warps=4),
    "split i2 pipe2 w8": dict(ATTN_BASE, split_d=True, items=2, unroll=False, stages=2, num_warps=8),
}
# The default, and per sequence length (tokens) overrides of it, as measured on the H200
# (2026-12-02, `python -m softvq_demo.bench.memkernels`, speed-up over "base"): 64 tokens
# "split" 1.07x (72 = 64 + 16 lanes: a 64x80 tile instead of 64x128, 88 instead of 107
# registers, 5 programs per SM instead of 4); 32 tokens "split w2" 1.15x (two warps hold the
# 32x80 tile).
ATTN_LAUNCH = dict(ATTN_VARIANTS["split"])
ATTN_LAUNCH_BY_TOKENS: dict = {32: dict(ATTN_VARIANTS["split w2"])}


def _short_attention_impl(qkv: torch.Tensor, heads: int, launch: Optional[dict] = None) -> torch.Tensor:
    qkv = qkv if qkv.stride(-1) == 1 else qkv.contiguous()
    r, n, three_hd = qkv.shape
    launch = ATTN_LAUNCH_BY_TOKENS.get(n, ATTN_LAUNCH) if launch is None else launch
    hd = three_hd // 3
    d = hd // heads
    out = torch.empty(r, n, hd, device=qkv.device, dtype=qkv.dtype)
    block_n, block_d = _next_pow2(n), _next_pow2(d)
    warps = launch.get("num_warps") or (4 if block_n * block_d <= 64 * 128 else 8)
    scale = math.log2(math.e) / math.sqrt(d)
    items = max(1, int(launch.get("items", 1)))
    while (r * heads) % items:
        items //= 2
    da, db = block_d, 0
    if launch.get("split_d") and d > 16 and d & (d - 1):
        da = 1 << (d.bit_length() - 1)             # 72 -> 64 + 16 (8 of them masked)
        db = _next_pow2(d - da)
    if items == 1 and db == 0 and launch.get("unroll", True):
        _short_attn_kernel[(r * heads,)](qkv, out, n, qkv.stride(0), qkv.stride(1), out.stride(0),
                                         out.stride(1), scale, H=heads, D=d, BLOCK_N=block_n,
                                         BLOCK_D=block_d, num_warps=warps)
        return out
    stages = int(launch.get("stages", 1))
    _short_attn_items_kernel[(r * heads // items,)](
        qkv, out, n, qkv.stride(0), qkv.stride(1), out.stride(0), out.stride(1), scale,
        H=heads, D=d, BLOCK_N=block_n, DA=da, DB=db, ITEMS=items, STAGES=stages,
        UNROLL=bool(launch.get("unroll", True)), num_warps=warps, num_stages=max(1, stages))
    return out


def residual_norm_reference(h: torch.Tensor, o: torch.Tensor, gate: torch.Tensor,
                            shift_scale: torch.Tensor, eps: float = 1e-6,
                            bias: Optional[torch.Tensor] = None
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """What ``residual_norm`` computes, in PyTorch: x = h + gate·o in float32 (gate, shift, scale
    per sequence: R×H, R×2H; h, o: R×N×H), stored in h's dtype, and LayerNorm(x)·(1 + scale) +
    shift rounded to o's dtype (the next matmul's input). The block's own arithmetic.
    With ``bias``, o is S×R×N×H partial sums (``split_product``): o = bias + Σ parts in float32,
    and the output takes the bias's dtype."""
    hidden = h.shape[-1]
    out_dtype = o.dtype if bias is None else bias.dtype
    o = o.float() if bias is None else bias.float() + o.float().sum(0)
    x = h.float() + gate.float().unsqueeze(1) * o
    shift, scale = shift_scale.float().unsqueeze(1).chunk(2, dim=-1)
    m = torch.nn.functional.layer_norm(x, (hidden,), eps=eps) * (1 + scale) + shift
    return x.to(h.dtype), m.to(out_dtype)


# How ``residual_norm`` launches (``NORM_VARIANTS``: the ones the benchmark times): rows:
# token rows per program (reduced to a power of two dividing the sequence length); split: the
# row as a power-of-two part + an unmasked rest (1152 = 1024 + 128) instead of one padded
# block; early: shift and scale loaded before the reductions; evict: h and o loaded
# evict-first, the modulation evict-last; num_warps None: the first kernel's rule (4 up to a
# 2048 block). rows=1 and nothing else set (split, early, evict) is that kernel itself
# (``_residual_norm_kernel``, unchanged). Persistent grids (a few programs per SM looping over
# row blocks, the next block's loads in flight) measured 0.70-1.04x "base" on the H200
# (2026-12-02): not kept.
NORM_BASE = dict(rows=1, split=False, early=False, evict=False, num_warps=None)
NORM_VARIANTS = {
    "base": NORM_BASE,
    "r1 pad early": dict(NORM_BASE, early=True),
    "r2 split early": dict(NORM_BASE, rows=2, split=True, early=True, num_warps=4),
    "r2 split early w2": dict(NORM_BASE, rows=2, split=True, early=True, num_warps=2),
    "r4 split late": dict(NORM_BASE, rows=4, split=True, num_warps=4),
    "r4 split early": dict(NORM_BASE, rows=4, split=True, early=True, num_warps=4),
    "r4 split early w2": dict(NORM_BASE, rows=4, split=True, early=True, num_warps=2),
    "r4 split early w8": dict(NORM_BASE, rows=4, split=True, early=True, num_warps=8),
    "r4 split early evict": dict(NORM_BASE, rows=4, split=True, early=True, evict=True, num_warps=4),
    "r4 pad early w8": dict(NORM_BASE, rows=4, early=True, num_warps=8),
    "r8 split early": dict(NORM_BASE, rows=8, split=True, early=True, num_warps=4),
    "r8 split early w8": dict(NORM_BASE, rows=8, split=True, early=True, num_warps=8),
}
# The default, and per sequence length (tokens) overrides of it, as measured on the H200
# (2026-12-02, `bench.memkernels`, bf16 and float32 streams, 2048-8192 rows): "r1 pad early"
# (one row per program as before, shift and scale loaded before the reductions) 1.06x over
# "base" at 64 tokens and 1.10x at 32 (geometric means), 0.87x / 0.85x a copy of the same bytes;
# the 4-row and 1024 + 128 split variants, chosen from their sm_90 compile figures, measured
# 0.80-1.0x (the split's layout conversion through shared memory costs more than the idle lanes).
NORM_LAUNCH = dict(NORM_VARIANTS["r1 pad early"])
NORM_LAUNCH_BY_TOKENS: dict = {}


def _residual_norm_impl(h, o, gate, shift_scale, launch: Optional[dict] = None,
                        bias: Optional[torch.Tensor] = None):
    """``bias`` given: o is a split-K product's S×R×N×H float32 partial sums without the bias
    (``split_product``); the next matmul's input then takes the bias's dtype."""
    r, n, hidden = h.shape
    launch = NORM_LAUNCH_BY_TOKENS.get(n, NORM_LAUNCH) if launch is None else launch
    h = h.contiguous()
    o = o.contiguous()
    gate = gate if gate.stride(-1) == 1 else gate.contiguous()
    shift_scale = shift_scale if shift_scale.stride(-1) == 1 else shift_scale.contiguous()
    h_out = torch.empty_like(h)
    parts = 0 if bias is None else int(o.shape[0])
    m = torch.empty(r, n, hidden, device=h.device, dtype=o.dtype if bias is None else bias.dtype)
    block = _next_pow2(hidden)
    warps = launch.get("num_warps") or (4 if block <= 2048 else 8)
    rows = 1 << (max(1, int(launch.get("rows", 1))).bit_length() - 1)
    while n % rows:
        rows //= 2
    split, early, evict = bool(launch.get("split")), bool(launch.get("early")), bool(launch.get("evict"))
    if rows == 1 and not (split or early or evict or parts):
        _residual_norm_kernel[(r * n,)](h, o, gate, shift_scale, h_out, m, n, gate.stride(0),
                                        shift_scale.stride(0), 1e-6, H=hidden, BLOCK=block,
                                        H_DOWN=h.dtype != torch.float32, num_warps=warps)
        return h_out, m
    block_a, block_b = block, 0
    if split and hidden & (hidden - 1):
        block_a = 1 << (hidden.bit_length() - 1)    # 1152 -> 1024 + 128
        block_b = _next_pow2(hidden - block_a, least=1)
    _residual_norm_rows_kernel[(r * n // rows,)](
        h, o, gate, shift_scale, h_out, m, o if bias is None else bias, n, gate.stride(0),
        shift_scale.stride(0), o.stride(0) if parts else 0, 1e-6,
        H=hidden, ROWS=rows, BLOCK_A=block_a, BLOCK_B=block_b, H_DOWN=h.dtype != torch.float32,
        M_DOWN=m.dtype != torch.float32, EARLY=early, STREAM="evict_first" if evict else "",
        KEEP="evict_last" if evict else "", O_PARTS=parts, num_warps=warps)
    return h_out, m


def split_product(x: torch.Tensor, w: torch.Tensor, parts: int) -> torch.Tensor:
    """x·wᵀ as ``parts`` float32 partial sums over equal slices of the reduction (S×M×N, no
    bias): one batched cuBLAS call with ``parts`` times the tiles of a plain product. For few
    rows (batch-1 sampling) a plain product leaves most SMs idle and each tile's reduction is
    long; the consumer (``residual_norm``) adds the partials and the bias in float32."""
    m, k = x.shape
    n = w.shape[0]
    a3 = x.view(m, parts, k // parts).transpose(0, 1)           # S × M × K/S, row stride K
    w3 = w.view(n, parts, k // parts).permute(1, 2, 0)          # S × K/S × N (w's own memory)
    if x.is_cuda:
        return torch.bmm(a3, w3, out_dtype=torch.float32)
    return torch.bmm(a3.float(), w3.float())


# (M, N, K) -> launch config; filled by pick_linear
LINEAR_CONFIGS: dict = {}


def _skinny_impl(a: torch.Tensor, w: torch.Tensor, b: torch.Tensor, act: int, block_n: int,
                 split: int, block_k: int) -> torch.Tensor:
    a = a if a.stride(-1) == 1 else a.contiguous()
    w = w if w.stride(-1) == 1 else w.contiguous()
    m, k = a.shape
    n = w.shape[0]
    block_m = _next_pow2(m)
    k_per = k // split
    grid = (triton.cdiv(n, block_n), split)
    out = torch.empty(m, n, device=a.device, dtype=a.dtype)
    warps = 4 if block_m * block_n <= 64 * 64 else 8
    if split == 1:
        _skinny_kernel[grid](a, w, b, out, m, n, k, a.stride(0), w.stride(0), 0, out.stride(0),
                             K_PER_SPLIT=k_per, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, SPLIT=1, ACT=act,
                             num_warps=warps, num_stages=4)
        return out
    part = torch.empty(split, m, n, device=a.device, dtype=torch.float32)
    _skinny_kernel[grid](a, w, b, part, m, n, k, a.stride(0), w.stride(0), part.stride(0),
                         part.stride(1), K_PER_SPLIT=k_per, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
                         SPLIT=split, ACT=act, num_warps=warps, num_stages=4)
    block = 1024
    _split_sum_kernel[(triton.cdiv(m * n, block),)](part, b, out, m * n, n, SPLIT=split, ACT=act,
                                                    BLOCK=block)
    return out


def skinny_configs(m: int, n: int, k: int) -> list[tuple[int, int, int]]:
    """(block_n, split, block_k) candidates that divide the shape evenly (K by split·block_k)."""
    out = []
    for block_n in (32, 64):
        for split in (1, 2, 4, 8):
            per = k // split
            block_k = 128 if per % 128 == 0 else 64
            if k % split == 0 and per % block_k == 0 and n % block_n == 0:
                out.append((block_n, split, block_k))
    return out


if AVAILABLE:
    @torch.library.custom_op("softvq::short_attention", mutates_args=())
    def short_attention(qkv: torch.Tensor, heads: int) -> torch.Tensor:
        """qkv: R×N×3HD (rows of the qkv product, last dim contiguous) -> R×N×HD."""
        return _short_attention_impl(qkv, heads)

    @short_attention.register_fake
    def _(qkv, heads):
        r, n, three_hd = qkv.shape
        return qkv.new_empty(r, n, three_hd // 3)

    @torch.library.custom_op("softvq::skinny_linear", mutates_args=())
    def skinny_linear(a: torch.Tensor, w: torch.Tensor, b: torch.Tensor, act: int, block_n: int,
                      split: int, block_k: int) -> torch.Tensor:
        """act(a·wᵀ + b) for a: M×K (M ≤ 128), w: N×K, b: N; act 1 = tanh GELU."""
        return _skinny_impl(a, w, b, act, block_n, split, block_k)

    @skinny_linear.register_fake
    def _(a, w, b, act, block_n, split, block_k):
        return a.new_empty(a.shape[0], w.shape[0])
    @torch.library.custom_op("softvq::residual_norm", mutates_args=())
    def residual_norm(h: torch.Tensor, o: torch.Tensor, gate: torch.Tensor,
                      shift_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``residual_norm_reference`` in one pass: one read of h and o, one write of each output."""
        return _residual_norm_impl(h, o, gate, shift_scale)

    @residual_norm.register_fake
    def _(h, o, gate, shift_scale):
        return torch.empty_like(h), h.new_empty(h.shape, dtype=o.dtype)

    @torch.library.custom_op("softvq::residual_norm_parts", mutates_args=())
    def residual_norm_parts(h: torch.Tensor, parts: torch.Tensor, bias: torch.Tensor,
                            gate: torch.Tensor, shift_scale: torch.Tensor
                            ) -> tuple[torch.Tensor, torch.Tensor]:
        """``residual_norm`` of a split-K product: o = bias + Σ parts (S×R×N×H float32)."""
        return _residual_norm_impl(h, parts, gate, shift_scale, bias=bias)

    @residual_norm_parts.register_fake
    def _(h, parts, bias, gate, shift_scale):
        return torch.empty_like(h), h.new_empty(h.shape, dtype=bias.dtype)
else:  # pragma: no cover
    short_attention = None
    skinny_linear = None
    residual_norm = None
    residual_norm_parts = None


def residual_norm_op(h, o, gate, shift_scale, bias: Optional[torch.Tensor] = None):
    """The fused kernel on CUDA, ``residual_norm_reference`` elsewhere (same contract; with
    ``bias``, o is a split-K product's partial sums)."""
    if AVAILABLE and h.is_cuda:
        if bias is not None:
            return torch.ops.softvq.residual_norm_parts(h, o, bias, gate, shift_scale)
        return torch.ops.softvq.residual_norm(h, o, gate, shift_scale)
    return residual_norm_reference(h, o, gate, shift_scale, bias=bias)


NORM_CHECKS: dict = {}


def residual_norm_ok(device: torch.device, hidden: int, res_dtype: torch.dtype,
                     dtype: torch.dtype) -> bool:
    """Whether the fused residual + LayerNorm kernel may run here: Triton present, CUDA,
    ``SOFTVQ_FUSED_NORM`` not 0, and (once per process and shape) it matches
    ``residual_norm_reference`` on random data (the stream to 1e-6, the bf16 output to 1e-2)
    and replays from a CUDA graph."""
    if not AVAILABLE or device.type != "cuda" or \
            os.environ.get("SOFTVQ_FUSED_NORM", "1").strip().lower() in ("0", "off", "no", "false"):
        return False
    key = (str(device), hidden, res_dtype, dtype)
    if key not in NORM_CHECKS:
        ok = False
        try:
            with torch.no_grad(), torch.cuda.device(device):
                g = torch.Generator(device=device).manual_seed(0)
                r, n = 3, 40
                h = torch.randn(r, n, hidden, device=device, generator=g).to(res_dtype)
                o = torch.randn(r, n, hidden, device=device, generator=g).to(dtype)
                mod = torch.randn(r, 7 * hidden, device=device, generator=g).to(dtype)
                gate, ss = mod[:, hidden:2 * hidden], mod[:, 4 * hidden:6 * hidden]  # strided views
                ref_h, ref_m = residual_norm_reference(h, o, gate, ss)
                out_h, out_m = residual_norm(h, o, gate, ss)
                # tight: both round to nearest even, so only reduction order may flip an ulp
                tol_h = 1e-6 if res_dtype == torch.float32 else 1e-3
                ok = (float((out_h.float() - ref_h.float()).norm() / ref_h.float().norm()) < tol_h
                      and float((out_m.float() - ref_m.float()).norm() / ref_m.float().norm()) < 1e-3)
                if ok:
                    graph_ms(lambda: residual_norm(h, o, gate, ss), inner=2, reps=1)
        except Exception:  # pragma: no cover - depends on the GPU stack
            ok = False
        NORM_CHECKS[key] = ok
    return NORM_CHECKS[key]


def graph_ms(fn, inner: int = 20, reps: int = 5) -> float:
    """Median ms per call of ``fn`` replayed from a CUDA graph of ``inner`` calls: small kernels
    timed by eager launches would measure Python's launch overhead, not the kernel."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
        fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with no_collection(), torch.cuda.graph(graph, capture_error_mode="thread_local"):
        for _ in range(inner):
            fn()
    graph.replay()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / inner)
    del graph
    return sorted(times)[len(times) // 2]


def pick_linear(m: int, n: int, k: int, act: int, device: torch.device, dtype: torch.dtype,
                copies: int = 12) -> Optional[tuple[int, int, int]]:
    """The fastest of cuBLAS (None) and the skinny Triton configs for an M×K by K×N product with
    bias (and tanh GELU when act=1), timed once per process on ``copies`` weight copies (so that
    the weights come from device memory as in a 28-layer model, not from L2), each candidate
    checked against a float32 product first. Off unless ``SOFTVQ_SKINNY=1``: on the H200 no
    config beat cuBLAS by the 10% asked (2026-12-02: M=64-128 rows, best skinny 0.9-1.3x
    cuBLAS's time), so the default pays no probe."""
    key = (str(device), m, n, k, act, dtype)
    if key in LINEAR_CONFIGS:
        return LINEAR_CONFIGS[key]["pick"]
    record = {"pick": None, "ms": {}}
    LINEAR_CONFIGS[key] = record
    if not AVAILABLE or device.type != "cuda" or m > 128 or \
            os.environ.get("SOFTVQ_SKINNY", "0").strip().lower() in ("0", "off", "no", "false"):
        return None
    try:
        with torch.no_grad(), torch.cuda.device(device):
            g = torch.Generator(device=device).manual_seed(0)
            a = torch.randn(m, k, device=device, dtype=dtype, generator=g)
            ws = [torch.randn(n, k, device=device, dtype=dtype, generator=g) * k ** -0.5
                  for _ in range(copies)]
            b = torch.randn(n, device=device, dtype=dtype, generator=g) * 0.1
            ref = a.float() @ ws[0].float().t() + b.float()
            if act:
                ref = torch.nn.functional.gelu(ref, approximate="tanh")
            state = {"i": 0}

            def cublas():
                w = ws[state["i"] % copies]
                state["i"] += 1
                if act:
                    return torch._addmm_activation(b, a, w.t(), use_gelu=True)
                return torch.nn.functional.linear(a, w, b)

            def err(out):
                return float((out.float() - ref).norm() / ref.norm())

            state["i"] = 0
            record["rel_err_cublas"] = err(cublas())
            record["ms"]["cublas"] = graph_ms(cublas)
            for cfg in skinny_configs(m, n, k):
                def run(cfg=cfg):
                    w = ws[state["i"] % copies]
                    state["i"] += 1
                    return skinny_linear(a, w, b, act, *cfg)
                state["i"] = 0
                e = err(run())
                if not e < 1e-2:
                    record["ms"][str(cfg)] = f"rel err {e:.1e}"
                    continue
                record["ms"][str(cfg)] = graph_ms(run)
            timed = {c: t for c, t in record["ms"].items() if c != "cublas" and isinstance(t, float)}
            if timed:
                best = min(timed, key=timed.get)
                if timed[best] < 0.9 * record["ms"]["cublas"]:  # clearly faster, or keep cuBLAS
                    record["pick"] = tuple(int(x) for x in best.strip("()").split(","))
    except Exception as err:  # pragma: no cover - never let the probe break sampling
        record["error"] = f"{type(err).__name__}: {err}"
        record["pick"] = None
    return record["pick"]


# (device, rows, tokens, N, K, dtypes) -> record of pick_split
SPLIT_CONFIGS: dict = {}
SPLIT_CANDIDATES = (2, 3, 4, 6, 8)
SPLIT_MAX_ROWS = 128


def split_candidates(k: int) -> list[int]:
    """Split counts whose reduction slices are whole and 16-byte aligned (cuBLAS's batch stride)."""
    return [s for s in SPLIT_CANDIDATES if k % s == 0 and (k // s) % 8 == 0]


def pick_split(rows: int, tokens: int, n: int, k: int, device: torch.device, dtype: torch.dtype,
               res_dtype: torch.dtype, copies: int = 12) -> int:
    """0 for a plain cuBLAS product, else the number of split-K parts for an M×K by K×N product
    whose consumer is the fused residual + LayerNorm (proj, fc2 of a SiT block), at most
    ``SPLIT_MAX_ROWS`` rows. Timed once per process and shape as product + norm, graph replays
    on ``copies`` weight copies (the weights from device memory, as in a deep model); each split
    is checked against float32 first and picked only at ≤ 0.9x the plain pair's time.
    H200, 2026-12-02, 128 rows (products alone): SiT-XL's fc2 10.2 → 6.2 µs in 4 parts, proj
    4.7 → 3.9 µs. ``SOFTVQ_SPLITK=0`` turns it off."""
    key = (str(device), rows, tokens, n, k, dtype, res_dtype)
    if key in SPLIT_CONFIGS:
        return SPLIT_CONFIGS[key]["pick"]
    record = {"pick": 0, "us": {}}
    SPLIT_CONFIGS[key] = record
    if (not AVAILABLE or device.type != "cuda" or rows > SPLIT_MAX_ROWS or rows % tokens
            or os.environ.get("SOFTVQ_SPLITK", "1").strip().lower() in ("0", "off", "no", "false")):
        return 0
    try:
        with torch.no_grad(), torch.cuda.device(device):
            g = torch.Generator(device=device).manual_seed(0)
            r = rows // tokens
            a = torch.randn(rows, k, device=device, dtype=dtype, generator=g)
            ws = [torch.randn(n, k, device=device, dtype=dtype, generator=g) * k ** -0.5
                  for _ in range(copies)]
            b = torch.randn(n, device=device, dtype=dtype, generator=g) * 0.1
            h = torch.randn(r, tokens, n, device=device, generator=g).to(res_dtype)
            mod = torch.randn(r, 3 * n, device=device, generator=g).to(dtype)
            gate, ss = mod[:, :n], mod[:, n:]
            ref_h, ref_m = residual_norm_reference(h, (a.float() @ ws[0].float().t() + b.float())
                                                   .view(r, tokens, n), gate, ss)
            state = {"i": 0}

            def weight():
                state["i"] += 1
                return ws[state["i"] % copies]

            def plain():
                o = torch.nn.functional.linear(a, weight(), b).view(r, tokens, n)
                return residual_norm(h, o, gate, ss)

            def err(out):
                return max(float((x.float() - y.float()).norm() / y.float().norm())
                           for x, y in zip(out, (ref_h, ref_m)))

            state["i"] = -1                              # weight() -> ws[0]: the reference's
            record["rel_err"] = {"plain": err(plain())}
            record["us"]["plain"] = 1000 * graph_ms(plain)
            for parts in split_candidates(k):
                def split(parts=parts):
                    p = split_product(a, weight(), parts).view(parts, r, tokens, n)
                    return residual_norm_parts(h, p, b, gate, ss)
                state["i"] = -1                          # weight() -> ws[0]: the reference's
                e = err(split())
                record["rel_err"][parts] = e
                if e < 1e-2:
                    record["us"][parts] = 1000 * graph_ms(split)
            timed = {s: t for s, t in record["us"].items() if s != "plain"}
            if timed:
                best = min(timed, key=timed.get)
                if timed[best] <= 0.9 * record["us"]["plain"]:
                    record["pick"] = int(best)
    except Exception as error:  # pragma: no cover - never let the probe break sampling
        record["error"] = f"{type(error).__name__}: {error}"
        record["pick"] = 0
    return record["pick"]
