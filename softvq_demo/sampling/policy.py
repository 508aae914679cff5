"""When the CUDA fast path pays for itself, and warming it up in the background.

The fast path (``sampling.fast``) costs seconds on its first call for a given shape: bf16 copy,
``torch.compile`` of its pieces, CUDA-graph capture. That is a bargain for 50,000 samples and a
loss for one image from the command line (measured on the H200: 11.8 s vs 0.26 s). With
``fast=None`` (the default) ``sample``/``generate`` therefore take the fast path only when

- the same (model, batch, sampler settings) already ran on it in this process ("warm"), or
- the job is big enough that the reference sampler's estimated time, ``reference_seconds``,
  exceeds ``MIN_SECONDS`` (``SOFTVQ_FAST_MIN_SECONDS``, default 20 s: several times a cold
  compile), or
- the caller asks for it (``fast=True``, or ``SOFTVQ_FAST=1``/``always`` for every call).

Otherwise the call runs the reference sampler; when the same shape comes back a second time
(``REPEATS``), the fast path is warmed for it in a background thread, and later calls use it
once it is ready: no call waits for a compile it did not ask for. ``SOFTVQ_FAST=0`` turns the fast
path off; ``SOFTVQ_FAST_BACKGROUND=0`` turns the background warm-up off.

Compiled code is cached across processes (``compile_cache``): a second process pays the
tracing, not the code generation.

The estimate's constants are rough (``REF_TFLOPS``, ``REF_STEP_FLOOR_S``, from the H100/H200
figures in docs/benchmarks.md); ``python -m softvq_demo.bench.oneshot`` prints the estimate next
to the measured times so that they can be checked on the machine at hand.

FlexTok's decode follows the same rule, its tokenizer standing in for the generator (the hook in
``flextok_fast``, which registers its cost and warm-up here through ``register_family``; options
steps / guided / apg, the estimate from its flow decoder's FLOPs); ``python -m
softvq_demo.bench.flextok`` prints its estimate beside the measured times.
"""
from __future__ import annotations

import os
import threading
import warnings
import weakref
from typing import Callable, Hashable, Optional

import torch

MIN_SECONDS = 20.0
REPEATS = 2
REF_TFLOPS = 250.0        # reference sampler, bf16 autocast, eager, large batches (H100/H200)
REF_STEP_FLOOR_S = 4e-3   # ... and its per-evaluation floor at small batches (launch-bound)

# Families whose fast path lives in its own module register their cost and warm-up here
# (FlexTok: sampling.flextok_fast.install), so that this module imports none of them.
FAMILY_HOOKS: dict[str, dict[str, Callable]] = {}


def register_family(family: str, *, row_flops: Callable, warm_up: Callable) -> None:
    """``row_flops(model)``: matmul FLOPs of one row evaluation; ``warm_up(model, batch, options)``:
    compile and capture the fast path for that shape."""
    FAMILY_HOOKS[family] = {"row_flops": row_flops, "warm_up": warm_up}


_STATE_LOCK = threading.Lock()
_warm: "weakref.WeakKeyDictionary[torch.nn.Module, set]" = weakref.WeakKeyDictionary()
_busy: "weakref.WeakKeyDictionary[torch.nn.Module, set]" = weakref.WeakKeyDictionary()
_seen: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()


def mode() -> str:
    """``auto`` | ``always`` | ``off`` from SOFTVQ_FAST (unset: auto)."""
    value = os.environ.get("SOFTVQ_FAST", "auto").strip().lower()
    if value in ("0", "false", "no", "off", ""):
        return "off"
    if value in ("1", "true", "yes", "on", "always"):
        return "always"
    return "auto"


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def run_key(generator, batch: int, options: dict) -> Hashable:
    """What a warm fast path is specific to: batch and the sampler settings."""
    return (int(batch),) + tuple(sorted((k, v) for k, v in options.items() if isinstance(v, (int, float, str))))


def row_evaluations(generator, batch: int, options: dict) -> int:
    """Batch rows × network evaluations of one sampling run (a guided evaluation counts twice)."""
    if generator.family == "flextok":  # a decode: options from flextok_fast.run_options
        return batch * int(options["steps"]) * (2 if options.get("guided") else 1)
    if generator.family == "sit":
        from .flow import network_evaluations
        from . import sit_defaults

        o = {**sit_defaults(generator), **options}
        return batch * network_evaluations(o["steps"], o["method"], o["cfg_scale"], o["guidance_low"],
                                           o["guidance_high"])
    steps = int(options.get("steps") or getattr(generator, "num_steps", 8) or 8)
    return batch * steps * 2  # MaskGIT: every step guided in the release settings


def reference_seconds(generator, batch: int, options: dict) -> float:
    """Rough time of the reference sampler for one run on a GPU (matmul FLOPs / REF_TFLOPS, at
    least REF_STEP_FLOOR_S per evaluation)."""
    hooks = FAMILY_HOOKS.get(generator.family)
    if hooks is not None:  # e.g. FlexTok: its tokenizer's flow decoder (flextok_fast.row_flops)
        flops_row = hooks["row_flops"](generator)
    else:
        params = sum(p.numel() for p in generator.parameters())
        flops_row = 2.0 * params * int(generator.num_tokens)
    rows = row_evaluations(generator, batch, options)
    evals = rows / max(batch, 1)
    return max(rows * flops_row / (REF_TFLOPS * 1e12), evals * REF_STEP_FLOOR_S)


def is_warm(model, key: Hashable) -> bool:
    with _STATE_LOCK:
        return key in _warm.get(model, ())


def mark_warm(model, key: Hashable) -> None:
    with _STATE_LOCK:
        _warm.setdefault(model, set()).add(key)


def choose(generator, device: torch.device, fast: Optional[bool], batch: int, options: dict,
           tokenizer=None, runs: int = 1) -> bool:
    """Whether this call takes the fast path (see the module docstring). ``runs``: how many runs
    of this shape the caller is about to make (a research job passes its chunk count)."""
    from .fast import fast_enabled

    if device.type != "cuda" or fast is False:
        return False
    if fast is True:
        return fast_enabled(device, True)
    m = mode()
    if m == "off":
        return False
    if m == "always":
        return True
    key = run_key(generator, batch, options)
    if is_warm(generator, key):
        return True
    if runs * reference_seconds(generator, batch, options) >= _env_float("SOFTVQ_FAST_MIN_SECONDS", MIN_SECONDS):
        return True
    with _STATE_LOCK:
        seen = _seen.setdefault(generator, {})
        seen[key] = seen.get(key, 0) + 1
        repeated = seen[key] >= REPEATS
    if repeated and os.environ.get("SOFTVQ_FAST_BACKGROUND", "1") != "0":
        warm_in_background(generator, tokenizer, batch, options)
    return False


def warm_up(generator, tokenizer=None, batch: int = 1, options: Optional[dict] = None) -> None:
    """Run the fast path once for this shape (compile, capture) and mark it warm."""
    from . import generate, sample

    options = dict(options or {})
    key = run_key(generator, batch, options)
    hooks = FAMILY_HOOKS.get(generator.family)
    if hooks is not None:  # e.g. a FlexTok decode (its tokenizer is the "generator")
        hooks["warm_up"](generator, batch, options)
        mark_warm(generator, key)
        return
    labels = [i % generator.num_classes for i in range(batch)]
    with torch.no_grad():
        if tokenizer is not None:
            generate(generator, tokenizer, labels, seed=0, fast=True, **options)
        else:
            sample(generator, labels, seed=0, fast=True, **options)
    mark_warm(generator, key)


def warm_in_background(generator, tokenizer=None, batch: int = 1, options: Optional[dict] = None,
                       ) -> Optional[threading.Thread]:
    """``warm_up`` in a daemon thread (one per shape at a time); calls meanwhile stay on the
    reference path. Returns the thread (None if this shape is warm or already warming)."""
    options = dict(options or {})
    key = run_key(generator, batch, options)
    with _STATE_LOCK:
        if key in _warm.get(generator, ()) or key in _busy.get(generator, ()):
            return None
        _busy.setdefault(generator, set()).add(key)

    def run() -> None:
        try:
            warm_up(generator, tokenizer, batch, options)
        except Exception as err:  # a failed warm-up only means calls stay on the reference path
            warnings.warn(f"fast-path warm-up failed ({type(err).__name__}: {str(err)[:200]})")
        finally:
            with _STATE_LOCK:
                _busy.get(generator, set()).discard(key)

    thread = threading.Thread(target=run, name="softvq-fast-warm-up", daemon=True)
    thread.start()
    return thread
