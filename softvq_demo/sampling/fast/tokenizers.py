"""Tokenizers on the fast path: ``fast_tokenizer(tok)`` gives ``encode`` / ``decode`` through a
low-precision copy (quantizers kept in float32), compiled blocks and, for small batches, CUDA
graphs. Codeword ids reach the copy through ``Tokenizer.latents_from_indices``, outside the graph.
"""
from __future__ import annotations

import contextlib
import warnings
import weakref
from typing import Any, Callable, Optional

import torch
from torch import nn

from ...device import module_device
from ...models.base import Encoded
from ...models.titok import TiTok
from .runtime import BF16, LOCK, _Graphs, _PerModelCache, compile_enabled, graphs_enabled, low_precision_copy


def _flatten(out: Any) -> tuple[list[torch.Tensor], Callable[[list[torch.Tensor]], Any]]:
    """Tensors of a tensor / Encoded / tuple output, and how to rebuild it."""
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
        # (One-D-Piece is a TiTok subclass with the same pixel decoder)
        self.dtype = (torch.float16 if isinstance(tok, TiTok) else BF16) if on_cuda else torch.float32
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
        with LOCK:
            return self._safe_call("encode", "encode", images.to(self.device))

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        latents = latents.to(self.device)
        with LOCK:
            if not latents.is_floating_point():
                # id -> codeword lookups validate ids on the host: keep them out of the graph
                latents = self.model.latents_from_indices(latents)
            return self._safe_call("decode", "decode", latents)

_TOK_CACHE = _PerModelCache()


def fast_tokenizer(tok: nn.Module, compile: Optional[bool] = None,
                   graphs: Optional[bool] = None) -> FastTokenizer:
    """The (cached) fast copy of a tokenizer: ``fast_tokenizer(tok).decode(latents)``."""
    device = module_device(tok)
    key = ("tok", compile_enabled(device, compile), graphs_enabled(device, graphs))
    return _TOK_CACHE.get(tok, key, lambda: FastTokenizer(tok, compile, graphs))
