"""The headline case only (SiT-XL, 64 tokens, B=64, 250-step SDE, cfg 1.75 on t<=0.7), current
fast path and the previous revision's, alternated (A B A B ...) so that the GPU's clock and
thermal state weigh on both alike; GPU clocks and power sampled alongside.

    python -m softvq_demo.bench.headline --rounds 3 --out $OUT
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import time
from pathlib import Path

import torch

from ..sampling import fast as fastmod
from .cases import SETTINGS, build_sit
from .legacy import previous_blocks


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    dev = torch.device("cuda")
    out = Path(args.out) if args.out else None
    smi = None
    if out:
        out.mkdir(parents=True, exist_ok=True)
        try:
            smi = subprocess.Popen(["nvidia-smi", "--query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,"
                                    "temperature.gpu,clocks_throttle_reasons.active", "--format=csv",
                                    "-lms", "250"], stdout=open(out / "smi.csv", "w"),
                                   stderr=subprocess.DEVNULL)
        except OSError:
            smi = None
    gen = build_sit(64, 32, dev, tiny=False)
    opts = SETTINGS["250 sde"]
    b = 64
    noise = torch.randn(b, 64, 32, device=dev)
    y = torch.randint(0, 1000, (b,), device=dev)
    variants = {"current": False, "previous": True}
    times: dict = {k: [] for k in variants}
    log = []

    def run(legacy: bool) -> float:
        kw = dict(precompute=False) if legacy else {}  # the previous revision had no adaLN table
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fastmod.sample_sit_fast(gen, noise, y, null_class=gen.null_class, **opts, **kw)
        torch.cuda.synchronize()
        return time.perf_counter() - t0

    def layout(legacy: bool):
        fastmod.sit_fast(gen).runners.clear()  # graphs hold one variant's kernels
        return previous_blocks(fastmod.sit_fast(gen)) if legacy else contextlib.nullcontext()

    t_start = time.perf_counter()
    for name, legacy in variants.items():  # compile and capture both first
        with layout(legacy):
            run(legacy)
            run(legacy)
    for r in range(args.rounds):
        for name, legacy in variants.items():
            with layout(legacy):
                run(legacy)  # capture
                t = run(legacy)
            times[name].append(t)
            line = f"[{time.perf_counter() - t_start:6.1f}s] round {r} {name:8s} {t:.3f} s  {b / t:.2f} images/s"
            log.append(line)
            print(line, flush=True)
    summary = {k: dict(runs_s=v, median_images_per_s=b / statistics.median(v)) for k, v in times.items()}
    ratio = summary["current"]["median_images_per_s"] / summary["previous"]["median_images_per_s"]
    print(json.dumps(summary, indent=1))
    print(f"current / previous (medians): {ratio:.3f}x")
    if smi is not None:
        smi.terminate()
    if out:
        (out / "headline.json").write_text(json.dumps(dict(summary=summary, ratio=ratio, log=log,
                                                            gpu=torch.cuda.get_device_name()), indent=1))


if __name__ == "__main__":
    main()
