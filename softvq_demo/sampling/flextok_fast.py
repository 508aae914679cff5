"""FlexTok's decoder steps on the fast path: bf16, compiled blocks, the whole sampler as one CUDA graph.

``FlexTokFast(tok)`` runs the official ``MinRFPipeline`` (Euler from t = 1 to 0, both guidance
halves as one batch of 2B rows, CFG or APG, x ← x − v/T) through a bf16 copy of the flow decoder
(``fast.runtime.low_precision_copy``: matmul weights bf16, tokens / posembs float32, run under bf16
autocast; the transformer ``Block`` compiled with dynamic shapes, one graph for every layer and
batch size). On CUDA all T steps of one decode are captured as ONE CUDA graph per (batch, steps,
guided, APG) (``fast.runtime._Graphs``): a decode is one replay, no host syncs, no launch gaps.
The prefix length k and the guidance scale live in device buffers (values are padded to all N
tokens, positions ≥ k masked by the decoder's nested-dropout module as the reference does), so one
graph serves every prefix of the app's prefix strip and every scale. The sampler state (x, APG's
momentum) stays float32. On the CPU it runs eagerly — in the model's dtype by default (the tests
check the arithmetic), or with ``dtype=torch.bfloat16`` under CPU autocast (the tests bound the
bf16 error).

``FlexTok.decode`` reaches it through ``FlexTok.fast_decode_hook``, which ``install()`` sets
(models import no sampler; ``softvq_demo.sampling`` calls it at import): on CUDA the hook
asks ``sampling.policy`` whether the fast path pays for this (tokenizer, batch, steps, guided, APG)
— warm already, a reference decode estimated above ``SOFTVQ_FAST_MIN_SECONDS``, or
``SOFTVQ_FAST=1`` — and otherwise leaves the decode on the reference sampler (warming the fast path
in the background once a shape repeats). The noise, seed, steps, guidance_scale and apg of the
public decode are honoured exactly either way: the fast path only changes the arithmetic's
precision. ``enable_fast_decode(tok)`` forces it for one tokenizer.

Timed against the reference by ``python -m softvq_demo.bench.flextok`` (docs/benchmarks.md).
Switches as for the other fast paths: ``SOFTVQ_FAST=0`` (never), ``SOFTVQ_COMPILE=0`` (no
torch.compile), ``SOFTVQ_CUDA_GRAPHS=0`` (no graphs).
"""
from __future__ import annotations

import warnings
import weakref
from typing import Callable, Optional

import torch

from ..cancel import Cancelled
from ..device import module_device
from ..models.flextok import FlexTok, apg_velocity
from ..models.flextok_modules import PatchEmbedder
from . import policy
from .fast.runtime import (BF16, LOCK, _Graphs, _PerModelCache, compile_enabled, graphs_enabled,
                           low_precision_copy)


class FlexTokFast:
    """Drop-in for ``FlexTok.sample_latents`` with a low-precision, compiled, graph-replayed sampler."""

    def __init__(self, tok: FlexTok, dtype: Optional[torch.dtype] = None,
                 compile: Optional[bool] = None, graphs: Optional[bool] = None):
        self._ref = weakref.ref(tok)  # cached per tokenizer (weak keys): hold it weakly
        self.device = module_device(tok)
        cuda = self.device.type == "cuda"
        model_dtype = next(tok.decoder.parameters()).dtype
        self.dtype = dtype or (BF16 if cuda else model_dtype)
        self.compiled = compile_enabled(self.device, compile) and cuda
        if self.dtype == model_dtype and not cuda:
            self.decoder = tok.decoder  # the CPU arithmetic check: the reference's own weights
        else:
            self.decoder = low_precision_copy(tok.decoder, self.dtype, compile=self.compiled)
        self._graphs = _Graphs(self.device, graphs_enabled(self.device, graphs))
        self._buffers: dict = {}

    @property
    def graphs(self) -> bool:
        return self._graphs.enabled

    @property
    def tok(self) -> FlexTok:
        tok = self._ref()
        if tok is None:
            raise RuntimeError("the FlexTok behind this fast sampler was freed")
        return tok

    def _autocast(self):
        low = self.dtype in (torch.bfloat16, torch.float16)
        # cache_enabled=False: autocast's weight-cast cache does not survive graph replays
        return torch.autocast(device_type=self.device.type, dtype=self.dtype if low else None,
                              enabled=low, cache_enabled=False)

    # one Euler step, x float32 → x − dt·v; scale is a 0-d tensor so one graph serves every scale
    def _step(self, buf: dict, x, momentum, t, guided: bool, apg: bool, dt: float):
        tok = self.tok
        if not guided:
            v = tok.velocity(x, t, buf["values"], buf["keep"], decoder=self.decoder).float()
            return x - dt * v, momentum
        v_c, v_u = tok.velocity(torch.cat([x, x]), torch.cat([t, t]), buf["values2"], buf["keep2"],
                                buf["flags"], decoder=self.decoder).float().chunk(2)
        if apg:
            v, momentum = apg_velocity(v_c, v_u, buf["scale"], momentum)
        else:
            v = v_u + buf["scale"] * (v_c - v_u)
        return x - dt * v, momentum

    def _run(self, buf: dict, steps: int, guided: bool, apg: bool) -> None:
        """All steps from ``buf["x0"]`` into ``buf["out"]``; reads only buffers, so it can be
        captured once and replayed for any noise, tokens, prefix length and scale."""
        if guided:
            buf["values2"] = torch.cat([buf["values"], buf["values"]])
            buf["keep2"] = torch.cat([buf["keep"], buf["keep"]])
        x = buf["x0"]
        momentum = torch.zeros_like(x)
        with self._autocast():
            for t in buf["ts"]:
                x, momentum = self._step(buf, x, momentum, t, guided, apg, 1.0 / steps)
        buf["out"].copy_(x)

    def _buffer(self, key: tuple, values: torch.Tensor, noise: torch.Tensor, steps: int) -> dict:
        buf = self._buffers.get(key)
        if buf is None:
            b, n, d = values.shape[0], self.tok.num_tokens, values.shape[-1]
            dev = self.device
            buf = {"values": torch.zeros(b, n, d, device=dev),
                   "keep": torch.zeros(b, dtype=torch.long, device=dev),
                   "flags": torch.arange(2 * b, device=dev) >= b,
                   "scale": torch.ones((), device=dev),
                   "x0": torch.empty(noise.shape, device=dev),
                   "out": torch.empty(noise.shape, device=dev),
                   # separate tensors (not rows of one table): each one aligned, as compiled code likes
                   "ts": [torch.full((b,), i / steps, device=dev) for i in range(steps, 0, -1)]}
            self._buffers[key] = buf
        return buf

    @torch.no_grad()
    def sample_latents(self, values: torch.Tensor, noise: torch.Tensor, steps: int,
                       guidance_scale: float = 1.0, apg: bool = False) -> torch.Tensor:
        """As ``FlexTok.sample_latents`` (values B×k×d FSQ values, noise B×C×h×w) → float32 latents."""
        b, k = values.shape[:2]
        guided = guidance_scale != 1
        apg = bool(apg and guided)
        key = (b, int(steps), guided, apg, tuple(noise.shape[1:]))
        with LOCK:
            buf = self._buffer(key, values, noise, steps)
            buf["values"].zero_()
            buf["values"][:, :k].copy_(values)
            buf["keep"].fill_(k)
            buf["scale"].fill_(float(guidance_scale))
            buf["x0"].copy_(noise)

            def run() -> None:
                self._run(buf, steps, guided, apg)

            self._graphs.prepare(key, run)
            self._graphs.run(key, run)
            return buf["out"].clone()


_FAST = _PerModelCache()
_FAILED: "weakref.WeakKeyDictionary[FlexTok, str]" = weakref.WeakKeyDictionary()


def flextok_fast(tok: FlexTok) -> FlexTokFast:
    """The (cached) fast sampler of a tokenizer; rebuilt when its weights change."""
    device = module_device(tok)
    key = ("flextok", compile_enabled(device), graphs_enabled(device))
    return _FAST.get(tok, key, lambda: FlexTokFast(tok))


def enable_fast_decode(tok: FlexTok, **kwargs) -> FlexTokFast:
    """Route every ``tok.decode`` of this tokenizer through a ``FlexTokFast``, policy or not."""
    fast = FlexTokFast(tok, **kwargs)
    tok.fast_sampler = fast
    return fast


# --------------------------------------------------------------------------- policy hooks
def run_options(steps: int, guidance_scale: float, apg: bool) -> dict:
    """What a warm fast path is specific to (``policy.run_key``), besides the batch."""
    guided = guidance_scale != 1
    return {"steps": int(steps), "guided": guided, "apg": bool(apg and guided)}


def decoder_sequence(tok: FlexTok) -> int:
    """Tokens per decoder row: the latent patches plus all N register positions."""
    p = next(m.p for m in tok.decoder.modules() if isinstance(m, PatchEmbedder))
    return (tok.latent_size // p) ** 2 + tok.num_tokens


def row_flops(tok: FlexTok) -> float:
    """Matmul FLOPs of one decoder row: per-token weights over the whole sequence, the adaLN
    modulations (half of the released decoders' weights) once per image."""
    per_image = sum(p.numel() for n, p in tok.decoder.named_parameters() if "adaLN_modulation" in n)
    per_token = sum(p.numel() for p in tok.decoder.parameters()) - per_image
    return 2.0 * (per_token * decoder_sequence(tok) + per_image)


def warm_up(tok: FlexTok, batch: int, options: dict) -> None:
    """Compile and capture the fast sampler for this shape (``policy.warm_up``'s FlexTok case)."""
    shape = (batch, tok.latent_channels, tok.latent_size, tok.latent_size)
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(shape, generator=gen)
    values = tok.fsq.ids_to_values(torch.randint(0, tok.codebook_size, (batch, tok.num_tokens),
                                                 generator=gen))
    scale = 7.5 if options.get("guided") else 1.0
    flextok_fast(tok).sample_latents(values.to(module_device(tok)), noise.to(module_device(tok)),
                                     int(options["steps"]), scale, bool(options.get("apg")))


def _decode_hook(tok: FlexTok, batch: int, steps: int, guidance_scale: float, apg: bool
                 ) -> Optional[Callable[..., torch.Tensor]]:
    """``FlexTok.fast_decode_hook``: the fast sampler where the policy says it pays (never on the
    CPU), else None."""
    if tok in _FAILED:
        return None
    device = module_device(tok)
    options = run_options(steps, guidance_scale, apg)
    if not policy.choose(tok, device, None, batch, options):
        return None

    def sample(values, noise, steps, guidance_scale, apg) -> torch.Tensor:
        try:
            out = flextok_fast(tok).sample_latents(values, noise, steps, guidance_scale, apg)
        except Cancelled:
            raise
        except Exception as err:  # a compiler / capture failure must not break decoding
            _FAILED[tok] = f"{type(err).__name__}: {err}"
            warnings.warn(f"FlexTok fast decode failed, using the reference sampler from now on "
                          f"({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''})")
            return tok.sample_latents(values, noise, steps, guidance_scale, apg)
        policy.mark_warm(tok, policy.run_key(tok, batch, options))
        return out

    return sample


def install() -> None:
    """Set ``FlexTok.fast_decode_hook`` and FlexTok's cost and warm-up in ``policy``
    (``softvq_demo.sampling`` does it at import)."""
    FlexTok.fast_decode_hook = staticmethod(_decode_hook)
    policy.register_family("flextok", row_flops=row_flops, warm_up=warm_up)


__all__ = ["FlexTokFast", "flextok_fast", "enable_fast_decode", "run_options", "row_flops",
           "decoder_sequence", "warm_up", "install"]
