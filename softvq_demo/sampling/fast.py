"""Inference fast path: bf16 weights, compiled blocks, CUDA graphs, no host syncs in the loop.

``sample()`` / ``generate()`` (``softvq_demo.sampling``) use this on CUDA; everything here also
runs eagerly on the CPU (float32, no compile, no graphs), which is how the tests check it.

SiT (flow matching)
    ``SiTFast(gen)`` holds a bf16 copy of the generator's weights in a functional layout and the
    compiled pieces of its forward (embedding, one transformer block reused by all 28 layers,
    final layer fused with the CFG combination and the sampler update). ``sample_sit_fast``
    runs Euler and SDE sampling as CUDA-graph replays, one graph per kind of step (guided or
    not); the step index, time, update coefficients and SDE noise live on the device, so the
    host only launches replays and never waits on the GPU. The sampler state is float32 (the
    reference ``sample_flow`` keeps float64; the difference is far below bf16 rounding).
    What differs from a plain bf16 forward, all exact rewrites:
    - the conditional and unconditional halves run as one batch of 2B rows (as ``sample_flow``);
    - the adaLN modulation depends only on (t, y), both known before sampling starts. When the
      table fits (``table_limit``: 256 MiB, or a tenth of the GPU's memory: B=64 × 250 steps
      fits on an 80 GB GPU) the modulations of every step and row are computed up front,
      instead of reading the 28 adaLN weight matrices (a third of SiT-XL's weights) once per
      step. Larger batches compute them per step, as one product for all layers;
    - each compiled block ends with the NEXT block's modulated LayerNorm (``_sit_block``), so the
      last residual add and that LayerNorm share one pass over the float32 residual stream;
    - attention runs through the SDPA kernel that ``pick_attention`` timed fastest for the
      model's token count and head size on this GPU (flash, memory-efficient or cuDNN).
    Heun (two evaluations per step) goes through ``FastVelocity``, a graph-captured drop-in for
    ``gen(x, t, y)`` that ``sample_flow`` accepts in place of the model.

Tokenizers
    ``fast_tokenizer(tok)`` gives an object with ``encode``/``decode`` that runs a bf16 copy of the
    tokenizer (quantizers kept in float32 with autocast off: SoftVQ's temperature 0.07 and TiTok's
    nearest-codeword search are sensitive), transformer blocks compiled, small batches as CUDA
    graphs, convolutions channels-last.

MaskGIT
    ``sample_maskgit_fast`` reproduces ``sampling.maskgit.sample_maskgit`` step for step with the
    same random draws (drawn up front in the same order), a bf16 compiled copy of the network,
    and every step as a graph replay without host syncs.

Switches: ``SOFTVQ_FAST=0`` turns the fast path off in ``sample``/``generate``;
``SOFTVQ_COMPILE=0`` keeps it but skips ``torch.compile``; ``SOFTVQ_CUDA_GRAPHS=0`` skips graphs.
"""
from __future__ import annotations

import contextlib
import copy
import math
import os
import threading
import types
import warnings
import weakref
from collections import OrderedDict
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..device import module_device
from .flow import path_coefficients, sample_flow, time_grid, validate_options
from .settings import resolve

BF16 = torch.bfloat16
GELU_EPILOGUE = True                # SiT fc1: cuBLASLt bias+GELU epilogue on CUDA (tanh GELU there)
MOD_TABLE_BYTES = 256 * 2 ** 20     # precomputed adaLN table: always allowed up to this size
MOD_TABLE_FRACTION = 0.1            # ... and on a GPU up to this fraction of its memory
GRAPH_MAX_ROWS = 1 << 30            # graphs are used at every size (they cost one capture)
_LOCK = threading.RLock()           # graph replays use static buffers: one sampler at a time


# --------------------------------------------------------------------------- switches
def _env_on(name: str, default: bool = True) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() not in ("0", "false", "no", "off", "")


def fast_enabled(device: torch.device, fast: Optional[bool] = None) -> bool:
    """The fast path runs where it helps: CUDA, unless ``fast=False`` or ``SOFTVQ_FAST=0``."""
    if fast is None:
        fast = _env_on("SOFTVQ_FAST")
    return bool(fast) and device.type == "cuda"


def compile_enabled(device: torch.device, compile: Optional[bool] = None) -> bool:
    if compile is not None:
        return bool(compile)
    if device.type != "cuda" or not _env_on("SOFTVQ_COMPILE"):
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def graphs_enabled(device: torch.device, graphs: Optional[bool] = None) -> bool:
    if graphs is not None:
        return bool(graphs) and device.type == "cuda"
    return device.type == "cuda" and _env_on("SOFTVQ_CUDA_GRAPHS")


_COMPILED: dict = {}


def _raise_recompile_limit(limit: int = 64) -> None:
    """The compiled SiT pieces legitimately specialise on a few flags (guided, SDE noise, batch 1
    or more, model width): allow more than dynamo's default 8 variants per function. Also turn
    off "duck sizing", which would tie e.g. a 64-row batch to 64 tokens and recompile later."""
    import torch._dynamo.config as dc

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dc, name) and getattr(dc, name) < limit:
            setattr(dc, name, limit)
    try:
        import torch.fx.experimental._config as fxc

        if hasattr(fxc, "use_duck_shape"):
            fxc.use_duck_shape = False
    except ImportError:  # pragma: no cover
        pass


def _maybe_compile(fn: Callable, enabled: bool, dynamic_dims: Optional[dict] = None) -> Callable:
    """torch.compile ``fn`` once per process (shared by every model and every layer).

    ``dynamic_dims`` {argument position: dims} marks the batch/token dims of activations as
    dynamic (sizes of 1 still specialise), so one compiled graph serves every batch size and
    token count instead of one compile per shape; weights keep static shapes."""
    if not enabled:
        return fn
    _raise_recompile_limit()
    if fn not in _COMPILED:
        _COMPILED[fn] = torch.compile(fn)
    state = {"fn": _COMPILED[fn]}
    mark = torch._dynamo.maybe_mark_dynamic

    def call(*args):
        for i, dims in (dynamic_dims or {}).items():
            if args[i] is not None:
                for d in dims:
                    mark(args[i], d)
        try:
            return state["fn"](*args)
        except Exception as err:  # a compiler failure must not break sampling: run eagerly
            capturing = torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()
            if state["fn"] is fn or capturing:
                raise
            warnings.warn(f"torch.compile failed for {fn.__name__}, running it eagerly "
                          f"({type(err).__name__}: {str(err).splitlines()[0][:200]})")
            state["fn"] = fn
            return fn(*args)

    return call


def _fingerprint(module: nn.Module) -> tuple:
    """Changes whenever a parameter is replaced or modified in place (training, load)."""
    return tuple((p.data_ptr(), p._version, p.dtype) for p in module.parameters())


class _PerModelCache:
    """model -> (fingerprint, value), weakly keyed so a dropped model frees its fast copy."""

    def __init__(self):
        self._d: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()

    def get(self, model: nn.Module, key: Any, make: Callable[[], Any]) -> Any:
        fp = (_fingerprint(model), key)
        hit = self._d.get(model)
        if hit is not None and hit[0] == fp:
            return hit[1]
        self._d.pop(model, None)  # free the stale copy before building a new one
        value = make()
        self._d[model] = (fp, value)
        return value

    def clear(self) -> None:
        self._d = weakref.WeakKeyDictionary()


# --------------------------------------------------------------------------- SiT, functional
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


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: Optional[str]) -> torch.Tensor:
    """SDPA through one named CUDA kernel (picked per model by ``pick_attention``), or
    PyTorch's own choice (``backend`` None: also what runs on the CPU). Same function, all
    bf16 in / fp32 accumulation; the aten ops are traced as they are by torch.compile."""
    if backend == "flash":
        return torch.ops.aten._scaled_dot_product_flash_attention(q, k, v)[0]
    if backend == "efficient":
        return torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, False)[0]
    if backend == "cudnn":
        return torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, False)[0]
    return F.scaled_dot_product_attention(q, k, v)


def _attention_usable(name: str, tokens: int, heads: int, head_dim: int, dtype: torch.dtype,
                      device: torch.device, call: Callable[[int], torch.Tensor]) -> bool:
    """A named kernel must also run at other row counts (batch 1, odd sizes) and replay
    correctly from a CUDA graph, since every sampler step is one."""
    try:
        for rows in (1, 3):
            q, k, v = torch.randn(rows, tokens, 3, heads, head_dim, device=device,
                                  dtype=dtype).permute(2, 0, 3, 1, 4)
            out = _attention(q, k, v, name).float()
            ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
            if not float((out - ref).norm() / ref.norm()) < 1e-2:
                return False
        eager = call(1).clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            call(1)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):  # see _Graphs._capture
            out = call(1)
        out.zero_()
        graph.replay()
        torch.cuda.synchronize(device)
        return bool(torch.equal(out, eager))
    except Exception:
        torch.cuda.synchronize(device)
        return False


ATTENTION_BACKENDS = ("flash", "efficient", "cudnn")
ATTENTION_PICKS: dict = {}   # (device, tokens, heads, head dim, dtype) -> {"pick", "ms": {...}, ...}


def pick_attention(device: torch.device, tokens: int, heads: int, head_dim: int,
                   dtype: torch.dtype, rows: Optional[int] = None) -> Optional[str]:
    """The fastest SDPA kernel for this attention shape on this GPU, timed once per process.

    SDPA's own order (flash first) suits long sequences; a 1D tokenizer's 32-64 tokens (and
    SiT-XL's head dim 72) may favour another kernel. Each candidate runs on the block's real
    layout (q, k, v strided views of the qkv product, output transposed back), must match a
    float32 reference to 1e-2, and is timed with CUDA events on ~8k tokens (a guided B=64 step
    at 64 tokens). ``SOFTVQ_ATTENTION`` = flash / efficient / cudnn forces one, ``sdpa`` keeps
    PyTorch's choice. None (PyTorch's choice) on the CPU."""
    forced = os.environ.get("SOFTVQ_ATTENTION", "auto").strip().lower()
    if device.type != "cuda" or forced in ("sdpa", "default", "none"):
        return None
    if forced in ATTENTION_BACKENDS:
        return forced
    key = (str(device), tokens, heads, head_dim, dtype)
    hit = ATTENTION_PICKS.get(key)
    if hit is not None:
        return hit["pick"]
    rows = rows or max(1, 8192 // tokens)
    hidden = heads * head_dim
    record: dict = {"pick": None, "ms": {}, "rel_err": {}, "rows": rows, "tokens": tokens}
    try:
        with torch.no_grad(), torch.cuda.device(device):
            gen = torch.Generator(device=device).manual_seed(0)
            qkvs = [torch.randn(rows, tokens, 3, heads, head_dim, device=device, dtype=dtype,
                                generator=gen).permute(2, 0, 3, 1, 4) for _ in range(3)]
            ref = F.scaled_dot_product_attention(*(t.float() for t in qkvs[0]))
            ref = ref.transpose(1, 2).reshape(rows, tokens, hidden)
            for name in (None,) + ATTENTION_BACKENDS:
                label = name or "sdpa"
                try:
                    def call(i: int, name=name) -> torch.Tensor:
                        q, k, v = qkvs[i]
                        return _attention(q, k, v, name).transpose(1, 2).reshape(rows, tokens, hidden)
                    err = float((call(0).float() - ref).norm() / ref.norm())
                    record["rel_err"][label] = err
                    if not err < 1e-2:
                        continue
                    if name is not None and not _attention_usable(name, tokens, heads, head_dim,
                                                                  dtype, device, call):
                        record["rel_err"][label] = f"{err:.1e}, but failed on other batch sizes " \
                                                   "or under CUDA-graph capture"
                        continue
                    for i in range(3):
                        call(i)
                    times = []
                    for _ in range(5):
                        start = torch.cuda.Event(enable_timing=True)
                        end = torch.cuda.Event(enable_timing=True)
                        start.record()
                        for i in range(10):
                            call(i % 3)
                        end.record()
                        end.synchronize()
                        times.append(start.elapsed_time(end) / 10)
                    record["ms"][label] = sorted(times)[len(times) // 2]
                except Exception as err:  # a kernel this GPU / shape does not support
                    record["rel_err"][label] = f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"
            timed = {k: v for k, v in record["ms"].items() if k != "sdpa"}
            if timed:
                best = min(timed, key=timed.get)
                # keep PyTorch's choice unless a named kernel is clearly (>3%) faster
                if "sdpa" not in record["ms"] or timed[best] < 0.97 * record["ms"]["sdpa"]:
                    record["pick"] = best
    except Exception as err:  # pragma: no cover - never let the probe break sampling
        record["error"] = f"{type(err).__name__}: {err}"
    ATTENTION_PICKS[key] = record
    return record["pick"]


def _sit_embed(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, pos: torch.Tensor,
               mod2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Token embedding (h, float32) and the first block's modulated LayerNorm of it."""
    h = F.linear(x.to(w.dtype), w, b).float() + pos
    return h, _modulated_norm(h, mod2, w.dtype)


def _sit_block(h: torch.Tensor, a: torch.Tensor, mod: torch.Tensor, mod_next: torch.Tensor,
               qkv_w, qkv_b, proj_w, proj_b, fc1_w, fc1_b, fc2_w, fc2_b, heads: int,
               attn: Optional[str] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One SiT block, its LayerNorms shifted by one: takes h (R×N×H float32 residual stream) and
    a = this block's modulated LN1(h); returns the new h and the NEXT block's (or the final
    layer's) modulated LN1 of it (``mod_next``: R×2H shift, scale). Same arithmetic as a plain
    block; the shift lets the last residual add and the next LayerNorm share one pass over h
    (one read of the float32 stream per layer less). mod: R×6H, (shift, scale, gate) × 2."""
    r, n, hidden = h.shape
    dt = qkv_w.dtype
    ga, sm, cm, gm = mod[:, 2 * hidden:].float().unsqueeze(1).chunk(4, dim=-1)
    qkv = F.linear(a, qkv_w, qkv_b).view(r, n, 3, heads, hidden // heads).permute(2, 0, 3, 1, 4)
    o = _attention(qkv[0], qkv[1], qkv[2], attn)
    o = F.linear(o.transpose(1, 2).reshape(r, n, hidden), proj_w, proj_b)
    h = h + ga * o.float()
    m = (F.layer_norm(h, (hidden,), eps=1e-6) * (1 + cm) + sm).to(dt)
    if GELU_EPILOGUE and m.is_cuda:
        # fc1 + bias + tanh-GELU in one cuBLASLt call (GELU_BIAS epilogue): the 4H-wide
        # activation is written once instead of written, read and written again
        u = torch._addmm_activation(fc1_b, m.reshape(r * n, hidden), fc1_w.t(), use_gelu=True)
        u = u.view(r, n, -1)
    else:
        u = F.gelu(F.linear(m, fc1_w, fc1_b), approximate="tanh")
    m = F.linear(u, fc2_w, fc2_b)
    h = h + gm * m.float()
    return h, _modulated_norm(h, mod_next, dt)


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


# The previous revision's block layout (LayerNorm at the start of each block, SDPA's own
# backend choice), kept for ``python -m softvq_demo.bench``'s same-run A/B (``LEGACY_BLOCKS``).
def _sit_embed_legacy(x, w, b, pos):
    return F.linear(x.to(w.dtype), w, b).float() + pos


def _sit_block_legacy(h, mod, qkv_w, qkv_b, proj_w, proj_b, fc1_w, fc1_b, fc2_w, fc2_b, heads: int):
    hidden = h.shape[-1]
    a = _modulated_norm(h, mod[:, :2 * hidden], qkv_w.dtype)
    h, _ = _sit_block(h, a, mod, mod[:, :2 * hidden], qkv_w, qkv_b, proj_w, proj_b, fc1_w, fc1_b,
                      fc2_w, fc2_b, heads, None)
    return h


def _sit_finish_legacy(h, fmod, w, b, x, ca, cb, cc, noise, cfg, guided: bool):
    return _sit_finish(_modulated_norm(h, fmod, w.dtype), w, b, x, ca, cb, cc, noise, cfg, guided)


LEGACY_BLOCKS = False   # bench A/B only: the previous revision's block layout and attention


class SiTFast:
    """A SiT's weights in bf16 (float32 on the CPU), laid out for the functional forward."""

    def __init__(self, gen: nn.Module, dtype: Optional[torch.dtype] = None,
                 compile: Optional[bool] = None):
        self.device = module_device(gen)
        self.dtype = dtype or (BF16 if self.device.type == "cuda" else torch.float32)
        self.compiled = compile_enabled(self.device, compile)
        self.num_tokens, self.token_dim = int(gen.num_tokens), int(gen.token_dim)
        self.hidden, self.depth, self.heads = int(gen.hidden_size), int(gen.depth), int(gen.num_heads)
        self.num_classes, self.null_class = int(gen.num_classes), int(gen.null_class)

        def cast(p: torch.Tensor) -> torch.Tensor:
            return p.detach().to(self.dtype).contiguous()

        with torch.no_grad():
            self.x_w, self.x_b = cast(gen.x_embedder.weight), cast(gen.x_embedder.bias)
            self.pos = gen.pos_embed.detach()[0].float().contiguous()
            mlp = gen.t_embedder.mlp
            self.t_w0, self.t_b0, self.t_w2, self.t_b2 = (cast(mlp[0].weight), cast(mlp[0].bias),
                                                          cast(mlp[2].weight), cast(mlp[2].bias))
            self.y_table = gen.y_embedder.embedding_table.weight.detach().float()
            ada = [blk.adaLN_modulation[1] for blk in gen.blocks] + [gen.final_layer.adaLN_modulation[1]]
            self.ada_w = torch.cat([cast(m.weight) for m in ada])
            self.ada_b = torch.cat([cast(m.bias) for m in ada])
            self.blocks = [tuple(cast(p) for p in (blk.attn.qkv.weight, blk.attn.qkv.bias,
                                                   blk.attn.proj.weight, blk.attn.proj.bias,
                                                   blk.mlp.fc1.weight, blk.mlp.fc1.bias,
                                                   blk.mlp.fc2.weight, blk.mlp.fc2.bias))
                           for blk in gen.blocks]
            # only the first D outputs are the velocity (learn_sigma models predict 2D)
            self.fin_w = cast(gen.final_layer.linear.weight[:self.token_dim])
            self.fin_b = cast(gen.final_layer.linear.bias[:self.token_dim])
        self.mod_width = self.ada_w.shape[0]
        on = self.compiled
        self.attn = pick_attention(self.device, self.num_tokens, self.heads, self.hidden // self.heads,
                                   self.dtype)
        self.f_mod = _maybe_compile(_sit_modulation, on, {0: (0,), 1: (0,)})
        self.f_embed = _maybe_compile(_sit_embed, on, {0: (0, 1), 3: (0,), 4: (0,)})
        self.f_block = _maybe_compile(_sit_block, on, {0: (0, 1), 1: (0, 1), 2: (0,), 3: (0,)})
        self.f_finish = _maybe_compile(_sit_finish, on, {0: (0, 1), 3: (0, 1), 7: (0, 1)})
        self.f_embed_legacy = _maybe_compile(_sit_embed_legacy, on, {0: (0, 1), 3: (0,)})
        self.f_block_legacy = _maybe_compile(_sit_block_legacy, on, {0: (0, 1), 1: (0,)})
        self.f_finish_legacy = _maybe_compile(_sit_finish_legacy, on, {0: (0, 1), 1: (0,), 4: (0, 1),
                                                                      8: (0, 1)})
        self.runners: "OrderedDict[tuple, _FlowRunner]" = OrderedDict()
        self.velocities: "OrderedDict[tuple, FastVelocity]" = OrderedDict()

    # -- pieces used by the runners
    def modulation(self, t: torch.Tensor, y_emb: torch.Tensor) -> torch.Tensor:
        return self.f_mod(t, y_emb, self.t_w0, self.t_b0, self.t_w2, self.t_b2, self.ada_w, self.ada_b)

    def trunk(self, x: torch.Tensor, mods: torch.Tensor) -> torch.Tensor:
        """Embedding and all blocks: x R×N×D (float32), mods R×(L·6H+2H) → the final layer's
        modulated LayerNorm R×N×H (in the weights' dtype), ready for ``fin_w``.

        mods holds [block 0: 6H | block 1: 6H | ... | final: 2H]; block i also gets the first 2H
        of what follows it (block i+1's shift and scale, or the final layer's), since each block
        ends with the next one's LayerNorm."""
        if LEGACY_BLOCKS:
            return self._trunk_legacy(x, mods)
        w6, w2 = 6 * self.hidden, 2 * self.hidden
        h, a = self.f_embed(x, self.x_w, self.x_b, self.pos, mods[:, :w2])
        for i, weights in enumerate(self.blocks):
            nxt = (i + 1) * w6
            h, a = self.f_block(h, a, mods[:, i * w6:nxt], mods[:, nxt:nxt + w2], *weights,
                                self.heads, self.attn)
        return a

    def _trunk_legacy(self, x: torch.Tensor, mods: torch.Tensor) -> torch.Tensor:
        h = self.f_embed_legacy(x, self.x_w, self.x_b, self.pos)
        w6 = 6 * self.hidden
        for i, weights in enumerate(self.blocks):
            h = self.f_block_legacy(h, mods[:, i * w6:(i + 1) * w6], *weights, self.heads)
        return h

    def finish(self, out_of_trunk, mods, x, ca, cb, cc, noise, cfg, guided: bool) -> torch.Tensor:
        """Final layer + CFG + sampler update on what ``trunk`` returned."""
        if LEGACY_BLOCKS:
            return self.f_finish_legacy(out_of_trunk, self.final_mods(mods), self.fin_w, self.fin_b,
                                        x, ca, cb, cc, noise, cfg, guided)
        return self.f_finish(out_of_trunk, self.fin_w, self.fin_b, x, ca, cb, cc, noise, cfg, guided)

    def final_mods(self, mods: torch.Tensor) -> torch.Tensor:
        return mods[:, self.depth * 6 * self.hidden:]

    def velocity(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Eager functional forward (float32 in and out): what ``gen(x, t, y)`` computes."""
        mods = self.modulation(t.float(), self.y_table.index_select(0, y))
        a = self.trunk(x.float(), mods)
        if LEGACY_BLOCKS:
            a = _modulated_norm(a, self.final_mods(mods), self.fin_w.dtype)
        return F.linear(a, self.fin_w, self.fin_b).float()

    def weight_bytes(self) -> int:
        tensors = [self.x_w, self.x_b, self.t_w0, self.t_b0, self.t_w2, self.t_b2, self.ada_w,
                   self.ada_b, self.fin_w, self.fin_b] + [p for blk in self.blocks for p in blk]
        return sum(t.numel() * t.element_size() for t in tensors)


_SIT_CACHE = _PerModelCache()


def sit_fast(gen: nn.Module, compile: Optional[bool] = None,
             dtype: Optional[torch.dtype] = None) -> SiTFast:
    """The (cached) fast copy of a SiT; rebuilt when its weights change. ``dtype``: weight and
    matmul precision (default bf16 on CUDA, float32 elsewhere)."""
    device = module_device(gen)
    on = compile_enabled(device, compile)
    return _SIT_CACHE.get(gen, ("sit", on, dtype), lambda: SiTFast(gen, dtype=dtype, compile=on))


# --------------------------------------------------------------------------- CUDA graphs
class _Graphs:
    """Capture callables as CUDA graphs that share one memory pool; eager where graphs are off."""

    def __init__(self, device: torch.device, enabled: bool):
        self.device = device
        self.enabled = enabled and device.type == "cuda"
        self.pool = torch.cuda.graph_pool_handle() if self.enabled else None
        self.graphs: dict = {}
        self.failed: Optional[str] = None

    def prepare(self, key, fn: Callable[[], None], reset: Optional[Callable[[], None]] = None) -> None:
        """Capture ``fn`` under ``key`` if not yet done (its warm-up runs are undone by ``reset``)."""
        if self.enabled and key not in self.graphs:
            g = self._capture(fn, reset)
            if g is not None:
                self.graphs[key] = g

    def run(self, key, fn: Callable[[], None]) -> None:
        g = self.graphs.get(key) if self.enabled else None
        if g is None:
            fn()
        else:
            g.replay()

    @staticmethod
    def _warm_up(fn: Callable[[], None], reset: Optional[Callable[[], None]]) -> None:
        """Run ``fn`` twice (compile, autotune, allocate) from a reset state, and reset after.

        The reset BEFORE each run matters: a runner reused from an earlier call has its step
        counter at the end of its table, and a warm-up step from there would index past it."""
        for _ in range(2):
            if reset is not None:
                reset()
            fn()
        if reset is not None:
            reset()

    def _capture(self, fn, reset):
        with torch.cuda.device(self.device):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self._warm_up(fn, reset)
            torch.cuda.current_stream().wait_stream(side)
            torch.cuda.synchronize(self.device)
            g = torch.cuda.CUDAGraph()
            try:
                # thread_local: a background warm-up (sampling.policy) may capture while
                # another thread samples on the reference path
                with torch.cuda.graph(g, pool=self.pool, capture_error_mode="thread_local"):
                    fn()
            except Exception as err:  # pragma: no cover - depends on the GPU stack
                self.failed = f"{type(err).__name__}: {err}"
                warnings.warn(f"CUDA graph capture failed, running eagerly ({self.failed})")
                self.enabled = False
                torch.cuda.synchronize(self.device)
                return None
            if reset is not None:
                reset()
            return g


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
    with _LOCK:
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


# --------------------------------------------------------------------------- bf16 module copies
# Blocks compiled by default: timm's ViT ``Block`` (SoftVQ encoder/decoder). TiTok's and MaskGIT's
# blocks run as bf16 + CUDA graphs without compile: their time goes to the pixel decoder's
# convolutions and to tiny batches, where a compile (seconds per block width) does not pay.
COMPILED_BLOCKS = ("Block",)
FP32_MODULES = ("quantize",)


def _fp32_forward(module: nn.Module) -> None:
    """Run this submodule in float32 with autocast off (its inputs upcast)."""
    cls_forward = type(module).forward

    def forward(self, *args, **kwargs):
        args = tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)
        dev = next((a.device.type for a in args if torch.is_tensor(a)), "cuda")
        with torch.autocast(device_type=dev, enabled=False):
            return cls_forward(self, *args, **kwargs)

    module.forward = types.MethodType(forward, module)


def _param_ids(module: nn.Module, names: Sequence[str]) -> set:
    ids = set()
    for name in names:
        try:
            sub = module.get_submodule(name)
        except AttributeError:
            continue
        ids.update(id(t) for t in list(sub.parameters()) + list(sub.buffers()))
    return ids


def low_precision_copy(module: nn.Module, dtype: torch.dtype = BF16,
                       keep_fp32: Sequence[str] = FP32_MODULES, compile: bool = False,
                       channels_last: bool = False,
                       compile_blocks: Sequence[str] = COMPILED_BLOCKS) -> nn.Module:
    """A copy of ``module`` whose matmul weights are in ``dtype`` (no float32 copy is ever made),
    to run under autocast. Submodules named in ``keep_fp32`` run in float32 with autocast off;
    blocks named in ``compile_blocks`` are compiled when asked; ``channels_last`` puts 4-D conv weights
    channels-last (off: on the H100 the official NCHW layout ran TiTok's pixel decoder faster,
    503 vs 389 images/s at batch 256)."""
    keep = _param_ids(module, keep_fp32)
    # Only matrix-product weights go to ``dtype`` (Linear / Conv weights and biases, packed
    # in-projections): embeddings, class/mask/latent tokens, positions, norms and LayerScale stay
    # float32, so the residual streams are float32 as under autocast with float32 weights.
    matmul = set()
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            matmul.update(id(p) for p in m.parameters(recurse=False))
        for name, p in m.named_parameters(recurse=False):
            if name.startswith("in_proj_"):
                matmul.add(id(p))
    memo: dict = {}
    for p in module.parameters():
        if id(p) in memo:
            continue
        q = p.detach()
        if q.is_floating_point() and id(p) in matmul and id(p) not in keep:
            q = q.to(dtype)
            if channels_last and q.ndim == 4:
                q = q.contiguous(memory_format=torch.channels_last)
        memo[id(p)] = nn.Parameter(q, requires_grad=False)
    for b in module.buffers():
        if id(b) not in memo:
            memo[id(b)] = b
    clone = copy.deepcopy(module, memo)
    clone.eval().requires_grad_(False)
    for name in keep_fp32:
        try:
            _fp32_forward(clone.get_submodule(name))
        except AttributeError:
            pass
    if compile:
        _raise_recompile_limit()
        for m in clone.modules():
            if type(m).__name__ in compile_blocks:
                m.compile(dynamic=True)  # one graph for every batch size (and, shared, every layer)
    return clone


def _flatten(out: Any) -> tuple[list[torch.Tensor], Callable[[list[torch.Tensor]], Any]]:
    """Tensors of a tensor / Encoded / tuple output, and how to rebuild it."""
    from ..models.base import Encoded

    if torch.is_tensor(out):
        return [out], lambda ts: ts[0]
    if isinstance(out, Encoded):
        names = ["latents", "probs", "indices"]
        present = [n for n in names if getattr(out, n) is not None]
        keys = list(out.extras)
        tensors = [getattr(out, n) for n in present] + [out.extras[k] for k in keys]

        def rebuild(ts):
            fields = dict(zip(present, ts[:len(present)]))
            return Encoded(latents=fields["latents"], probs=fields.get("probs"),
                           indices=fields.get("indices"), extras=dict(zip(keys, ts[len(present):])))
        return tensors, rebuild
    if isinstance(out, (tuple, list)):
        return list(out), lambda ts: type(out)(ts)
    raise TypeError(f"cannot graph-capture an output of type {type(out).__name__}")


class FastTokenizer:
    """``encode``/``decode`` of a tokenizer through a bf16 copy; CUDA graphs up to
    ``graph_batch`` images; everything else (attributes) from the original."""

    def __init__(self, tok: nn.Module, compile: Optional[bool] = None, graphs: Optional[bool] = None,
                 graph_batch: int = 16):
        self._ref = weakref.ref(tok)  # the cache is keyed by tok: hold it weakly
        self.device = module_device(tok)
        on_cuda = self.device.type == "cuda"
        # TiTok runs in float16, as its official recipe does: in bf16 its proxy-code softmax and
        # MaskGIT-VQGAN pixel decoder put images 2.2-2.9e-2 off the float32 reference (H100, random
        # weights; bf16 ViT + fp16 pixel decoder still 0.9-1.0e-2), at the same speed.
        self.dtype = (torch.float16 if tok.family == "titok" else BF16) if on_cuda else torch.float32
        self.compiled = compile_enabled(self.device, compile)
        self._copy = low_precision_copy(tok, self.dtype, compile=self.compiled) if on_cuda else None
        self.graphs = _Graphs(self.device, graphs_enabled(self.device, graphs))
        self.graph_batch = graph_batch
        self.buffers: dict = {}

    @property
    def original(self) -> nn.Module:
        tok = self._ref()
        if tok is None:
            raise RuntimeError("the tokenizer behind this fast copy was freed")
        return tok

    @property
    def model(self) -> nn.Module:
        return self._copy if self._copy is not None else self.original

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.original, name)

    def _call(self, kind: str, fn: Callable[[torch.Tensor], Any], x: torch.Tensor) -> Any:
        autocast = (torch.autocast(device_type="cuda", dtype=self.dtype, cache_enabled=False)
                    if self.device.type == "cuda" else torch.autocast(device_type="cpu", enabled=False))
        if not self.graphs.enabled or x.shape[0] > self.graph_batch:
            with autocast:
                return fn(x)
        # Small batches: CUDA graphs remove the launch overhead; compiled code would add a
        # batch-1 specialisation (one more compile per block width) for little gain.
        # (set_stance acts when constructed: build it inside the ``with`` only.)
        def stance():
            if hasattr(torch.compiler, "set_stance"):
                return torch.compiler.set_stance("force_eager")
            return contextlib.nullcontext()
        key = (kind, tuple(x.shape), x.dtype)
        buf = self.buffers.get(key)
        if buf is None:
            buf = {"x": torch.empty_like(x)}
            self.buffers[key] = buf
        buf["x"].copy_(x)

        def run() -> None:
            with autocast, stance():
                buf["out"] = _flatten(fn(buf["x"]))

        self.graphs.prepare(key, run)
        self.graphs.run(key, run)
        tensors, rebuild = buf["out"]
        return rebuild([t.clone() for t in tensors])

    def _safe_call(self, kind: str, method: str, x: torch.Tensor) -> Any:
        try:
            return self._call(kind, getattr(self.model, method), x)
        except Exception as err:  # a compiler failure must not break decoding: go eager
            if not self.compiled or self._copy is None:
                raise
            warnings.warn(f"compiled tokenizer failed, using the bf16 copy eagerly "
                          f"({type(err).__name__}: {str(err).splitlines()[0][:200]})")
            self.compiled = False
            self._copy = low_precision_copy(self.original, self.dtype, compile=False)
            self.graphs = _Graphs(self.device, self.graphs.enabled)
            self.buffers = {}
            return self._call(kind, getattr(self.model, method), x)

    @torch.no_grad()
    def encode(self, images: torch.Tensor):
        with _LOCK:
            return self._safe_call("encode", "encode", images.to(self.device))

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        latents = latents.to(self.device)
        with _LOCK:
            if not latents.is_floating_point():
                # id -> codeword lookups validate ids on the host: keep them out of the graph
                if hasattr(self.model, "tokens_from_indices"):
                    latents = self.model.tokens_from_indices(latents)
                elif hasattr(self.model, "quantize"):
                    latents = self.model.quantize.lookup(latents.reshape(latents.shape[0], -1))
            return self._safe_call("decode", "decode", latents)


_TOK_CACHE = _PerModelCache()


def fast_tokenizer(tok: nn.Module, compile: Optional[bool] = None,
                   graphs: Optional[bool] = None) -> FastTokenizer:
    """The (cached) fast copy of a tokenizer: ``fast_tokenizer(tok).decode(latents)``."""
    device = module_device(tok)
    key = ("tok", compile_enabled(device, compile), graphs_enabled(device, graphs))
    return _TOK_CACHE.get(tok, key, lambda: FastTokenizer(tok, compile, graphs))


# --------------------------------------------------------------------------- MaskGIT
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
    from .maskgit import _cfg_scale_power_cosine

    opts = resolve(gen, dict(steps=steps, guidance_scale=guidance_scale, guidance_decay=guidance_decay,
                             randomize_temperature=randomize_temperature))
    steps, scale = opts["steps"], opts["guidance_scale"]
    decay, temperature = opts["guidance_decay"], opts["randomize_temperature"]
    rng = seed if seed is None or isinstance(seed, torch.Generator) \
        else torch.Generator().manual_seed(int(seed))
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

    with _LOCK:
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


def release(model: Optional[nn.Module] = None) -> None:
    """Drop the fast copies, graphs and buffers held for ``model`` (all models if None)."""
    for cache in (_SIT_CACHE, _TOK_CACHE, _MASKGIT_CACHE):
        if model is None:
            cache.clear()
        else:
            cache._d.pop(model, None)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


__all__ = ["release", "SiTFast", "sit_fast", "sample_sit_fast", "FastVelocity", "fast_velocity",
           "FastTokenizer", "fast_tokenizer", "low_precision_copy", "sample_maskgit_fast",
           "fast_enabled", "compile_enabled", "graphs_enabled"]
