"""The GPU benchmark's markdown report."""
from __future__ import annotations

import contextlib
import subprocess
import time
from pathlib import Path
from typing import Iterator, Optional

from ..sampling import fast as fastmod
from .cases import CONFIGS


@contextlib.contextmanager
def clock_and_power_log(out: Optional[Path], every_ms: int = 500) -> Iterator[None]:
    """While the block runs, ``nvidia-smi`` writes clocks, power, temperature and throttle reasons
    to ``out/smi.csv`` every ``every_ms`` ms (the H100/H200 run at their power cap under SiT-XL:
    a figure without the clock beside it is half a figure). Nothing without ``out`` or nvidia-smi."""
    proc = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        try:
            proc = subprocess.Popen(["nvidia-smi", "--query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,"
                                     "temperature.gpu,clocks_throttle_reasons.active", "--format=csv",
                                     "-lms", str(every_ms)], stdout=open(out / "smi.csv", "w"),
                                    stderr=subprocess.DEVNULL)
        except OSError:
            proc = None
    try:
        yield
    finally:
        if proc is not None:
            proc.terminate()


def speedups(index: dict, base: tuple, row: dict, seconds: str) -> tuple[str, str]:
    """The "x naive" and "x official" cells of a row: the time of the same case under those
    configurations over this row's time ("-" where that configuration did not run)."""
    cells = []
    for config, digits in (("naive", 1), ("official", 2)):
        other = index.get(base + (config,))
        cells.append(f"{other[seconds] / row[seconds]:.{digits}f}" if other else "-")
    return cells[0], cells[1]


def markdown_report(bench) -> str:
    """The benchmark's results as markdown tables (``bench``: a finished ``bench.gpu.Bench``)."""
    lines = []
    add = lines.append
    add(f"# softvq-demo GPU benchmark  ({bench.env.get('gpu', bench.env.get('device'))}, torch "
        f"{bench.env.get('torch')}{', tiny models' if bench.tiny else ''}{', --quick' if bench.quick else ''})")
    add(f"measured peak: {bench.peak_tflops:.0f} TFLOP/s ({'bf16' if bench.cuda else 'fp32'} matmul), "
        f"copy {bench.bandwidth:.0f} GB/s; wall {time.perf_counter() - bench.start:.0f} s")
    add("")
    if bench.sit:
        add("## SiT-XL generation (generator only)")
        add("| px | latent (tokens x dim) | B | sampler | config | images/s | ms/step | TFLOP/s | % peak "
            "| x naive | x official | how |")
        add("|---|---|---|---|---|---|---|---|---|---|---|---|")
        index = {(r["net"], r["batch"], r["setting"], r["config"]): r for r in bench.sit}
        for r in sorted(bench.sit, key=lambda r: (r["px"], r["tokens"], r["batch"], r["setting"],
                                                 CONFIGS.index(r["config"]))):
            base = (r["net"], r["batch"], r["setting"])
            xn, xo = speedups(index, base, r, "total_s")
            add(f"| {r['px']} | {r['kind']} {r['tokens']}x{r['dim']} | {r['batch']} | {r['setting']} "
                f"| {r['config']} | {r['images_per_s']:.2f} | {r['ms_per_step']:.2f} | {r['tflops']:.0f} "
                f"| {100 * r['frac_peak']:.0f} | {xn} | {xo} | {r['how']}{'; ' + r['note'] if r['note'] else ''} |")
        add("")
        add("## 1D vs 2D (same implementation, fast path, generator only)")
        add("| px | B | sampler | 1D latent | 1D images/s | 2D latent | 2D images/s | speedup | FLOP ratio |")
        add("|---|---|---|---|---|---|---|---|---|")
        pairs = [(256, bench.nets[0], bench.nets[2]), (256, bench.nets[1], bench.nets[2]),
                 (512, bench.nets[1], bench.nets[3])]
        for px, one, two in pairs:
            for b in bench.batches:
                for setting in bench.settings:
                    r1 = index.get((one[0], b, setting, "fast"))
                    r2 = index.get((two[0], b, setting, "fast"))
                    if r1 and r2:
                        fr = (r2["tflops"] * r2["total_s"] / b) / (r1["tflops"] * r1["total_s"] / b)
                        add(f"| {px} | {b} | {setting} | {one[2]}x{one[3]} | {r1['images_per_s']:.2f} "
                            f"| {two[2]}x{two[3]} | {r2['images_per_s']:.2f} "
                            f"| {r1['images_per_s'] / r2['images_per_s']:.1f}x | {fr:.1f}x |")
        add("")
    if bench.toks:
        add("## Tokenizers (256 px)")
        add("| model | op | B | config | images/s | ms | TFLOP/s | % peak | x naive | x official | GFLOP/img |")
        add("|---|---|---|---|---|---|---|---|---|---|---|")
        index = {(r["model"], r["op"], r["batch"], r["config"]): r for r in bench.toks}
        for r in bench.toks:
            base = (r["model"], r["op"], r["batch"])
            xn, xo = speedups(index, base, r, "seconds")
            add(f"| {r['model']} | {r['op']} | {r['batch']} | {r['config']} | {r['images_per_s']:.1f} "
                f"| {r['ms']:.2f} | {r['tflops']:.0f} | {100 * r['frac_peak']:.0f} | {xn} | {xo} "
                f"| {r['gflop_per_image']:.0f} |")
        add("")
    if bench.maskgit:
        add("## MaskGIT generation (TiTok generators, release sampling settings; tokens only)")
        add("| model | B | config | steps | images/s | ms/step | x reference |")
        add("|---|---|---|---|---|---|---|")
        index = {(r["model"], r["batch"], r["config"]): r for r in bench.maskgit}
        for r in bench.maskgit:
            ref = index.get((r["model"], r["batch"], "reference"))
            xr = f"{ref['seconds'] / r['seconds']:.1f}" if ref else "-"
            add(f"| {r['model']} | {r['batch']} | {r['config']} | {r['steps']} | {r['images_per_s']:.1f} "
                f"| {r['ms_per_step']:.2f} | {xr} |")
        add("")
    if bench.checks:
        add("## Correctness (relative error ||fast - ref|| / ||ref||)")
        for c in bench.checks:
            add("- " + ", ".join(f"{k}={v:.2e}" if isinstance(v, float) else f"{k}={v}" for k, v in c.items()))
        add("")
    if bench.targets:
        add("## Targets")
        for t in bench.targets:
            verdict = "PASS" if t["ok"] else ("n/a" if t["ok"] is None else "MISS")
            add(f"- {t['what']}: **{t['value']:.3g}** (goal {t['goal']}) {verdict}")
        add("")
    if bench.ab:
        add("## Same-run A/B (headline case)")
        for r in bench.ab:
            add(f"- {r['variant']}: {r['images_per_s']:.2f} images/s, {r['ms_per_step']:.2f} ms/step")
        add("")
    if fastmod.ATTENTION_PICKS:
        add("## Attention kernel picks (ms per call on the probe shape; rel err vs fp32)")
        for k, v in fastmod.ATTENTION_PICKS.items():
            ms = ", ".join(f"{name} {t:.4f}" for name, t in v.get("ms", {}).items())
            errs = ", ".join(f"{name} {e:.1e}" if isinstance(e, float) else f"{name} {e}"
                             for name, e in v.get("rel_err", {}).items())
            add(f"- {v.get('tokens')} tokens x {v.get('rows')} rows: pick **{v.get('pick') or 'sdpa'}**; "
                f"{ms}; {errs}")
        add("")
    add("official = the official recipe compiled (torch.compile, fp16 autocast, doubled CFG batch) as "
        "generate_sit.py runs it; official-eager = the same uncompiled (the H100 history's 'official').")
    if bench.compile_s:
        add("compile + capture (first calls, s): " + ", ".join(f"{k}: {v}" for k, v in bench.compile_s.items()))
    for note in bench.notes:
        add(f"- {note}")
    text = "\n".join(lines)
    if bench.out:
        (bench.out / "bench.md").write_text(text + "\n")
    return text
