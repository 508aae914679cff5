"""SiT's fc1 (x·wᵀ + b, then tanh GELU) as a persistent Triton GEMM, for many rows (B=64 steps).

cuBLAS's fused GELU_BIAS epilogue runs SiT-XL's fc1 (K=1152, N=4608) at ~570 TFLOP/s at 4096
rows and ~650 at 8192 (H200, 2026-12-02), against ~640 / 700 for the same product without the
GELU: the epilogue's tanh sits on the critical path of each tile. Here one program per SM walks
its tiles (TMA loads of both operands into shared memory, wgmma through ``tl.dot``), and the
epilogue evaluates tanh with the hardware's ``tanh.approx.f32`` (max relative error ~2⁻¹¹, under
the output's bf16 rounding of 2⁻⁹), in two column halves to keep registers free; measured 5% faster
than cuBLAS at 4096 rows and 2% at 8192.

``pick_fc1`` times the configurations against cuBLAS once per process and shape (graph replays,
rotating weights so they come from HBM), after checking each against a float32 product; the
kernel runs only where it was clearly faster, and anything unexpected (no TMA descriptors in this
Triton, a compile failure, a capture in progress) keeps cuBLAS. ``SOFTVQ_TRITON_FC1=0`` turns it
off.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

try:
    import triton
    import triton.language as tl
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover - CPU-only installs, or a Triton without host descriptors
    triton = None
    tl = None
    TensorDescriptor = None

AVAILABLE = triton is not None and TensorDescriptor is not None
MIN_ROWS = 2048       # measured gains at 4096-8192 rows; below, the probe's cost (a compile
                      # and a timing once per row count) is not worth its few microseconds
GAIN = 0.97           # the Triton kernel must be at least 3% faster to be used

if AVAILABLE:
    @triton.jit
    def _gelu_fast(x):
        u = 0.7978845608028654 * (x + 0.044715 * x * x * x)
        t = tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [u], dtype=tl.float32,
                                      is_pure=True, pack=1)
        return 0.5 * x * (1.0 + t)

    @triton.jit
    def _fc1_gelu_kernel(a_desc, w_desc, b_ptr, c_desc, M, N, K, BLOCK_M: tl.constexpr,
                         BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                         NUM_PROGRAMS: tl.constexpr):
        num_pid_m = tl.cdiv(M, BLOCK_M)
        num_pid_n = tl.cdiv(N, BLOCK_N)
        k_tiles = tl.cdiv(K, BLOCK_K)
        group = GROUP_M * num_pid_n
        for tile in tl.range(tl.program_id(0), num_pid_m * num_pid_n, NUM_PROGRAMS, flatten=True):
            # grouped order: programs working at the same time share rows of a and columns of w in L2
            first_m = (tile // group) * GROUP_M
            rows_in_group = tl.minimum(num_pid_m - first_m, GROUP_M)
            off_m = (first_m + (tile % group) % rows_in_group) * BLOCK_M
            off_n = ((tile % group) // rows_in_group) * BLOCK_N
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for ki in range(k_tiles):
                a = a_desc.load([off_m, ki * BLOCK_K])
                w = w_desc.load([off_n, ki * BLOCK_K])
                acc = tl.dot(a, w.T, acc)
            cols = off_n + tl.arange(0, BLOCK_N)
            acc += tl.load(b_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
            halves = tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1))
            left, right = tl.split(halves)
            c_desc.store([off_m, off_n], _gelu_fast(left).to(c_desc.dtype))
            c_desc.store([off_m, off_n + BLOCK_N // 2], _gelu_fast(right).to(c_desc.dtype))


# (BLOCK_M, BLOCK_N, BLOCK_K, num_stages, num_warps): the fastest two at 4096 and 8192 rows
CONFIGS = ((128, 256, 64, 4, 8), (128, 128, 64, 5, 4))
PICKS: dict = {}        # (device, M, N, K, dtype) -> {"pick": config or None, "us": {...}, ...}


def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def fc1_gelu(a: torch.Tensor, w: torch.Tensor, b: torch.Tensor, config: tuple) -> torch.Tensor:
    """tanh-GELU(a·wᵀ + b): a M×K, w N×K (both contiguous bf16), b N -> M×N in a's dtype."""
    m, k = a.shape
    n = w.shape[0]
    block_m, block_n, block_k, stages, warps = config
    out = torch.empty(m, n, device=a.device, dtype=a.dtype)
    a_desc = TensorDescriptor.from_tensor(a, [block_m, block_k])
    w_desc = TensorDescriptor.from_tensor(w, [block_n, block_k])
    c_desc = TensorDescriptor.from_tensor(out, [block_m, block_n // 2])
    tiles = triton.cdiv(m, block_m) * triton.cdiv(n, block_n)
    programs = min(_sm_count(a.device), tiles)
    _fc1_gelu_kernel[(programs,)](a_desc, w_desc, b, c_desc, m, n, k, BLOCK_M=block_m,
                                  BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=8,
                                  NUM_PROGRAMS=programs, num_stages=stages, num_warps=warps)
    return out


def enabled() -> bool:
    return os.environ.get("SOFTVQ_TRITON_FC1", "1").strip().lower() not in ("0", "off", "no", "false")


def _shape_ok(m: int, n: int, k: int) -> bool:
    # TMA wants 16-byte aligned rows; whole tiles keep the kernel free of partial-tile paths
    return m >= MIN_ROWS and n % 256 == 0 and k % 64 == 0


def pick_fc1(m: int, n: int, k: int, device: torch.device, dtype: torch.dtype,
             copies: int = 6) -> Optional[tuple]:
    """The Triton configuration to use for this fc1 shape, or None for cuBLAS (timed once per
    process; see the module docstring)."""
    if not AVAILABLE or device.type != "cuda" or dtype != torch.bfloat16 or not enabled() \
            or not _shape_ok(m, n, k):
        return None
    key = (str(device), m, n, k, dtype)
    hit = PICKS.get(key)
    if hit is not None:
        return hit["pick"]
    if torch.cuda.is_current_stream_capturing():
        return None                    # never time inside a capture; decide on the next eager call
    record: dict = {"pick": None, "us": {}, "rel_err": {}}
    PICKS[key] = record
    from .kernels import graph_ms      # the shared graph-replay timer
    try:
        with torch.no_grad(), torch.cuda.device(device):
            g = torch.Generator(device=device).manual_seed(0)
            a = torch.randn(m, k, device=device, generator=g).to(dtype)
            ws = [(torch.randn(n, k, device=device, generator=g) * k ** -0.5).to(dtype)
                  for _ in range(copies)]
            b = (torch.randn(n, device=device, generator=g) * 0.1).to(dtype)
            ref = torch.nn.functional.gelu(a.float() @ ws[0].float().t() + b.float(), approximate="tanh")
            turn = {"i": 0}

            def next_w():
                turn["i"] += 1
                return ws[turn["i"] % copies]

            def cublas():
                return torch._addmm_activation(b, a, next_w().t(), use_gelu=True)
            record["us"]["cublas"] = 1000 * graph_ms(cublas, inner=8)
            for cfg in CONFIGS:
                try:
                    out = fc1_gelu(a, ws[0], b, cfg)
                    err = float((out.float() - ref).norm() / ref.norm())
                    record["rel_err"][str(cfg)] = err
                    if not err < 1e-2:
                        continue
                    record["us"][str(cfg)] = 1000 * graph_ms(lambda cfg=cfg: fc1_gelu(a, next_w(), b, cfg),
                                                             inner=8)
                except Exception as err:  # a config this GPU or Triton cannot build
                    record["rel_err"][str(cfg)] = f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"
            timed = {c: t for c, t in record["us"].items() if c != "cublas"}
            if timed:
                best = min(timed, key=timed.get)
                if timed[best] < GAIN * record["us"]["cublas"]:
                    record["pick"] = next(c for c in CONFIGS if str(c) == best)
    except Exception as err:  # pragma: no cover - never let the probe break sampling
        record["error"] = f"{type(err).__name__}: {err}"
        record["pick"] = None
    return record["pick"]


if AVAILABLE:
    @torch.library.custom_op("softvq::fc1_gelu", mutates_args=())
    def fc1_gelu_op(a: torch.Tensor, w: torch.Tensor, b: torch.Tensor, block_m: int, block_n: int,
                    block_k: int, stages: int, warps: int) -> torch.Tensor:
        """``fc1_gelu`` as one opaque op for torch.compile (descriptors are built on the host)."""
        return fc1_gelu(a, w, b, (block_m, block_n, block_k, stages, warps))

    @fc1_gelu_op.register_fake
    def _(a, w, b, block_m, block_n, block_k, stages, warps):
        return a.new_empty(a.shape[0], w.shape[0])
