"""The fast path's runtime: switches, torch.compile once per function, CUDA graphs, the kernel
pick for attention, low-precision module copies, and per-model caches of all of it.

Every other module of ``sampling.fast`` (sit, maskgit, tokenizers) builds on these pieces; they
know nothing about any model family.
"""
from __future__ import annotations

import copy
import gc
import importlib.util
import os
import threading
import types
import warnings
import weakref
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .capture import no_collection

BF16 = torch.bfloat16
LOCK = threading.RLock()            # graph replays use static buffers: one sampler at a time


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
    return importlib.util.find_spec("triton") is not None   # torch.compile's GPU backend


def graphs_enabled(device: torch.device, graphs: Optional[bool] = None) -> bool:
    if graphs is not None:
        return bool(graphs) and device.type == "cuda"
    return device.type == "cuda" and _env_on("SOFTVQ_CUDA_GRAPHS")


# --------------------------------------------------------------------------- torch.compile
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


# --------------------------------------------------------------------------- per-model caches


def _fingerprint(module: nn.Module) -> tuple:
    """Changes whenever a parameter is replaced or modified in place (training, load)."""
    return tuple((p.data_ptr(), p._version, p.dtype) for p in module.parameters())


CACHES: list = []   # every _PerModelCache, for ``release``


class _PerModelCache:
    """model -> (fingerprint, value), weakly keyed so a dropped model frees its fast copy."""

    def __init__(self):
        self._d: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()
        CACHES.append(self)

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

    def drop(self, model: nn.Module) -> None:
        self._d.pop(model, None)


def release(model: Optional[nn.Module] = None) -> None:
    """Drop the fast copies, graphs and buffers held for ``model`` (all models if None)."""
    for cache in CACHES:
        if model is None:
            cache.clear()
        else:
            cache.drop(model)
    gc.collect()   # their CUDA graphs are destroyed now, not during some later capture
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


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
                with no_collection(), torch.cuda.graph(g, pool=self.pool,
                                                       capture_error_mode="thread_local"):
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


# --------------------------------------------------------------------------- attention kernels


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


def _attention_qkv(qkv: torch.Tensor, heads: int, backend: Optional[str]) -> torch.Tensor:
    """Attention of a block from its qkv product (R×N×3HD) to the projection's input (R×N×HD):
    the Triton short-sequence kernel reads qkv as it is ("triton"); the SDPA kernels take strided
    q, k, v views and their output is transposed back."""
    r, n, three_hd = qkv.shape
    hidden = three_hd // 3
    if backend == "triton":
        return torch.ops.softvq.short_attention(qkv, heads)
    q, k, v = qkv.view(r, n, 3, heads, hidden // heads).permute(2, 0, 3, 1, 4)
    return _attention(q, k, v, backend).transpose(1, 2).reshape(r, n, hidden)


def _attention_usable(name: str, tokens: int, heads: int, head_dim: int, dtype: torch.dtype,
                      device: torch.device, call: Callable[[int], torch.Tensor]) -> bool:
    """A named kernel must also run at other row counts (batch 1, odd sizes) and replay
    correctly from a CUDA graph, since every sampler step is one."""
    try:
        for rows in (1, 3):
            qkv = torch.randn(rows, tokens, 3 * heads * head_dim, device=device, dtype=dtype)
            out = _attention_qkv(qkv, heads, name).float()
            ref = _attention_qkv(qkv.float(), heads, None)
            if not float((out - ref).norm() / ref.norm()) < 1e-2:
                return False
        eager = call(1).clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            call(1)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with no_collection(), torch.cuda.graph(graph, capture_error_mode="thread_local"):
            out = call(1)
        out.zero_()
        graph.replay()
        torch.cuda.synchronize(device)
        return bool(torch.equal(out, eager))
    except Exception:
        torch.cuda.synchronize(device)
        return False

ATTENTION_BACKENDS = ("flash", "efficient", "cudnn", "triton")

ATTENTION_PICKS: dict = {}   # (device, tokens, heads, head dim, dtype) -> {"pick", "ms": {...}, ...}


def pick_attention(device: torch.device, tokens: int, heads: int, head_dim: int,
                   dtype: torch.dtype, rows: Optional[int] = None) -> Optional[str]:
    """The fastest SDPA kernel for this attention shape on this GPU, timed once per process.

    SDPA's own order (flash first) suits long sequences; a 1D tokenizer's 32-64 tokens (and
    SiT-XL's head dim 72) may favour another kernel. Each candidate runs on the block's real
    layout (q, k, v strided views of the qkv product, output transposed back), must match a
    float32 reference to 1e-2, and is timed with CUDA events on ~8k tokens (a guided B=64 step
    at 64 tokens), replayed from a CUDA graph. Candidates: SDPA's own choice, flash,
    memory-efficient, cuDNN, and the Triton short-sequence kernel (``kernels.short_attention``,
    up to 128 tokens). ``SOFTVQ_ATTENTION`` = flash / efficient / cudnn / triton forces one, ``sdpa`` keeps
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
            qkvs = [torch.randn(rows, tokens, 3 * hidden, device=device, dtype=dtype,
                                generator=gen) for _ in range(3)]
            ref = _attention_qkv(qkvs[0].float(), heads, None)
            from . import kernels
            names = tuple(n for n in ATTENTION_BACKENDS
                          if n != "triton" or kernels.short_attention_ok(tokens, head_dim))
            for name in (None,) + names:
                label = name or "sdpa"
                try:
                    def call(i: int, name=name) -> torch.Tensor:
                        return _attention_qkv(qkvs[i], heads, name)
                    err = float((call(0).float() - ref).norm() / ref.norm())
                    record["rel_err"][label] = err
                    if not err < 1e-2:
                        continue
                    if name is not None and not _attention_usable(name, tokens, heads, head_dim,
                                                                  dtype, device, call):
                        record["rel_err"][label] = f"{err:.1e}, but failed on other batch sizes " \
                                                   "or under CUDA-graph capture"
                        continue
                    # timed as graph replays (as the sampler runs them): eager launches would
                    # time Python's launch overhead, which favoured the library kernels over the
                    # Triton one (seen on the H200: 'efficient' picked over a 2x faster kernel)
                    turn = {"i": 0}

                    def rotating(call=call) -> torch.Tensor:
                        turn["i"] += 1
                        return call(turn["i"] % 3)
                    record["ms"][label] = kernels.graph_ms(rotating, inner=12, reps=5)
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


# --------------------------------------------------------------------------- low-precision copies
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
