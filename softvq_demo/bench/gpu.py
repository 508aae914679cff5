"""Generation and tokenizer throughput, side by side: naive fp32, the official recipe, our fast path.

    python -m softvq_demo.bench                    # core targets, then the full matrix (H100: ~8 min)
    python -m softvq_demo.bench --mode core        # the targets only
    python -m softvq_demo.bench --quick            # full matrix, the slowest naive cases skipped
    python -m softvq_demo.bench --device cpu --tiny   # tiny models, seconds: checks the harness

Released architectures, random weights, built directly on the device:
- SiT-XL/1 over 1D tokens: 32×64 and 64×32 (SoftVQ, 256 px), 64×32 (SoftVQ 512 px: the same
  network as at 256 px); the 2D baseline SiT-XL/2 over a 32×32×4 (256 px) or 64×64×4 (512 px)
  SD-VAE latent, written as our SiT over 256 (1024) tokens of 2·2·4 = 16 channels: a patch-2
  linear embedding of a 4-channel latent IS a linear map of 16-dim tokens (same FLOPs, same
  kernels), so 1D and 2D run the very same implementation.
- Tokenizers: SoftVQ B/BL/L-64 (ViT-B/L DINOv2-style encoder/decoder; the B and BL configs are not
  published, we take ViT-B where the name says B) and TiTok L-32 / B-64 / S-128 (two-stage VQ with
  the MaskGIT-VQGAN pixel decoder), encode and decode.
- MaskGIT generators of TiTok L-32 / B-64 / S-128 (release sampling settings).

Configurations:
- naive: float32 weights, eager, our sampler (CFG halves in one batch), PyTorch defaults
  (float32 matmuls without TF32; cuDNN convolutions may use TF32, PyTorch's default);
- official: the official recipe with our modules, as generate_sit.py runs it: the network
  ``torch.compile``d (default mode; tokenizer encode/decode too), float32 weights under float16
  autocast, the CFG batch duplicated twice as the official generate script does (4B rows on
  guided steps, 2B on the others), float64 sampler state;
- official-eager: the same without ``torch.compile`` (what the H100 history's "official" was;
  its "x official" ratios are against this one);
- fast: ``softvq_demo.sampling.fast`` (bf16 weights, compiled blocks, CUDA graphs, adaLN table).

Timing: SiT step costs are measured separately for guided (2B rows) and unguided (B rows) steps
by timing k-step runs; a full run's time is n_unguided·t_u + n_guided·t_g ("extrapolated
from k steps" in the table) unless the run was timed end to end ("measured"). TFLOP/s counts the
matrix FLOPs actually executed (torch.utils.flop_counter on one forward), so the official
recipe's duplicated work counts as executed work; images/s counts useful output only.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import traceback
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from ..released import TITOK
from ..sampling import fast as fastmod
from ..sampling.fast import runtime as fast_runtime, sit as fast_sit
from ..sampling.flow import sample_flow
from .legacy import previous_blocks

from .cases import (CONFIGS, SETTINGS, SETTINGS_TINY, SIT_NETS, SIT_TINY, build_maskgit, build_sit,
                    build_softvq, build_titok, count_flops, free, rel_err, schedule, sync)
from .report import markdown_report



# --------------------------------------------------------------------------- the bench
class Bench:
    def __init__(self, args):
        self.args = args
        self.device = torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        self.tiny = args.tiny
        self.quick = args.quick
        self.start = time.perf_counter()
        self.deadline = self.start + args.budget
        self.out = Path(args.out) if args.out else None
        if self.out:
            self.out.mkdir(parents=True, exist_ok=True)
        self.env: dict = {}
        self.peak_tflops = float("nan")
        self.bandwidth = float("nan")
        self.sit: list[dict] = []
        self.toks: list[dict] = []
        self.maskgit: list[dict] = []
        self.checks: list[dict] = []
        self.targets: list[dict] = []
        self.ab: list[dict] = []
        self.notes: list[str] = []
        self.compile_s: dict = {}
        self.settings = SETTINGS_TINY if self.tiny else SETTINGS
        self.nets = SIT_TINY if self.tiny else SIT_NETS
        self.batches = (1, 4, 8) if self.tiny else (1, 16, 256)

    # ---- time keeping
    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def log(self, msg: str) -> None:
        print(f"[{time.perf_counter() - self.start:7.1f}s] {msg}", flush=True)

    def timeit(self, fn: Callable[[], Any], reps: int = 3, warmup: int = 1) -> float:
        for _ in range(warmup):
            fn()
        sync(self.device)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            sync(self.device)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    def save(self) -> None:
        if not self.out:
            return
        data = dict(env=self.env, peak_tflops=self.peak_tflops, bandwidth_gbs=self.bandwidth,
                    sit=self.sit, tokenizers=self.toks, maskgit=self.maskgit, checks=self.checks,
                    targets=self.targets, notes=self.notes, compile_s=self.compile_s, ab=self.ab,
                    attention=[dict(key=str(k), **v) for k, v in fastmod.ATTENTION_PICKS.items()],
                    args=vars(self.args))
        (self.out / "bench.json").write_text(json.dumps(data, indent=1, default=str))

    def guarded(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as err:  # keep going: one broken case must not cost the whole run
            msg = f"{what}: {type(err).__name__}: {err}"
            self.notes.append("ERROR " + msg[:500])
            self.log("ERROR " + msg)
            traceback.print_exc()
            free()
            return None

    # ---- environment and ceilings
    def measure_env(self) -> None:
        self.env = dict(torch=torch.__version__, python=platform.python_version(),
                        device=str(self.device), tiny=self.tiny, quick=self.quick)
        if self.cuda:
            props = torch.cuda.get_device_properties(self.device)
            self.env.update(gpu=props.name, sms=props.multi_processor_count,
                            memory_gib=round(props.total_memory / 2 ** 30, 1))
            try:
                import triton
                self.env["triton"] = triton.__version__
            except ImportError:
                self.env["triton"] = None
        self.log(f"environment: {self.env}")

    def measure_peak(self) -> None:
        """bf16 matmul peak (8192³, random data, median of 10) and device copy bandwidth."""
        if self.cuda:
            n, dtype = 8192, torch.bfloat16
        else:
            n, dtype = 512, torch.float32
        a = torch.randn(n, n, device=self.device, dtype=dtype)
        b = torch.randn(n, n, device=self.device, dtype=dtype)
        c = torch.empty(n, n, device=self.device, dtype=dtype)
        t = self.timeit(lambda: torch.mm(a, b, out=c), reps=10, warmup=3)
        self.peak_tflops = 2 * n ** 3 / t / 1e12
        del a, b, c
        size = (1 << 30) if self.cuda else (1 << 24)
        src = torch.empty(size, dtype=torch.uint8, device=self.device).random_(0, 255)
        dst = torch.empty_like(src)
        t = self.timeit(lambda: dst.copy_(src), reps=10, warmup=2)
        self.bandwidth = 2 * size / t / 1e9
        del src, dst
        free()
        self.log(f"measured ceilings: {'bf16' if self.cuda else 'fp32'} matmul {self.peak_tflops:.0f} "
                 f"TFLOP/s ({n}³), copy {self.bandwidth:.0f} GB/s (read + write)")

    # ---- SiT samplers in the three configurations
    @staticmethod
    def run_naive(gen, noise, y, opts):
        return sample_flow(gen, noise, y, null_class=gen.null_class, **opts)

    def official_model(self, gen):
        """generate_sit.py's ``torch.compile(model)`` (CUDA only: the CPU harness stays eager)."""
        if not self.cuda:
            return gen
        cache = self.__dict__.setdefault("_official_compiled", {})
        if id(gen) not in cache:
            cache.clear()  # one generator at a time: do not keep freed models' graphs alive
            fast_runtime._raise_recompile_limit()
            cache[id(gen)] = torch.compile(gen)
        return cache[id(gen)]

    def run_official(self, gen, noise, y, opts, compiled: bool = True):
        """generate_sit.py: z = [z; z], y = [y; null], then a sampler that duplicates again."""
        null_class = gen.null_class
        gen = self.official_model(gen) if compiled else gen
        b = noise.shape[0]
        z = torch.cat([noise, noise])
        y2 = torch.cat([y, torch.full_like(y, null_class)])
        ctx = torch.autocast("cuda", dtype=torch.float16) if self.cuda else nullcontext()
        with ctx:
            x = sample_flow(gen, z, y2, null_class=null_class, **opts)
        return x[:b]

    @staticmethod
    def run_fast(gen, noise, y, opts, **kw):
        return fastmod.sample_sit_fast(gen, noise, y, null_class=gen.null_class, **opts, **kw)

    def sampler(self, config: str) -> Callable:
        return {"naive": self.run_naive, "official": self.run_official, "fast": self.run_fast,
                "official-eager": lambda *a, **k: self.run_official(*a, compiled=False, **k)}[config]

    def est_step(self, config: str, flops_row: int, rows: int) -> float:
        """Rough seconds per network evaluation, to size k and skip what the budget cannot hold."""
        if not self.cuda:
            return flops_row * rows / 5e10 + 1e-3
        rate = {"naive": 45e12, "official-eager": 250e12, "official": 300e12, "fast": 430e12}[config]
        floor = {"naive": 8e-3, "official-eager": 12e-3, "official": 4e-3, "fast": 1.5e-3}[config]
        mult = 2 if config.startswith("official") else 1
        return max(floor, flops_row * rows * mult / rate)

    def step_times(self, config: str, gen, flops_row: int, batch: int) -> Optional[dict]:
        """Seconds per unguided (B rows) and guided (2B rows) step, from timed k-step Euler runs."""
        n, d = gen.num_tokens, gen.token_dim
        fn = self.sampler(config)
        out = {}
        for guided in (False, True):
            rows = batch * (2 if guided else 1)
            est = self.est_step(config, flops_row, rows)
            k = int(min(20, max(2 if est < 1 else 1, round(0.25 / est))))
            if self.tiny:
                k = 3
            need = est * (k * 2 + 1) + 2
            if need > self.left():
                self.log(f"  skip {config} B={batch} N={n} guided={guided}: needs ~{need:.0f}s")
                return None
            opts = dict(steps=k, method="euler", cfg_scale=1.75 if guided else 1.0,
                        guidance_low=0.0, guidance_high=1.0)
            noise = torch.randn(batch, n, d, device=self.device)
            y = torch.randint(0, gen.num_classes, (batch,), device=self.device)
            reps = 1 if est * k > 3 else 3
            warm = 0 if (config not in ("fast", "official") and est > 2.0) else 1  # compiles warm up
            kw = {}
            if config == "fast":  # the adaLN-table choice of the full runs this extrapolates to
                steps = max(o["steps"] for o in self.settings.values())
                kw["precompute"] = fast_sit.use_table(fastmod.sit_fast(gen), batch, steps)
            t0 = time.perf_counter()
            t = self.timeit(lambda: fn(gen, noise, y, opts, **kw), reps=reps, warmup=warm)
            if config == "fast" and warm:
                self.compile_s.setdefault(f"sit N={n} B={batch}", round(time.perf_counter() - t0 - t * reps, 1))
            out["t_g" if guided else "t_u"] = t / k
            out["k"] = k
        return out

    def sit_row(self, net, config, batch, setting, times, flops_row, measured_s=None, note="",
                record=True):
        name, px, n, d, kind = net
        opts = self.settings[setting]
        n_u, n_g = schedule(opts["steps"], opts["method"], opts["cfg_scale"], opts["guidance_low"],
                            opts["guidance_high"])
        if measured_s is not None:
            total, how = measured_s, "measured"
        else:
            total, how = n_u * times["t_u"] + n_g * times["t_g"], f"extrapolated from {times['k']}-step runs"
        mult = 2 if config.startswith("official") else 1
        flops = flops_row * batch * (n_u + 2 * n_g) * mult
        row = dict(net=name, px=px, tokens=n, dim=d, kind=kind, batch=batch, setting=setting,
                   config=config, total_s=total, images_per_s=batch / total,
                   ms_per_step=1000 * total / opts["steps"], tflops=flops / total / 1e12,
                   frac_peak=flops / total / 1e12 / self.peak_tflops, how=how, note=note,
                   t_u_ms=1000 * times["t_u"] if times else None,
                   t_g_ms=1000 * times["t_g"] if times else None)
        if record:  # (A/B variants are logged, not put in the table)
            self.sit = [r for r in self.sit if not (r["net"] == name and r["batch"] == batch and
                                                    r["setting"] == setting and r["config"] == config)]
            self.sit.append(row)
        self.log(f"  {name:18s} B={batch:<4d} {setting:9s} {config:8s} {row['images_per_s']:9.2f} img/s "
                 f"{row['ms_per_step']:8.2f} ms/step {row['tflops']:6.1f} TFLOP/s "
                 f"({100 * row['frac_peak']:.0f}% peak) [{how}]")
        self.save()
        return row

    def sit_flops_row(self, gen) -> int:
        x = torch.randn(1, gen.num_tokens, gen.token_dim, device=self.device)
        t = torch.rand(1, device=self.device)
        y = torch.zeros(1, dtype=torch.long, device=self.device)
        with torch.no_grad():
            return count_flops(lambda: gen(x, t, y))

    # ---- core: the targets
    def core(self) -> None:
        self.log("== core: targets")
        tiny = self.tiny
        b_target = 8 if tiny else 64
        setting = "25 sde" if tiny else "250 sde"
        opts = self.settings[setting]
        results = {}
        for net in (self.nets[1], self.nets[0]):  # 64 tokens first: the headline target
            name, px, n, d, kind = net
            gen = build_sit(n, d, self.device, tiny)
            flops_row = self.sit_flops_row(gen)
            noise = torch.randn(b_target, n, d, device=self.device)
            y = torch.randint(0, gen.num_classes, (b_target,), device=self.device)
            for config in ("fast", "official", "official-eager"):
                if config.startswith("official") and self.left() < (60 if n == 64 else 30) and not tiny:
                    self.log(f"  skip official full run at {n} tokens (budget)")
                    continue
                fn = self.sampler(config)
                t0 = time.perf_counter()
                # warm-up: the fast path captures its graphs on a full run (cheap); the official
                # recipe only needs its kernels loaded (2 steps)
                warm_opts = opts if config == "fast" else dict(opts, steps=2)
                reps = 2 if config == "fast" else 1  # the headline: median (mean) of two runs
                t = self.guarded(f"core {config} {n}", lambda: (fn(gen, noise, y, warm_opts), self.timeit(
                    lambda: fn(gen, noise, y, opts), reps=reps, warmup=0))[1])
                if t is None:
                    continue
                self.log(f"  core {config} N={n}: {t:.2f}s for {b_target} images "
                         f"(wall incl. warm-up {time.perf_counter() - t0:.1f}s)")
                row = self.sit_row(net, config, b_target, setting, None, flops_row, measured_s=t,
                                   note="core target run")
                results[(n, config)] = row["images_per_s"]
            if net is self.nets[1]:
                if results.get((n, "fast")):
                    self.guarded("A/B", lambda: self.ab_previous(gen, noise, y, opts, flops_row, net,
                                                                 setting, results[(n, "fast")]))
                    self.guarded("profile", lambda: self.profile_step(gen, b_target))
                self.guarded("correctness", lambda: self.check_sit(gen))
                self.guarded("latency", lambda: self.latency(gen, flops_row))
                self.guarded("large batch", lambda: self.large_batch(gen, flops_row, net))
            fastmod.release(gen)
            del gen
            free()
        n64, n32 = self.nets[1][2], self.nets[0][2]
        fast64, off64 = results.get((n64, "fast")), results.get((n64, "official"))
        if fast64:
            self.target("SiT 64 tok, B=64, 250-step SDE, cfg 1.75 on t<=0.7: images/s",
                        fast64, ">= 21 (issue 19, H200)", fast64 >= 21)
            if off64:
                self.target("  speedup over the official recipe (compiled, same run)", fast64 / off64,
                            ">= 2.3x vs compiled official", None)
            eager64 = results.get((n64, "official-eager"))
            if eager64:
                self.target("  speedup over the official recipe run eagerly (same run)", fast64 / eager64,
                            "(the H100 history's ratio)", None)
        fast32 = results.get((n32, "fast"))
        if fast32:
            self.target("SiT 32 tok, same settings: images/s", fast32,
                        ">= 40 (issue 19, H200)", fast32 >= 40)
        self.guarded("decode target", self.decode_target)

    def target(self, what, value, goal, ok) -> None:
        if self.tiny:
            ok = None  # tiny models: the goals are for the released architectures on an H100
        self.targets.append(dict(what=what, value=value, goal=goal, ok=ok))
        self.log(f"  TARGET {what}: {value:.3f}  goal {goal}  -> "
                 f"{'PASS' if ok else ('n/a' if ok is None else 'MISS')}")
        self.save()

    def ab_previous(self, gen, noise, y, opts, flops_row, net, setting, fast_ips) -> None:
        """Same run, same inputs: the headline case on the previous revision's fast path
        (LayerNorm at the start of each block, SDPA's own kernel choice, adaLN per step) and
        with only the adaLN table switched off, to show what each change is worth."""
        b = noise.shape[0]
        variants = [("fast, adaLN per step (no table)", dict(precompute=False), False),
                    ("previous revision (2026-11-22 first run's code)", dict(precompute=False), True),
                    ("current fast path again, after the A/B (run-to-run spread)", {}, False)]
        for label, kw, legacy in variants:
            if self.left() < (90 if legacy else 40) and not self.tiny:
                self.notes.append(f"A/B '{label}': skipped (budget)")
                continue
            fastmod.sit_fast(gen).runners.clear()
            layout = previous_blocks(fastmod.sit_fast(gen)) if legacy else nullcontext()
            try:
                with layout:
                    t0 = time.perf_counter()
                    self.run_fast(gen, noise, y, opts, **kw)  # compile (legacy blocks) and capture
                    t = self.timeit(lambda: self.run_fast(gen, noise, y, opts, **kw), reps=2, warmup=0)
            finally:
                fastmod.sit_fast(gen).runners.clear()
            row = self.sit_row(net, "fast", b, setting, None, flops_row, measured_s=t,
                               note=f"A/B: {label}", record=False)
            self.ab.append(dict(variant=label, images_per_s=row["images_per_s"],
                                ms_per_step=row["ms_per_step"], wall_incl_compile_s=time.perf_counter() - t0))
            self.notes.append(f"A/B B={b} {net[2]} tok {setting}: {label}: {row['images_per_s']:.2f} images/s; "
                              f"current fast path {fast_ips:.2f} ({fast_ips / row['images_per_s']:.3f}x)")
            self.log(f"  {self.notes[-1]}")
        self.save()

    def profile_step(self, gen, b: int) -> None:
        """Kernel-time breakdown of guided and unguided steps at the headline batch (compiled,
        launched without graphs so the profiler sees each kernel), to $OUT/profile_b{b}.txt."""
        if not self.cuda or self.left() < 60:
            return
        from torch.profiler import ProfilerActivity, profile

        n, d = gen.num_tokens, gen.token_dim
        noise = torch.randn(b, n, d, device=self.device)
        y = torch.randint(0, gen.num_classes, (b,), device=self.device)
        lines = []
        for guided in (True, False):
            opts = dict(steps=4, method="euler", cfg_scale=1.75 if guided else 1.0, guidance_low=0.0,
                        guidance_high=1.0)
            self.run_fast(gen, noise, y, opts, graphs=False)
            sync(self.device)
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                self.run_fast(gen, noise, y, opts, graphs=False)
                sync(self.device)
            events = [e for e in prof.key_averages() if e.device_time_total > 0]
            total = sum(e.self_device_time_total for e in events)
            lines.append(f"== B={b} {n} tokens, {'guided (2B rows)' if guided else 'unguided'} step: "
                         f"{total / 4 / 1000:.2f} ms of kernel time per step (4-step run, no graphs)")
            for e in sorted(events, key=lambda e: -e.self_device_time_total)[:25]:
                lines.append(f"{100 * e.self_device_time_total / total:6.1f}%  "
                             f"{e.self_device_time_total / 4 / 1000:8.3f} ms/step  {e.count // 4:5d}/step  "
                             f"{e.key[:150]}")
            lines.append("")
        fastmod.sit_fast(gen).runners.clear()
        text = "\n".join(lines)
        print(text, flush=True)
        if self.out:
            (self.out / f"profile_b{b}.txt").write_text(text + "\n")

    def check_sit(self, gen) -> None:
        """Fast path vs the float32 reference (float64 sampler state), same seed, then decoded."""
        b = 4
        n, d = gen.num_tokens, gen.token_dim
        noise = torch.randn(b, n, d, generator=torch.Generator().manual_seed(7)).to(self.device)
        y = torch.tensor([1, 5, 7, 9][:b], device=self.device) % gen.num_classes
        tok = build_softvq("L", self.device, self.tiny) if (n, d) == (64, 32) or self.tiny else None
        if tok is not None and (tok.num_tokens, tok.token_dim) != (n, d):
            tok = None
        ftok = fastmod.fast_tokenizer(tok) if tok is not None else None
        for setting, opts in self.settings.items():
            ref = sample_flow(gen, noise, y, null_class=gen.null_class,
                              rng=torch.Generator().manual_seed(11), **opts).float()
            out = self.run_fast(gen, noise, y, opts, rng=torch.Generator().manual_seed(11))
            row = dict(what=f"SiT {n}x{d} {setting} B={b}: fast vs fp32 reference",
                       tokens_rel_err=rel_err(out, ref))
            if tok is not None:
                with torch.no_grad():
                    img_ref = tok.decode(ref)
                    img_fast = ftok.decode(out).float()
                row["images_rel_err"] = rel_err(img_fast, img_ref)
                row["ok"] = row["images_rel_err"] < 1e-2
            else:
                row["ok"] = row["tokens_rel_err"] < 1e-2
            self.checks.append(row)
            self.log(f"  CHECK {row}")
        del tok, ftok
        free()
        self.save()

    def latency(self, gen, flops_row) -> None:
        """Batch-1 step latency: the guided step graph replayed back to back, and a full run."""
        fast = fastmod.sit_fast(gen)
        b = 1
        n, d = gen.num_tokens, gen.token_dim
        setting = "50 euler" if not self.tiny else "10 euler"
        opts = self.settings[setting]
        noise = torch.randn(b, n, d, device=self.device)
        y = torch.zeros(b, dtype=torch.long, device=self.device)
        t = self.timeit(lambda: self.run_fast(gen, noise, y, opts), reps=5, warmup=1)
        self.sit_row(self.nets[1], "fast", 1, setting, None, flops_row, measured_s=t, note="latency run")
        replay = None
        runner = next((r for k, r in fast.runners.items() if k[0] == b), None)
        if runner is not None and self.cuda and True in runner.graphs.graphs:
            g = runner.graphs.graphs[True]
            reps = min(runner.steps_cap, 40)
            times = []
            for _ in range(5):
                runner.step.zero_()
                sync(self.device)
                t0 = time.perf_counter()
                for _ in range(reps):
                    g.replay()
                sync(self.device)
                times.append((time.perf_counter() - t0) / reps)
            replay = statistics.median(times)
            runner.step.zero_()
        per_step = replay if replay is not None else t / opts["steps"]
        floor = fast.weight_bytes() / (self.bandwidth * 1e9)
        table_floor = (fast.weight_bytes() - fast.ada_w.numel() * fast.ada_w.element_size()) / (self.bandwidth * 1e9)
        self.target("SiT-XL 64 tok batch-1 guided step latency, ms (graph replays)", 1000 * per_step,
                    "<= 2 ms", per_step <= 2e-3 if not self.tiny else None)
        self.notes.append(f"batch-1 memory floor: all weights {1000 * floor:.2f} ms, without the adaLN "
                          f"weights (precomputed table) {1000 * table_floor:.2f} ms at the measured "
                          f"{self.bandwidth:.0f} GB/s; full 50-step run {1000 * t / opts['steps']:.2f} ms/step")
        self.log(f"  {self.notes[-1]}")
        # no-compile variant, to show what torch.compile buys at batch 1
        if self.cuda and fast.compiled and self.left() > 60:
            t_nc = self.timeit(lambda: self.run_fast(gen, noise, y, opts, compile=False), reps=3, warmup=1)
            self.notes.append(f"batch-1 50-step run without torch.compile (bf16 + graphs + table): "
                              f"{1000 * t_nc / opts['steps']:.2f} ms/step")
            self.log(f"  {self.notes[-1]}")
            fast_sit._SIT_CACHE.get(gen, ("sit", True, None), lambda: fast)  # keep the compiled copy
        self.save()

    def large_batch(self, gen, flops_row, net) -> None:
        b = self.batches[-1]
        times = self.step_times("fast", gen, flops_row, b)
        if times is None:
            return
        for setting in self.settings:
            self.sit_row(net, "fast", b, setting, times, flops_row)
        rows = 2 * b
        frac_g = flops_row * rows / times["t_g"] / 1e12 / self.peak_tflops
        frac_u = flops_row * b / times["t_u"] / 1e12 / self.peak_tflops
        self.target(f"SiT-XL 64 tok B={b} guided step: fraction of measured bf16 peak", frac_g,
                    ">= 0.55", frac_g >= 0.55 if not self.tiny else None)
        self.notes.append(f"B={b} 64 tok: guided step {1000 * times['t_g']:.1f} ms ({100 * frac_g:.0f}% "
                          f"peak), unguided {1000 * times['t_u']:.1f} ms ({100 * frac_u:.0f}% peak)")
        if self.cuda and fast_sit.GELU_EPILOGUE and self.args.ablations and self.left() > 120:
            def ab():
                fastmod.sit_fast(gen).runners.clear()  # captured graphs hold the old kernels
                fast_sit.GELU_EPILOGUE = False
                try:
                    t_off = self.step_times("fast", gen, flops_row, b)
                finally:
                    fast_sit.GELU_EPILOGUE = True
                    fastmod.sit_fast(gen).runners.clear()
                self.notes.append(f"B={b} 64 tok, fc1 GELU as a separate fused kernel instead of the "
                                  f"cuBLASLt epilogue: guided {1000 * t_off['t_g']:.1f} ms, unguided "
                                  f"{1000 * t_off['t_u']:.1f} ms (default: {1000 * times['t_g']:.1f} / "
                                  f"{1000 * times['t_u']:.1f} ms)")
                self.log(f"  {self.notes[-1]}")
            self.guarded("gelu epilogue A/B", ab)
        if self.cuda and self.left() > 90:
            t_nc = self.guarded("no-compile large batch", lambda: self.timeit(
                lambda: self.run_fast(gen, torch.randn(b, gen.num_tokens, gen.token_dim, device=self.device),
                                      torch.zeros(b, dtype=torch.long, device=self.device),
                                      dict(steps=4, method="euler", cfg_scale=1.75, guidance_low=0.0,
                                           guidance_high=1.0), compile=False), reps=2, warmup=1))
            if t_nc:
                frac_nc = flops_row * rows / (t_nc / 4) / 1e12 / self.peak_tflops
                self.notes.append(f"B={b} 64 tok guided step without torch.compile: {1000 * t_nc / 4:.1f} ms "
                                  f"({100 * frac_nc:.0f}% peak)")
                self.log(f"  {self.notes[-1]}")

    def decode_target(self) -> None:
        b = self.batches[-1]
        tok = build_softvq("L", self.device, self.tiny)
        ftok = fastmod.fast_tokenizer(tok)
        lat = torch.randn(b, tok.num_tokens, tok.token_dim, device=self.device)
        t = self.timeit(lambda: ftok.decode(lat), reps=3, warmup=1)
        self.target(f"SoftVQ-L decode 256 px, B={b}: images/s", b / t, ">= 2000",
                    b / t >= 2000 if not self.tiny else None)
        del tok, ftok
        free()

    # ---- the full SiT matrix
    def sit_matrix(self) -> None:
        self.log("== SiT generation matrix")
        for net in self.nets:
            name, px, n, d, kind = net
            if self.left() < 20:
                self.notes.append(f"SiT {name}: skipped (budget)")
                continue
            gen = build_sit(n, d, self.device, self.tiny)
            flops_row = self.sit_flops_row(gen)
            for config in ("fast", "official", "naive"):
                for batch in self.batches:
                    if (self.quick and config == "naive" and batch == self.batches[-1] and n >= 256
                            and not self.tiny):
                        self.notes.append(f"naive {name} B={batch}: skipped (--quick)")
                        continue
                    times = self.guarded(f"{config} {name} B={batch}",
                                         lambda: self.step_times(config, gen, flops_row, batch))
                    if not times:
                        continue
                    for setting, opts in self.settings.items():
                        measured = None
                        n_u, n_g = schedule(opts["steps"], opts["method"], opts["cfg_scale"],
                                            opts["guidance_low"], opts["guidance_high"])
                        predicted = n_u * times["t_u"] + n_g * times["t_g"]
                        if config == "fast" and predicted < (3.0 if self.cuda else 0.5) and self.left() > 60:
                            noise = torch.randn(batch, n, d, device=self.device)
                            y = torch.randint(0, gen.num_classes, (batch,), device=self.device)
                            measured = self.guarded("full run", lambda: self.timeit(
                                lambda: self.run_fast(gen, noise, y, opts), reps=1, warmup=1))
                        self.sit_row(net, config, batch, setting, times, flops_row, measured_s=measured)
                    if config == "fast":
                        fastmod.sit_fast(gen).runners.clear()  # captured graphs hold activations
                    free()
            fastmod.release(gen)
            del gen
            free()

    # ---- tokenizers
    def tokenizers(self) -> None:
        self.log("== tokenizers")
        names = [("SoftVQ-L-64", "softvq", "L"), ("TiTok-L-32", "titok", "TiTok-L-32"),
                 ("SoftVQ-BL-64", "softvq", "BL"), ("TiTok-B-64", "titok", "TiTok-B-64"),
                 ("SoftVQ-B-64", "softvq", "B"), ("TiTok-S-128", "titok", "TiTok-S-128")]
        only = set(filter(None, self.args.tokenizers.split(",")))
        for name, family, key in names:
            if only and name not in only:
                continue
            if self.left() < 30:
                self.notes.append(f"{name}: skipped (budget)")
                continue
            self.guarded(name, lambda: self.tokenizer_case(name, family, key))
            free()

    def tokenizer_case(self, name: str, family: str, key: str) -> None:
        tok = (build_softvq(key, self.device, self.tiny) if family == "softvq"
               else build_titok(key, self.device, self.tiny))
        t0 = time.perf_counter()
        ftok = fastmod.fast_tokenizer(tok)
        size, n = tok.image_size, tok.num_tokens

        def inputs(op, b):
            if op == "encode":
                return torch.rand(b, 3, size, size, device=self.device) * 2 - 1
            if family == "titok" and tok.codebook_size:
                return torch.randint(0, tok.codebook_size, (b, n), device=self.device)
            return torch.randn(b, n, tok.token_dim, device=self.device)

        # correctness: fast vs fp32 on the same input
        x = inputs("encode", 2)
        with torch.no_grad():
            e_ref, e_fast = tok.encode(x), ftok.encode(x)
            lat = e_ref.latents
            d_ref, d_fast = tok.decode(lat), ftok.decode(lat).float()
        check = dict(what=f"{name}: fast vs fp32", latents_rel_err=rel_err(e_fast.latents, e_ref.latents),
                     images_rel_err=rel_err(d_fast, d_ref))
        if e_ref.indices is not None:
            check["indices_agree"] = float((e_ref.indices == e_fast.indices).float().mean())
        check["ok"] = check["images_rel_err"] < 1e-2
        self.checks.append(check)
        self.log(f"  CHECK {check}")
        for op in ("encode", "decode"):
            with torch.no_grad():
                flops = count_flops(lambda: getattr(tok, op)(inputs(op, 1)))
            for b in (1, self.batches[-1]):
                xin = inputs(op, b)
                for config in CONFIGS:
                    if self.left() < 15:
                        self.notes.append(f"{name} {op} B={b} {config}: skipped (budget)")
                        continue
                    if config == "fast":
                        fn = lambda: getattr(ftok, op)(xin)  # noqa: E731
                    else:
                        ctx = (lambda: torch.autocast("cuda", dtype=torch.float16)) if (
                            config.startswith("official") and self.cuda) else nullcontext
                        model_fn = getattr(tok, op)
                        if config == "official" and self.cuda:
                            model_fn = torch.compile(model_fn)

                        def fn(model_fn=model_fn, ctx=ctx):
                            with torch.no_grad(), ctx():
                                return model_fn(xin)
                    reps, warm = (20, 3) if b == 1 else (3, 1)
                    if config == "naive" and b > 1:
                        reps = 2
                    t1 = time.perf_counter()
                    t = self.timeit(fn, reps=reps, warmup=warm)
                    if config == "fast" and b == 1 and op == "encode":
                        self.compile_s[f"{name} first calls"] = round(time.perf_counter() - t0, 1)
                    row = dict(model=name, op=op, batch=b, config=config, seconds=t,
                               images_per_s=b / t, ms=1000 * t, tflops=flops * b / t / 1e12,
                               frac_peak=flops * b / t / 1e12 / self.peak_tflops,
                               gflop_per_image=flops / 1e9)
                    self.toks.append(row)
                    self.log(f"  {name:12s} {op:6s} B={b:<4d} {config:8s} {b / t:10.1f} img/s "
                             f"{1000 * t:9.2f} ms {row['tflops']:6.1f} TFLOP/s ({100 * row['frac_peak']:.0f}%) "
                             f"[{time.perf_counter() - t1:.1f}s]")
                    self.save()
                del xin
        del tok, ftok
        free()

    # ---- MaskGIT
    def maskgit_bench(self) -> None:
        self.log("== MaskGIT generation (TiTok generators)")
        from ..sampling.maskgit import sample_maskgit

        only = set(filter(None, self.args.maskgits.split(",")))
        for name in TITOK:
            if only and name not in only:
                continue
            if self.left() < 40:
                self.notes.append(f"MaskGIT {name}: skipped (budget)")
                continue
            gen = build_maskgit(name, self.device, self.tiny)

            def case(gen=gen, name=name):
                ref = sample_maskgit(gen, [1, 2, 3, 4], seed=5)
                out = fastmod.sample_maskgit_fast(gen, [1, 2, 3, 4], seed=5)
                agree = float((ref == out).float().mean())
                self.checks.append(dict(what=f"MaskGIT {name}: fast vs reference sampler (same seed, "
                                             "both bf16)", ids_agree=agree, ok=None))
                self.log(f"  CHECK {self.checks[-1]}")
                for b in (1, self.batches[-1]):
                    labels = torch.arange(b) % gen.num_classes
                    for config, fn in (("reference", lambda: sample_maskgit(gen, labels)),
                                       ("fast", lambda: fastmod.sample_maskgit_fast(gen, labels))):
                        if self.left() < 15:
                            continue
                        reps, warm = (5, 2) if b == 1 else ((1, 1) if gen.num_steps > 16 else (2, 1))
                        t = self.timeit(fn, reps=reps, warmup=warm)
                        row = dict(model=name, batch=b, config=config, steps=gen.num_steps,
                                   seconds=t, images_per_s=b / t, ms_per_step=1000 * t / gen.num_steps)
                        self.maskgit.append(row)
                        self.log(f"  {name:12s} B={b:<4d} {config:9s} {b / t:10.1f} img/s "
                                 f"{1000 * t / gen.num_steps:8.2f} ms/step")
                        self.save()

            self.guarded(f"maskgit {name}", case)
            del gen
            free()

    def report(self) -> str:
        return markdown_report(self)


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(prog="python -m softvq_demo.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--mode", choices=("core", "full", "all"), default="all")
    p.add_argument("--quick", action="store_true", help="skip the slowest naive cases (2D, batch 256)")
    p.add_argument("--tiny", action="store_true", help="tiny models (checks the harness on a CPU)")
    p.add_argument("--budget", type=float, default=520.0, help="seconds; cases that no longer fit are skipped")
    p.add_argument("--out", default=os.environ.get("OUT"), help="folder for bench.json and bench.md")
    p.add_argument("--skip", default="", help="comma list of sections to skip: sit,tok,maskgit")
    p.add_argument("--tokenizers", default="", help="comma list: only these tokenizers (e.g. TiTok-L-32)")
    p.add_argument("--maskgits", default="", help="comma list: only these MaskGIT generators")
    p.add_argument("--ablations", action="store_true",
                   help="also time the fc1 GELU epilogue A/B (one more compile; measured 2026-11-22)")
    args = p.parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(max(1, os.cpu_count() or 1))
    bench = Bench(args)
    bench.log(f"command: python -m softvq_demo.bench {' '.join(argv if argv is not None else sys.argv[1:])}")
    bench.measure_env()
    bench.measure_peak()
    skip = set(filter(None, args.skip.split(",")))
    if args.mode in ("core", "all"):
        bench.guarded("core", bench.core)
    if args.mode in ("full", "all"):
        if "sit" not in skip:
            bench.guarded("sit matrix", bench.sit_matrix)
        if "tok" not in skip:
            bench.guarded("tokenizers", bench.tokenizers)
        if "maskgit" not in skip:
            bench.guarded("maskgit", bench.maskgit_bench)
    try:
        from torch._dynamo.utils import counters
        bench.notes.append(f"dynamo: {dict(counters['stats'])}")
    except Exception:  # pragma: no cover
        pass
    if bench.cuda:
        bench.notes.append(f"peak GPU memory allocated: {torch.cuda.max_memory_allocated() / 2 ** 30:.1f} GiB")
    bench.save()
    print()
    print(bench.report())
