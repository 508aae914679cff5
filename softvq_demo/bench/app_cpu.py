"""CPU latency of the explorer's main actions on the embedded models.

    python -m softvq_demo.bench.app_cpu                      # embedded models (checkpoints/)
    python -m softvq_demo.bench.app_cpu --tokenizer DIR --generator DIR --images 2000

Prints one table: reconstruction (encode+decode, one image), full per-token ablation (one
batched decode of N images), UMAP of N images pooled per image (cold = including numba's
first-call compilation, warm = a second fit), and 50-step generation of one image (Euler, CFG on
the guidance interval), each against the app's target.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from ..data.textscenes import TextScenes
from ..sampling.settings import SIT_DEFAULTS

# reconstruct and generate: the embedded models' targets (issue 11: encode+decode <= 100 ms, 50-step
# generation + decode <= 1.5 s per image on 2 cores)
TARGETS = {"reconstruct": 0.1, "ablation": 3.0, "umap": 30.0, "generate": 1.5}


def timed(fn, repeat: int = 5, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_images(n: int, size: int) -> torch.Tensor:
    """``n`` held-out textscenes images at ``size`` px."""
    ds = TextScenes("heldout", size=n, image_size=size)
    return torch.stack([ds.sample(i).tensor() for i in range(n)])


def _sit_text(opts: dict) -> str:
    return (f"{opts['method']}, CFG {opts['cfg_scale']:g} on [{opts['guidance_low']:g}, "
            f"{opts['guidance_high']:g}]")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokenizer", default=None, help="default: textscenes-softvq-32")
    p.add_argument("--generator", default=None, help="default: textscenes-sit")
    p.add_argument("--images", type=int, default=2000, help="images for the UMAP timing")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from .. import generate, load_generator, load_tokenizer
    from ..analysis import ablation as A
    from ..analysis.codec import decode, encode
    from ..analysis import latent_map as L

    tok_src = args.tokenizer or "textscenes-softvq-32"
    gen_src = args.generator or "textscenes-sit"
    tok = load_tokenizer(tok_src, device="cpu")
    rows = []
    x = bench_images(1, tok.image_size)

    rec = timed(lambda: decode(tok, encode(tok, x).latents))
    rows.append(("reconstruction (1 image)", rec, TARGETS["reconstruct"],
                 f"{tok.image_size}px, {tok.num_tokens} tokens"))

    lat = encode(tok, x).latents[0]
    abl = timed(lambda: A.ablate_tokens(tok, lat, "zero"), repeat=3)
    rows.append((f"per-token ablation ({tok.num_tokens} decodes)", abl, TARGETS["ablation"],
                 "one batched pass"))

    imgs = bench_images(args.images, tok.image_size)
    t0 = time.perf_counter()
    lats = L.encode_set(tok, imgs, batch_size=128)
    enc_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    L.latent_map(lats, "image", "umap")
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    L.latent_map(lats, "image", "umap", seed=1)
    warm = time.perf_counter() - t0
    rows.append((f"UMAP, {len(imgs)} images (cold)", cold, TARGETS["umap"],
                 f"incl. numba compile; encoding took {enc_s:.1f} s"))
    rows.append((f"UMAP, {len(imgs)} images (warm)", warm, TARGETS["umap"], "second fit"))
    pca = timed(lambda: L.latent_map(lats, "image", "pca"), repeat=3)
    rows.append((f"PCA, {len(imgs)} images", pca, None, "the instant option"))

    try:
        gen = load_generator(gen_src, device="cpu")
        opts = dict(SIT_DEFAULTS, steps=args.steps) if gen.family == "sit" else dict(steps=args.steps)
        gen_s = timed(lambda: generate(gen, tok, [0], seed=0, **opts), repeat=3)
        rows.append((f"generation, {args.steps} steps (1 image)", gen_s, TARGETS["generate"],
                     f"{gen.family}, {_sit_text(opts) if gen.family == 'sit' else ''}"))
    except Exception as err:  # a tokenizer without a matching generator still gets its numbers
        rows.append(("generation", float("nan"), TARGETS["generate"], f"skipped: {err}"))

    print(f"CPU: {torch.get_num_threads()} threads, torch {torch.__version__}; tokenizer {tok_src}; "
          f"generator {gen_src}")
    print(f"{'action':<42} {'seconds':>9} {'target':>8}  {'ok':<4} note")
    print("-" * 100)
    for name, secs, target, note in rows:
        ok = "" if target is None or secs != secs else ("yes" if secs < target else "NO")
        tgt = "" if target is None else f"< {target:g}"
        print(f"{name:<42} {secs:>9.3f} {tgt:>8}  {ok:<4} {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
