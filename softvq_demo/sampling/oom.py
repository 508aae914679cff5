"""Out-of-memory handling for generation: retry with halved batches, and say so.

    out = generate_with_fallback(gen, tok, [207, 360, 1, 2], seed=0, steps=50)
    out.timings["batch_used"], out.timings["oom_retries"]   # 4, 0 when nothing ran out

A CUDA out-of-memory error (``torch.OutOfMemoryError``, or a ``RuntimeError`` whose message says
"out of memory") during a batch frees the cache and runs the same labels again in chunks of half
the size, down to ``min_batch``; only an OOM at that size is raised (the app reports it). SiT's
starting noise is drawn once for the whole batch from the seed, so ODE samplers (euler, heun) give
the same images in chunks as in one batch; SDE and MaskGIT draw further random numbers per chunk,
so their images change with the chunking (still seeded).
"""
from __future__ import annotations

import gc
import logging
from typing import Callable, Optional

import torch

log = logging.getLogger("softvq_demo.sampling")

_OOM_TYPES = tuple({t for t in (getattr(torch, "OutOfMemoryError", None),
                                getattr(torch.cuda, "OutOfMemoryError", None)) if t is not None})
_OOM_WORDS = ("out of memory", "can't allocate memory", "cublas_status_alloc_failed",
              "cudnn_status_alloc_failed")


def is_out_of_memory(err: BaseException) -> bool:
    """True for CUDA/CPU allocation failures, whatever type the framework raised them as."""
    if isinstance(err, MemoryError) or (_OOM_TYPES and isinstance(err, _OOM_TYPES)):
        return True
    if isinstance(err, RuntimeError):
        msg = str(err).lower()
        return any(w in msg for w in _OOM_WORDS)
    return False


def release_memory() -> None:
    """Drop what a failed attempt left behind (call outside the ``except`` block that caught it,
    whose traceback still holds the attempt's tensors)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def generate_with_fallback(generator, tokenizer, labels, *, seed=None,
                           progress: Optional[Callable[[int, int], None]] = None, min_batch: int = 1,
                           **options):
    """:func:`softvq_demo.generate`, retried in halved chunks after an out-of-memory error.

    ``timings`` gains ``batch_used`` (the chunk size that fitted) and ``oom_retries``."""
    from . import Generation, as_labels, generate, make_rng

    y = as_labels(labels, generator.num_classes, torch.device("cpu"))
    n = int(y.shape[0])
    failed = False
    try:
        out = generate(generator, tokenizer, y, seed=seed, progress=progress, **options)
    except Exception as err:  # noqa: BLE001 - only OOM is handled, everything else re-raised
        if not is_out_of_memory(err) or n <= min_batch:
            raise
        log.warning("out of memory generating %d images: retrying in smaller batches (%s)", n, err)
        failed = True
    if not failed:
        out.timings.update(batch_used=n, oom_retries=0)
        return out
    release_memory()

    rng = make_rng(seed)
    if generator.family == "sit" and options.get("noise") is None:
        # the noise one batch would have drawn: chunks of an ODE sampler then give the same images
        shape = (n, generator.num_tokens, generator.token_dim)
        options = {**options, "noise": torch.randn(shape, generator=rng,
                                                   device=rng.device if rng is not None else "cpu")}
    noise = options.pop("noise", None)
    chunk, retries, start, parts = max(min_batch, n // 2), 1, 0, []
    while start < n:
        size = min(chunk, n - start)
        extra = {} if noise is None else {"noise": noise[start:start + size]}
        failed = False
        try:
            parts.append(generate(generator, tokenizer, y[start:start + size], seed=rng,
                                  progress=progress, **extra, **options))
        except Exception as err:  # noqa: BLE001
            if not is_out_of_memory(err) or size <= min_batch:
                raise
            failed = True
        if failed:
            release_memory()
            retries += 1
            chunk = max(min_batch, size // 2)
            log.warning("out of memory at batch %d: retrying with %d", size, chunk)
            continue
        start += size
    timings = dict(parts[-1].timings)
    for k in ("generator_s", "decode_s", "total_s"):
        timings[k] = sum(p.timings[k] for p in parts)
    steps = max(int(timings.get("steps") or 1), 1)
    timings.update(batch=n, batch_used=chunk, oom_retries=retries,
                   images_per_s=n / max(timings["total_s"], 1e-9),
                   ms_per_step=1000 * timings["generator_s"] / steps)
    if "network_evals" in timings:
        timings["network_evals"] = sum(p.timings["network_evals"] for p in parts)
    return Generation(images=torch.cat([p.images for p in parts]),
                      tokens=torch.cat([p.tokens for p in parts]),
                      labels=torch.cat([p.labels for p in parts]), timings=timings)


__all__ = ["generate_with_fallback", "is_out_of_memory", "release_memory"]
