"""N samples from a generator/tokenizer pair into an ADM-format ``.npz``, on one or many processes.

    python -m softvq_demo sample --generator sit-xl_softvq-l-64 --n 50000 --out runs/l64
    torchrun --nproc_per_node=8 -m softvq_demo sample --generator ... --n 50000 --out runs/l64

Image ``i`` of a run is fixed by (seed, i): its class label (``balanced``: ``i % classes``, as
TiTok's ImageNet script; ``uniform``: drawn from (seed, i), as the SiT/REPA scripts) and its
initial noise are drawn from generators seeded by (seed, i). The sampler's own draws (SDE noise,
MaskGIT's token sampling) come from one generator per chunk seeded by (seed, chunk start), so
they also depend on ``--batch-size`` — kept in ``settings.json`` with everything else that
decides the pixels. The number of processes decides nothing.

The ``.npz`` holds ``arr_0`` (N×H×W×3 uint8, what the ADM evaluator, torch-fidelity and our
``fid`` read) and ``arr_1`` (the N labels). Pixels are quantised like the official scripts
(``clamp(127.5·x + 128, 0, 255)`` truncated to uint8).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.distributed as tdist
from PIL import Image
from tqdm.auto import tqdm

from ..sampling import check_pair, generate, pair_warning, policy, sit_defaults
from .shards import (Dist, check_settings, chunks, index_generator, join_shards, my_chunks, shard_path,
                     write_npz, write_settings)

LABEL_MODES = ("balanced", "uniform")


def to_uint8_nhwc(images: torch.Tensor) -> np.ndarray:
    """B×3×H×W in [-1, 1] → B×H×W×3 uint8, the official scripts' rounding."""
    x = torch.clamp(127.5 * images.float() + 128.0, 0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().cpu().numpy()


def labels_for(indices: range, num_classes: int, mode: str, seed: int) -> torch.Tensor:
    if mode == "balanced":
        return torch.tensor([i % num_classes for i in indices], dtype=torch.long)
    if mode == "uniform":
        return torch.tensor([int(torch.randint(num_classes, (1,), generator=index_generator(seed, 1, i)))
                             for i in indices], dtype=torch.long)
    raise ValueError(f"--labels must be one of {', '.join(LABEL_MODES)}, got {mode!r}")


def noise_for(indices: range, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """One CPU draw per image from its own (seed, index) generator: independent of the batch."""
    return torch.stack([torch.randn(shape, generator=index_generator(seed, 0, i)) for i in indices])


def output_name(n: int, size: int) -> str:
    return f"samples_{n}x{size}x{size}x3.npz"


def resolved_options(generator, options: dict) -> dict:
    if generator.family == "sit":
        return {**sit_defaults(generator), "path": generator.path_type, **options}
    gcfg = getattr(generator, "config", {}).get("model", {}).get("generator", {})
    defaults = dict(steps=getattr(generator, "num_steps", gcfg.get("num_steps")),
                    guidance_scale=getattr(generator, "guidance_scale", None),
                    guidance_decay=getattr(generator, "guidance_decay", None),
                    randomize_temperature=getattr(generator, "randomize_temperature", None))
    return {**{k: v for k, v in defaults.items() if v is not None}, **options}


def _all_reduce(dist: Dist, values: list[float], op: str) -> list[float]:
    if not dist.initialized:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=dist.device)
    tdist.all_reduce(t, op=tdist.ReduceOp.SUM if op == "sum" else tdist.ReduceOp.MAX)
    return t.tolist()


def sample_set(generator, tokenizer, n: int, out, *, dist: Dist, seed: int = 0, batch_size: int = 64,
               labels: str = "balanced", png: bool = False, fast: Optional[bool] = None,
               sources: Optional[dict] = None, progress: bool = True,
               on_chunk: Optional[Callable[[int, int], None]] = None, **options) -> dict:
    """Sample this rank's share of ``n`` images into ``out``; rank 0 joins them into the ``.npz``.

    Returns the summary written to ``out/settings.json`` (rank 0; other ranks get theirs)."""
    check_pair(tokenizer, generator)
    if labels not in LABEL_MODES:
        raise ValueError(f"--labels must be one of {', '.join(LABEL_MODES)}, got {labels!r}")
    out = Path(out)
    size = int(tokenizer.image_size)
    plan = chunks(n, batch_size)
    opts = resolved_options(generator, options)
    # one decision for the whole job: its compile is paid once over every chunk of this rank
    fast = policy.choose(generator, dist.device, fast, batch_size, options, tokenizer=tokenizer,
                         runs=len(plan))  # not per rank: the same choice on 1 or 8 GPUs
    identity = dict(kind="sample", sources=sources or {}, n=n, seed=seed, batch_size=batch_size,
                    labels=labels, image_size=size, options=opts,
                    fast=fast, num_classes=generator.num_classes)
    check_settings(out, identity)
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_settings(out, identity, status="running", warning=pair_warning(tokenizer, generator))
    todo = list(my_chunks(plan, dist, out))
    bar = tqdm(total=sum(b - a for a, b in todo), unit="img", disable=not (progress and dist.is_main),
               desc=f"sample (rank 0 of {dist.world_size})" if dist.world_size > 1 else "sample")
    times: list[tuple[int, float]] = []
    for start, stop in todo:
        idx = range(start, stop)
        y = labels_for(idx, generator.num_classes, labels, seed)
        noise = None
        if generator.family == "sit":
            noise = noise_for(idx, (generator.num_tokens, generator.token_dim), seed)
        t0 = time.perf_counter()
        result = generate(generator, tokenizer, y, seed=index_generator(seed, 2, start), noise=noise,
                          fast=fast, **options)
        if tuple(result.images.shape[1:]) != (3, size, size):
            raise ValueError(f"the tokenizer decodes to shape {tuple(result.images.shape[1:])}, not images "
                             f"3×{size}×{size} (a stage-1 TiTok without its pixel decoder?)")
        images = to_uint8_nhwc(result.images)
        times.append((stop - start, time.perf_counter() - t0))
        write_npz(shard_path(out, start, stop), images=images, labels=y.numpy(),
                  indices=np.arange(start, stop, dtype=np.int64))
        if png:
            (out / "png").mkdir(parents=True, exist_ok=True)
            for i, img in zip(idx, images):
                Image.fromarray(img).save(out / "png" / f"{i:06d}.png")
        bar.update(stop - start)
        if on_chunk is not None:
            on_chunk(start, stop)
    bar.close()
    done = sum(k for k, _ in times)
    busy = sum(t for _, t in times)
    steady_n = sum(k for k, _ in times[1:])
    steady_t = sum(t for _, t in times[1:])
    done_all, steady_all = _all_reduce(dist, [float(done), float(steady_n)], "sum")
    busy_max, steady_max = _all_reduce(dist, [busy, steady_t], "max")
    dist.barrier()  # every rank's chunks are on disk
    summary = dict(images_this_run=int(done_all), world_size=dist.world_size,
                   seconds=busy_max, images_per_s=done_all / busy_max if busy_max else None,
                   images_per_s_after_first_batch=steady_all / steady_max if steady_max else None,
                   device=str(dist.device))
    if dist.is_main:
        arrays = join_shards(out, plan, ("images", "labels"))
        npz = write_npz(out / output_name(n, size), arr_0=arrays["images"], arr_1=arrays["labels"])
        summary["npz"] = str(npz)
        write_settings(out, identity, status="done", summary=summary,
                       warning=pair_warning(tokenizer, generator))
    return summary
