"""Where a SiT-XL sampling step's time goes on this GPU, and what the fast path's variants cost:
kernel tables (torch.profiler, compiled pieces launched without graphs so every kernel is seen)
and graph-replay step times for the issue-19 cases (B=64 guided / unguided steps, batch-1 guided
/ unguided steps; 64 and 32 tokens), kernel micro-benchmarks (attention on the qkv layout; the
batch-1 matrix products, cuBLAS vs the skinny Triton kernel), then full runs and the agreement
with float32 of each variant.

    python -m softvq_demo.bench.profile_sit --out $OUT [--variants base,new]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from ..sampling import fast as fastmod
from ..sampling.fast import kernels, runtime
from ..sampling.flow import sample_flow
from .report import clock_and_power_log
from .cases import SETTINGS, build_sit, rel_err

T0 = time.perf_counter()
LOG: list = []


def log(msg: str) -> None:
    line = f"[{time.perf_counter() - T0:6.1f}s] {msg}"
    LOG.append(line)
    print(line, flush=True)


def sync():
    torch.cuda.synchronize()


def kernel_table(fn, steps: int, top: int = 18) -> tuple[float, list]:
    from torch.profiler import ProfilerActivity, profile

    fn()
    sync()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        sync()
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    total = sum(e.self_device_time_total for e in events)
    rows = []
    for e in sorted(events, key=lambda e: -e.self_device_time_total)[:top]:
        rows.append(f"{100 * e.self_device_time_total / total:5.1f}% {e.self_device_time_total / steps / 1000:7.3f} "
                    f"ms/step {e.count / steps:6.1f}/step  {e.key[:110]}")
    count = sum(e.count for e in events) / steps
    rows.append(f"kernels per step: {count:.0f}")
    return total / steps / 1000, rows


def step_replay_ms(gen, b: int, guided: bool, reps: int = 30) -> float:
    """Wall ms per step of the captured step graph replayed back to back."""
    n, d = gen.num_tokens, gen.token_dim
    noise = torch.randn(b, n, d, device="cuda")
    y = torch.randint(0, gen.num_classes, (b,), device="cuda")
    opts = dict(steps=reps, method="euler", cfg_scale=1.75 if guided else 1.0, guidance_low=0.0,
                guidance_high=1.0)
    fastmod.sample_sit_fast(gen, noise, y, null_class=gen.null_class, **opts)
    fast = fastmod.sit_fast(gen)
    runner = fast.runners[next(reversed(fast.runners))]
    g = runner.graphs.graphs.get(guided)
    if g is None:
        return float("nan")
    times = []
    for _ in range(3):
        runner.step.zero_()
        sync()
        t0 = time.perf_counter()
        for _ in range(reps):
            g.replay()
        sync()
        times.append((time.perf_counter() - t0) / reps * 1000)
    runner.step.zero_()
    return statistics.median(times)


def profile_cases(gen, label: str, report: list) -> None:
    n, d = gen.num_tokens, gen.token_dim
    for b in (64, 1):
        for guided in (True, False):
            noise = torch.randn(b, n, d, device="cuda")
            y = torch.randint(0, gen.num_classes, (b,), device="cuda")
            opts = dict(steps=4, method="euler", cfg_scale=1.75 if guided else 1.0, guidance_low=0.0,
                        guidance_high=1.0)
            fn = lambda: fastmod.sample_sit_fast(gen, noise, y, null_class=gen.null_class,  # noqa: E731
                                                 graphs=False, **opts)
            ms, rows = kernel_table(fn, 4)
            wall = step_replay_ms(gen, b, guided)
            head = (f"== {label} {n} tok B={b} {'guided' if guided else 'unguided'}: kernel time "
                    f"{ms:.3f} ms/step, graph replay {wall:.3f} ms/step")
            log(head)
            report.append(head)
            report.extend(rows)
            report.append("")
            fastmod.sit_fast(gen).runners.clear()


def full_runs(gen, label: str, results: dict) -> None:
    n, d = gen.num_tokens, gen.token_dim
    for b, setting, reps in ((64, "250 sde", 2), (1, "50 euler", 5)):
        opts = SETTINGS[setting]
        noise = torch.randn(b, n, d, device="cuda")
        y = torch.randint(0, gen.num_classes, (b,), device="cuda")
        fn = lambda: fastmod.sample_sit_fast(gen, noise, y, null_class=gen.null_class, **opts)  # noqa: E731
        fn()
        times = []
        for _ in range(reps):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
        t = statistics.median(times)
        key = f"{label} {n} tok B={b} {setting}"
        results[key] = dict(s=t, images_per_s=b / t, ms_per_image=1000 * t / b, runs=times)
        log(f"RUN {key}: {b / t:.2f} img/s, {1000 * t / b:.1f} ms/image (runs {[round(x, 3) for x in times]})")
        fastmod.sit_fast(gen).runners.clear()


def agreement(gen, label: str, refs: dict, results: dict) -> None:
    n, d = gen.num_tokens, gen.token_dim
    for b in (4, 1):
        noise = torch.randn(b, n, d, generator=torch.Generator().manual_seed(7)).cuda()
        y = (torch.tensor([1, 5, 7, 9][:b]) % gen.num_classes).cuda()
        for setting, opts in SETTINGS.items():
            key = (n, b, setting)
            if key not in refs:
                refs[key] = sample_flow(gen, noise, y, null_class=gen.null_class,
                                        rng=torch.Generator().manual_seed(11), **opts).float()
            out = fastmod.sample_sit_fast(gen, noise, y, null_class=gen.null_class,
                                          rng=torch.Generator().manual_seed(11), **opts)
            e = rel_err(out, refs[key])
            results[f"{label} {n} tok B={b} {setting} tokens rel err vs fp32"] = e
            log(f"AGREE {label} {n} tok B={b} {setting}: tokens rel err {e:.2e}")
        fastmod.sit_fast(gen).runners.clear()


def micro(report: list) -> None:
    dev = torch.device("cuda")
    report.append("== attention on the qkv layout (ms per call, graph replays; rel err vs fp32)")
    for rows, n in ((128, 64), (64, 64), (128, 32), (64, 32), (2, 64), (1, 64), (2, 32)):
        heads, hd = 16, 72
        copies = 3 if rows >= 64 else 1
        qkvs = [torch.randn(rows, n, 3 * heads * hd, device=dev, dtype=torch.bfloat16) for _ in range(copies)]
        ref = runtime._attention_qkv(qkvs[0].float(), heads, None)
        line = []
        for name in (None,) + runtime.ATTENTION_BACKENDS:
            if name == "triton" and not kernels.short_attention_ok(n, hd):
                continue
            try:
                st = {"i": 0}

                def call(name=name):
                    st["i"] += 1
                    return runtime._attention_qkv(qkvs[st["i"] % copies], heads, name)
                err = rel_err(runtime._attention_qkv(qkvs[0], heads, name).float(), ref)
                line.append(f"{name or 'sdpa'} {kernels.graph_ms(call):.4f} ({err:.1e})")
            except Exception as exc:
                line.append(f"{name or 'sdpa'} failed {type(exc).__name__}")
        report.append(f"rows {rows} x {n} tok: " + ", ".join(line))
        log(report[-1])
    report.append("")
    report.append("== batch-1 products (M token rows): ms per call, cuBLAS vs skinny (block_n, split, block_k)")
    h, f = 1152, 4608
    for m in (128, 64):
        for n, k, act, what in ((3 * h, h, 0, "qkv"), (h, h, 0, "proj"), (f, h, 1, "fc1+gelu"), (h, f, 0, "fc2")):
            kernels.pick_linear(m, n, k, act, dev, torch.bfloat16)
            rec = kernels.LINEAR_CONFIGS[(str(dev), m, n, k, act, torch.bfloat16)]
            ms = rec["ms"]
            timed = {c: t for c, t in ms.items() if isinstance(t, float)}
            best = min((c for c in timed if c != "cublas"), key=timed.get, default=None)
            floor_us = n * k * 2 / 4.3e12 * 1e6
            line = (f"M={m} {what} ({n}x{k}): cublas {1000 * ms.get('cublas', float('nan')):.1f} us, best skinny "
                    f"{best} {1000 * timed.get(best, float('nan')):.1f} us, pick {rec['pick']}; weight-read floor "
                    f"{floor_us:.1f} us; all: " + ", ".join(f"{c} {1000 * t:.1f}" if isinstance(t, float) else f"{c} {t}"
                                                             for c, t in ms.items()))
            report.append(line)
            log(line)
    report.append("")


VARIANTS = {
    # the fast path as it was (issue 19's figures): float32 stream, SDPA kernels, compiled norms
    "base": dict(env={"SOFTVQ_RESIDUAL": "fp32", "SOFTVQ_FUSED_NORM": "0"}, triton_attention=False),
    # the defaults now (bf16 stream, fused residual + LayerNorm, Triton attention where picked)
    "new": dict(env={}, triton_attention=True),
    # first call's variant: bf16 stream through torch.compile's norms
    "new-bf16res": dict(env={"SOFTVQ_RESIDUAL": "bf16", "SOFTVQ_FUSED_NORM": "0"}, triton_attention=True),
}


def use_variant(name: str) -> None:
    v = VARIANTS[name]
    for key in ("SOFTVQ_RESIDUAL", "SOFTVQ_FUSED_NORM", "SOFTVQ_SKINNY"):
        os.environ.pop(key, None)
    os.environ.update(v["env"])
    base = ("flash", "efficient", "cudnn")
    runtime.ATTENTION_BACKENDS = base + (("triton",) if v["triton_attention"] else ())
    runtime.ATTENTION_PICKS.clear()
    kernels.LINEAR_CONFIGS.clear()
    kernels.NORM_CHECKS.clear()


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=os.environ.get("OUT"))
    p.add_argument("--variants", default="base,new-bf16res")
    p.add_argument("--skip", default="")
    args = p.parse_args(argv)
    out = Path(args.out) if args.out else None
    skip = set(filter(None, args.skip.split(",")))
    with clock_and_power_log(out):
        report: list = []
        results: dict = {}
        log(f"gpu {torch.cuda.get_device_name()}, torch {torch.__version__}")
        a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
        b2 = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
        for _ in range(3):
            a @ b2
        sync()
        t0 = time.perf_counter()
        for _ in range(10):
            a @ b2
        sync()
        results["matmul_tflops"] = 2 * 8192 ** 3 * 10 / (time.perf_counter() - t0) / 1e12
        del a, b2
        log(f"bf16 matmul {results['matmul_tflops']:.0f} TFLOP/s")
        if "micro" not in skip:
            micro(report)
        refs: dict = {}
        gens = {64: build_sit(64, 32, torch.device("cuda"), tiny=False),
                32: build_sit(32, 64, torch.device("cuda"), tiny=False)}
        for name in args.variants.split(","):
            use_variant(name)
            for n, gen in gens.items():
                fastmod.release(gen)
                t0 = time.perf_counter()
                if "profile" not in skip:
                    profile_cases(gen, name, report)
                if "runs" not in skip:
                    full_runs(gen, name, results)
                if "agree" not in skip and n == 64:
                    agreement(gen, name, refs, results)
                log(f"variant {name} {n} tok done in {time.perf_counter() - t0:.0f}s; attention picks "
                    f"{ {k[1]: v['pick'] for k, v in runtime.ATTENTION_PICKS.items()} }; linear picks "
                    f"{fastmod.sit_fast(gen).lin_picks}")
                fastmod.release(gen)
                if out:
                    (out / "profile.txt").write_text("\n".join(report) + "\n")
                    (out / "profile.json").write_text(json.dumps(dict(results=results, log=LOG), indent=1,
                                                                  default=str))
    print("\n".join(report))
    print(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
