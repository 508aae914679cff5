"""Issue 19's speed targets in one run, side by side: SiT-XL (random weights), generator only.

    python -m softvq_demo.bench.headline --out $OUT [--rounds 2]

Cases: 64 and 32 tokens at B=64 with the paper's sampler (250-step SDE, CFG 1.75 on t <= 0.7),
and batch 1 with the interactive one (50-step Euler, same guidance). Each case runs, alternated
round by round so that the card's power and clock state weighs on all alike:

- ``fast``: the default fast path (Triton short-sequence attention and fused residual +
  LayerNorm passes where their checks pass, residual stream stored in bf16 on CUDA);
- ``fast-fp32-stream``: the same with the residual stream stored in float32;
- ``fast-base-kernels``: the default with the residual + LayerNorm and attention kernels launched
  as the previous session did (``kernels.*_VARIANTS["base"]``);
- ``fast-no-splitk``: the default without split-K proj / fc2 products at batch 1
  (``SOFTVQ_SPLITK=0``);
- ``previous``: issue 19's measured revision (float32 stream, torch.compile's fused
  LayerNorm passes, SDPA's kernels);
- ``reference path``: what ``sample()`` runs with the fast path off (``sample_flow`` on the
  model under bf16 autocast, eager), timed once.

Then the agreement of each fast variant with the float32 reference (float64 sampler state, same
noise and SDE draws, B=4): on the tokens, and on images decoded from both by the same float32
SoftVQ-L decoder (random weights), for both samplers. GPU clocks and power are sampled alongside.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from ..device import autocast
from ..sampling import fast as fastmod
from ..sampling.fast import kernels, runtime
from ..sampling.flow import sample_flow
from .report import clock_and_power_log
from .cases import SETTINGS, build_sit, build_softvq, rel_err

T0 = time.perf_counter()

# name -> (environment, attention candidates); the fast copy is rebuilt for each
VARIANTS = {
    "fast": ({}, runtime.ATTENTION_BACKENDS),
    "fast-fp32-stream": ({"SOFTVQ_RESIDUAL": "fp32"}, runtime.ATTENTION_BACKENDS),
    # the default with the previous session's launches of the two memory-bound kernels
    "fast-base-kernels": ({}, runtime.ATTENTION_BACKENDS),
    # the default without split-K products at batch 1 (``kernels.pick_split``)
    "fast-no-splitk": ({"SOFTVQ_SPLITK": "0"}, runtime.ATTENTION_BACKENDS),
    "previous": ({"SOFTVQ_RESIDUAL": "fp32", "SOFTVQ_FUSED_NORM": "0"}, ("flash", "efficient", "cudnn")),
}
TARGETS = {(64, 64): ("images/s", 21.0, ">="), (32, 64): ("images/s", 40.0, ">="),
           (64, 1): ("ms/image", 40.0, "<="), (32, 1): ("ms/image", 40.0, "<=")}


# the kernels' launch settings a variant may change: the defaults, then the per-length overrides
LAUNCH_SETTINGS = ("NORM_LAUNCH", "ATTN_LAUNCH", "NORM_LAUNCH_BY_TOKENS", "ATTN_LAUNCH_BY_TOKENS")


def apply_launches(path: str) -> dict:
    """Per sequence length launches of the memory-bound kernels from ``bench.memkernels``'s
    best_launch.json ({"NORM" | "ATTN": {tokens: variant}}), for every variant but
    fast-base-kernels; returns what was applied."""
    best = json.loads(Path(path).read_text())
    for prefix, per in best.items():
        variants = getattr(kernels, f"{prefix}_VARIANTS")
        table = getattr(kernels, f"{prefix}_LAUNCH_BY_TOKENS")
        for n, name in per.items():
            table[int(n)] = dict(variants[name])
    return best


def variant_name(prefix: str, launch: dict) -> str:
    """The name ``kernels.{prefix}_VARIANTS`` gives this launch (or the launch itself)."""
    return next((name for name, v in getattr(kernels, f"{prefix}_VARIANTS").items() if v == launch),
                str(launch))


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f}s] {msg}", flush=True)


class Variant:
    def __init__(self, name: str):
        self.name = name
        self.env, self.backends = VARIANTS[name]
        self.saved: dict = {}

    def __enter__(self):
        for k, v in self.env.items():
            self.saved[k] = os.environ.get(k)
            os.environ[k] = v
        self.saved_backends = runtime.ATTENTION_BACKENDS
        runtime.ATTENTION_BACKENDS = self.backends
        runtime.ATTENTION_PICKS.clear()
        kernels.NORM_CHECKS.clear()
        kernels.SPLIT_CONFIGS.clear()
        self.saved_launches = {k: dict(getattr(kernels, k)) for k in LAUNCH_SETTINGS}
        if self.name == "fast-base-kernels":   # the first kernels' launch at every length
            for prefix in ("NORM", "ATTN"):
                default = getattr(kernels, f"{prefix}_LAUNCH")
                default.clear()
                default.update(getattr(kernels, f"{prefix}_VARIANTS")["base"])
                getattr(kernels, f"{prefix}_LAUNCH_BY_TOKENS").clear()
        return self

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        runtime.ATTENTION_BACKENDS = self.saved_backends
        for k, v in self.saved_launches.items():
            getattr(kernels, k).clear()
            getattr(kernels, k).update(v)


def describe(gen) -> str:
    f = fastmod.sit_fast(gen)
    return (f"stream {str(f.residual).replace('torch.', '')}, attention {f.attn or 'sdpa'}, "
            f"fused norm {f.fused_norm}, split-K {dict(f.split_cache) or '-'}")


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn) -> float:
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", default=os.environ.get("OUT"))
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--no-reference", action="store_true", help="skip the reference path's timing")
    p.add_argument("--no-agreement", action="store_true")
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny SiTs (a CPU smoke run of the harness)")
    p.add_argument("--launches", default=None,
                   help="best_launch.json of bench.memkernels: its per-length kernel launches apply")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.variants.split(",") if n.strip() in VARIANTS]
    out = Path(args.out) if args.out else None
    with clock_and_power_log(out):
        dev = torch.device(args.device)
        log(f"{torch.cuda.get_device_name() if dev.type == 'cuda' else 'cpu'}, torch {torch.__version__}; "
            f"SOFTVQ_RESIDUAL={os.environ.get('SOFTVQ_RESIDUAL', 'auto')}")
        results: dict = {"variants": {}, "reference": {}, "agreement": {}, "how": {}}
        if args.launches:
            results["launches"] = apply_launches(args.launches)
            log(f"launches applied: {results['launches']}")
        results["launches_by_tokens"] = {prefix: {n: variant_name(prefix, launch) for n, launch in
                                                  getattr(kernels, f"{prefix}_LAUNCH_BY_TOKENS").items()}
                                         for prefix in ("NORM", "ATTN")}
        for n, d in ((64, 32), (32, 64)):
            gen = build_sit(n, d, dev, tiny=args.tiny)
            for b, setting in ((64, "250 sde"), (1, "50 euler")):
                opts = SETTINGS[setting]
                noise = torch.randn(b, n, d, device=dev)
                y = torch.randint(0, gen.num_classes, (b,), device=dev)

                def run() -> None:
                    fastmod.sample_sit_fast(gen, noise, y, null_class=gen.null_class, **opts)
                case = f"{n} tok B={b} {setting}"
                reps = 1 if b > 1 else 5
                for r in range(args.rounds):
                    for name in names:
                        with Variant(name):
                            fastmod.release(gen)
                            w = timed(run)  # builds, compiles, captures
                            t = statistics.median(timed(run) for _ in range(reps))
                            results["how"][f"{name} {n} tok"] = describe(gen)
                            if kernels.SPLIT_CONFIGS:
                                results.setdefault("split_probes", {})[f"{case} {name}"] = {
                                    str(k[1:5]): v for k, v in kernels.SPLIT_CONFIGS.items()}
                            fastmod.release(gen)
                        results["variants"].setdefault(case, {}).setdefault(name, []).append(t)
                        log(f"{case} round {r} {name:20s} {b / t:8.2f} img/s {1000 * t / b:8.1f} ms/image "
                            f"(first call {w:.1f}s; {results['how'][f'{name} {n} tok']})")
                if not args.no_reference:
                    with autocast(dev):
                        short = dict(opts, steps=2)
                        sample_flow(gen, noise, y, null_class=gen.null_class, **short)  # load kernels
                        t = timed(lambda: sample_flow(gen, noise, y, null_class=gen.null_class, **opts))
                    results["reference"][case] = t
                    log(f"{case} reference path {b / t:8.2f} img/s {1000 * t / b:8.1f} ms/image")
                if out:
                    (out / "headline.json").write_text(json.dumps(results, indent=1))
            if n == 64 and not args.no_agreement:
                agreement(gen, names, results)
            gen = None
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    text = report(results, names)
    print(text)
    if out:
        (out / "headline.json").write_text(json.dumps(results, indent=1))
        (out / "headline.md").write_text(text + "\n")


def agreement(gen, names, results) -> None:
    """Fast variants vs the float32 reference, same noise and SDE draws; tokens, then images
    decoded from both by one float32 SoftVQ-L decoder."""
    dev = next(gen.parameters()).device
    n, d = gen.num_tokens, gen.token_dim
    tok = build_softvq("L", dev, tiny=False)
    # B=4 for both samplers, and batch 1 (the interactive sampler), where the few-row products
    # (split-K) run
    for b, setting in [(4, s) for s in SETTINGS] + [(1, "50 euler")]:
        opts = SETTINGS[setting]
        noise = torch.randn(4, n, d, generator=torch.Generator().manual_seed(7))[:b].to(dev)
        y = torch.tensor([1, 5, 7, 9], device=dev)[:b]
        ref = sample_flow(gen, noise, y, null_class=gen.null_class,
                          rng=torch.Generator().manual_seed(11), **opts).float()
        setting = setting if b == 4 else f"{setting} B={b}"
        with torch.no_grad():
            img_ref = tok.decode(ref)
        for name in names:
            with Variant(name):
                fastmod.release(gen)
                out = fastmod.sample_sit_fast(gen, noise, y, null_class=gen.null_class,
                                              rng=torch.Generator().manual_seed(11), **opts)
                fastmod.release(gen)
            with torch.no_grad():
                img = tok.decode(out)
            row = dict(tokens=rel_err(out, ref), images=rel_err(img, img_ref))
            results["agreement"][f"{setting} {name}"] = row
            log(f"AGREE {setting} {name}: tokens {row['tokens']:.2e}, images (fp32 decoder) {row['images']:.2e}")
    del tok


def report(results: dict, names) -> str:
    lines = ["| case | " + " | ".join(names) + " | reference path | target |",
             "|---|" + "---|" * (len(names) + 2)]
    verdicts = []
    for case, per in results["variants"].items():
        n, b = int(case.split()[0]), int(case.split()[2].split("=")[1])
        unit, goal, cmp = TARGETS[(n, b)]

        def fmt(t: float) -> str:
            return f"{b / t:.2f} img/s" if unit == "images/s" else f"{1000 * t / b:.1f} ms"
        cells = [fmt(statistics.median(per[nm])) if nm in per else "-" for nm in names]
        ref = results["reference"].get(case)
        lines.append(f"| {case} | " + " | ".join(cells) + f" | {fmt(ref) if ref else '-'} | "
                     f"{cmp} {goal:g} {unit} |")
        if "fast" in per:
            t = statistics.median(per["fast"])
            value = b / t if unit == "images/s" else 1000 * t / b
            ok = value >= goal if cmp == ">=" else value <= goal
            verdicts.append(f"- {case}, default fast path: {value:.2f} {unit} (goal {cmp} {goal:g}): "
                            f"{'PASS' if ok else 'MISS'}"
                            + (f"; {(b / t) / (b / ref):.2f}x the reference path" if ref else ""))
    lines.append("")
    lines.extend(verdicts)
    if results["agreement"]:
        lines.append("")
        lines.append("| agreement with fp32 (B=4 unless named; same noise and draws) | tokens rel err | images rel err (fp32 SoftVQ-L decoder) |")
        lines.append("|---|---|---|")
        for k, v in results["agreement"].items():
            lines.append(f"| {k} | {v['tokens']:.2e} | {v['images']:.2e} |")
    lines.append("")
    lines.append("variants: " + "; ".join(f"{k}: {v}" for k, v in results["how"].items()))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
