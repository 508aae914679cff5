"""The launch variants of the two memory-bound Triton kernels (``kernels.NORM_VARIANTS``,
``kernels.ATTN_VARIANTS``) side by side at the SiT-XL/1 shapes of issue 19, on CUDA:

- residual_norm at 8192 / 4096 / 2048 token rows × 1152 (R=128 sequences of 64 tokens, 128 of
  32, 64 of 32: B=64 guided 64-token, guided / unguided 32-token steps), the stream h in bf16
  and in float32, gate and shift/scale strided views of an R×6H modulation row as in sit.py;
- short_attention on the qkv layout (R, N, 3456), 16 heads of 72, for the same (R, N).

Each variant is checked against its PyTorch reference first (relative error: 16-bit outputs
to 1e-2, the stream as ``residual_norm_ok`` checks it: 1e-6 in float32, 1e-3 in bf16), then
timed by ``kernels.graph_ms`` over rotating input copies (> 256 MB of inputs per case, so each
call reads from HBM, not L2; every call's outputs kept alive so writes land in fresh memory).
GB/s counts each input read once and each output written once; "copy" is a device copy of the
same number of bytes (half read, half written), the ceiling to compare with; "speed-up" is the
first kernel's ("base", what ran before the launch variants) time over the variant's. A variant that fails to compile or run is
logged and skipped.

    python -m softvq_demo.bench.memkernels --out $OUT [--kernels norm,attn] [--only split,early] [--reps 7]

Writes the table to stdout and $OUT/memkernels.txt (raw numbers: $OUT/memkernels.json; the
fastest variant per sequence length: $OUT/best_launch.json, for ``bench.headline --launches``).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
import traceback
from pathlib import Path

import torch

from ..sampling.fast import kernels

HIDDEN, HEADS = 1152, 16
CASES = ((128, 64), (128, 32), (64, 32))       # (sequences R, tokens N): 8192 / 4096 / 2048 rows
MIN_BYTES = 256e6                               # inputs per case, well past the 50-60 MB of L2
DEVICE = "cuda"
T0 = time.perf_counter()
LINES: list = []
ALL_VARIANTS = {"NORM": dict(kernels.NORM_VARIANTS), "ATTN": dict(kernels.ATTN_VARIANTS)}  # before --only


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f}s] {msg}", flush=True)


def emit(line: str) -> None:
    LINES.append(line)
    print(line, flush=True)


def nbytes(*ts: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in ts)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def copies_for(per_copy: int) -> int:
    return max(2, min(64, math.ceil(MIN_BYTES / per_copy)))


def timed(make_call, n_copies: int, reps: int) -> float:
    """us per call: ``make_call(i)`` runs the kernel on copy i % n_copies; the graph holds at least
    one call per copy, and every output stays alive until the graph is gone."""
    keep: list = []
    state = {"i": 0}

    def call():
        keep.append(make_call(state["i"] % n_copies))
        state["i"] += 1

    try:
        return 1000 * kernels.graph_ms(call, inner=max(24, n_copies), reps=reps)
    finally:
        keep.clear()


def copy_us(total_bytes: int, reps: int) -> float:
    """A device-to-device copy moving total_bytes (half read, half written), rotating buffers."""
    half = max(1, total_bytes // 2)
    n = copies_for(half)
    src = [torch.empty(half, dtype=torch.uint8, device=DEVICE) for _ in range(n)]
    dst = [torch.empty(half, dtype=torch.uint8, device=DEVICE) for _ in range(n)]
    for s in src:
        s.fill_(1)
    return timed(lambda i: dst[i].copy_(src[i]), n, reps)


def table_row(case: str, name: str, us: float, gbs: float, base_us, err: str) -> str:
    speed = f"{base_us / us:5.3f}x" if base_us and us == us else "    -"
    return f"{case:24s} {name:26s} {us:8.2f} {gbs:8.0f} {speed:>8s}  {err}"


def bench_norm(reps: int, results: list) -> None:
    dev = torch.device(DEVICE)
    emit("== residual_norm: h, o -> h + gate*o (h's dtype), modulated LayerNorm (bf16)")
    emit(f"{'case':24s} {'variant':26s} {'us':>8s} {'GB/s':>8s} {'speed-up':>8s}  rel err (h, m)")
    for res_dtype in (torch.bfloat16, torch.float32):
        for r, n in CASES:
            rows = r * n
            case = f"{rows} rows h={str(res_dtype).replace('torch.', '')}"
            g = torch.Generator(device=dev).manual_seed(rows)
            per_copy = rows * HIDDEN * (res_dtype.itemsize + 2) + r * 6 * HIDDEN * 2
            n_copies = copies_for(per_copy)
            hs = [torch.randn(r, n, HIDDEN, device=dev, generator=g).to(res_dtype) for _ in range(n_copies)]
            os_ = [torch.randn(r, n, HIDDEN, device=dev, generator=g).to(torch.bfloat16) for _ in range(n_copies)]
            mods = [torch.randn(r, 6 * HIDDEN, device=dev, generator=g).to(torch.bfloat16) for _ in range(n_copies)]
            gates = [m[:, 2 * HIDDEN:3 * HIDDEN] for m in mods]          # as sit.py slices them
            sss = [m[:, 3 * HIDDEN:5 * HIDDEN] for m in mods]
            ref_h, ref_m = kernels.residual_norm_reference(hs[0], os_[0], gates[0], sss[0])
            ref_h, ref_m = ref_h.float(), ref_m.float()
            moved = (nbytes(hs[0], os_[0]) + r * 3 * HIDDEN * 2    # read: h, o, gate, shift, scale
                     + nbytes(hs[0]) + rows * HIDDEN * 2)        # written: h, m
            tol_h = 1e-6 if res_dtype == torch.float32 else 1e-3
            base_us = None
            for name, launch in kernels.NORM_VARIANTS.items():
                rec = dict(kernel="residual_norm", case=case, rows=rows, r=r, n=n,
                           h_dtype=str(res_dtype), variant=name, launch=launch, bytes=moved)
                try:
                    out_h, out_m = kernels._residual_norm_impl(hs[0], os_[0], gates[0], sss[0], launch)
                    torch.cuda.synchronize()
                    eh, em = rel(out_h, ref_h), rel(out_m, ref_m)
                    rec.update(err_h=eh, err_m=em, ok=eh < tol_h and em < 1e-2)
                    us = timed(lambda i, launch=launch: kernels._residual_norm_impl(
                        hs[i], os_[i], gates[i], sss[i], launch), n_copies, reps)
                    rec.update(us=us, gbs=moved / us / 1e3)
                    if name == "base":
                        base_us = us
                    err = f"{eh:.1e}, {em:.1e}" + ("" if rec["ok"] else "  WRONG")
                    emit(table_row(case, name, us, rec["gbs"], base_us, err))
                except Exception as exc:  # a variant that does not compile here: say so, go on
                    failed(rec, case, name, exc)
                results.append(rec)
            copy_row("residual_norm", case, n, moved, reps, base_us, results)
            hs = os_ = mods = gates = sss = None  # free this case's copies before the next
            torch.cuda.empty_cache()
    emit("")


def failed(rec: dict, case: str, name: str, exc: Exception) -> None:
    rec.update(error=f"{type(exc).__name__}: {exc}")
    emit(f"{case:24s} {name:26s} FAILED {type(exc).__name__}: {str(exc)[:160]}")
    log(traceback.format_exc(limit=3))


def copy_row(kernel: str, case: str, n: int, moved: int, reps: int, base_us, results: list) -> None:
    """The ceiling row of a case: a device copy of the bytes the kernel moves."""
    try:
        us = copy_us(moved, reps)
        results.append(dict(kernel=kernel, case=case, n=n, variant="copy", us=us, bytes=moved,
                            gbs=moved / us / 1e3))
        emit(table_row(case, "copy (same bytes)", us, moved / us / 1e3, base_us, ""))
    except Exception as exc:
        emit(f"{case:24s} copy FAILED {type(exc).__name__}: {exc}")


def attention_reference(qkv: torch.Tensor) -> torch.Tensor:
    r, n, _ = qkv.shape
    q, k, v = qkv.float().view(r, n, 3, HEADS, HIDDEN // HEADS).permute(2, 0, 3, 1, 4)
    p = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(HIDDEN // HEADS), dim=-1)
    return (p @ v).transpose(1, 2).reshape(r, n, HIDDEN)


def bench_attention(reps: int, results: list) -> None:
    dev = torch.device(DEVICE)
    emit(f"== short_attention: qkv (R, N, {3 * HIDDEN}) bf16 -> (R, N, {HIDDEN}), {HEADS} heads of {HIDDEN // HEADS}")
    emit(f"{'case':24s} {'variant':26s} {'us':>8s} {'GB/s':>8s} {'speed-up':>8s}  rel err vs fp32")
    for r, n in CASES:
        case = f"qkv ({r}, {n}, {3 * HIDDEN})"
        g = torch.Generator(device=dev).manual_seed(r * n)
        per_copy = r * n * 3 * HIDDEN * 2
        n_copies = copies_for(per_copy)
        qkvs = [torch.randn(r, n, 3 * HIDDEN, device=dev, generator=g).to(torch.bfloat16) for _ in range(n_copies)]
        ref = attention_reference(qkvs[0])
        moved = per_copy + r * n * HIDDEN * 2
        base_us = None
        for name, launch in kernels.ATTN_VARIANTS.items():
            rec = dict(kernel="short_attention", case=case, r=r, n=n, variant=name, launch=launch, bytes=moved)
            try:
                out = kernels._short_attention_impl(qkvs[0], HEADS, launch)
                torch.cuda.synchronize()
                e = rel(out, ref)
                rec.update(err=e, ok=e < 1e-2)
                us = timed(lambda i, launch=launch: kernels._short_attention_impl(qkvs[i], HEADS, launch),
                           n_copies, reps)
                rec.update(us=us, gbs=moved / us / 1e3)
                if name == "base":
                    base_us = us
                emit(table_row(case, name, us, rec["gbs"], base_us, f"{e:.1e}" + ("" if rec["ok"] else "  WRONG")))
            except Exception as exc:  # a variant that does not compile here: say so, go on
                failed(rec, case, name, exc)
            results.append(rec)
        copy_row("short_attention", case, n, moved, reps, base_us, results)
        qkvs = None
        torch.cuda.empty_cache()
    emit("")


def geomean(xs: list) -> float:
    return math.exp(sum(map(math.log, xs)) / len(xs))


BEST: dict = {}   # {"NORM" | "ATTN": {tokens: variant}}: the fastest per sequence length, for --launches


def summary(results: list) -> None:
    """Per kernel and sequence length: each variant's geometric-mean speed-up over base across
    those cases (only variants that ran and passed their check in every one), best first, and
    the line that makes the best one the default there."""
    emit("== summary: speed-up over base (base time / variant time), geometric mean over the cases")
    for kernel, prefix in (("residual_norm", "NORM"), ("short_attention", "ATTN")):
        recs = [x for x in results if x["kernel"] == kernel]
        if not recs:
            continue
        variants = getattr(kernels, f"{prefix}_VARIANTS")
        current = getattr(kernels, f"{prefix}_LAUNCH")
        default = next((name for name, launch in ALL_VARIANTS[prefix].items() if launch == current), current)
        emit(f"{kernel}: kernels.{prefix}_LAUNCH is {default!r}, "
             f"{prefix}_LAUNCH_BY_TOKENS {getattr(kernels, f'{prefix}_LAUNCH_BY_TOKENS')}")
        for n in sorted({x["n"] for x in recs if "n" in x}, reverse=True):
            cases = list(dict.fromkeys(x["case"] for x in recs if x.get("n") == n))
            base = {x["case"]: x.get("us") for x in recs if x["variant"] == "base"}
            scored = []
            for name in list(variants) + ["copy"]:
                ratios = []
                for c in cases:
                    x = next((y for y in recs if y["case"] == c and y["variant"] == name), None)
                    if x is None or "us" not in x or not base.get(c) or not x.get("ok", True):
                        break
                    ratios.append(base[c] / x["us"])
                else:
                    scored.append((geomean(ratios), name, ratios))
            scored.sort(reverse=True)
            emit(f"  {n} tokens ({'; '.join(cases)}):")
            for gm, name, ratios in scored:
                emit(f"    {name:26s} {gm:5.3f}x   (" + ", ".join(f"{q:5.3f}" for q in ratios) + ")")
            best = next((name for _, name, _ in scored if name != "copy"), None)
            if best:
                BEST.setdefault(prefix, {})[n] = best
                emit(f"    -> kernels.{prefix}_LAUNCH_BY_TOKENS[{n}] = kernels.{prefix}_VARIANTS[{best!r}]")
    emit("")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT"))
    p.add_argument("--kernels", default="norm,attn", help="norm, attn or both (comma separated)")
    p.add_argument("--reps", type=int, default=7, help="graph replays per timing (median)")
    p.add_argument("--only", default="", help="comma-separated substrings: time only the variants "
                   "whose names contain one (base and the copy are always timed)")
    args = p.parse_args(argv)
    if args.only:
        keep = [w.strip() for w in args.only.split(",") if w.strip()]
        for table in (kernels.NORM_VARIANTS, kernels.ATTN_VARIANTS):
            for name in [n for n in table if n != "base" and not any(k in n for k in keep)]:
                del table[name]
    if not (torch.cuda.is_available() and kernels.AVAILABLE):
        raise SystemExit("memkernels needs CUDA and Triton")
    torch.backends.cuda.matmul.allow_tf32 = False
    import triton

    emit(f"# memory-bound kernel variants on {torch.cuda.get_device_name()} "
         f"(torch {torch.__version__}, triton {triton.__version__})")
    emit(f"# NORM_LAUNCH = {kernels.NORM_LAUNCH}")
    emit(f"# ATTN_LAUNCH = {kernels.ATTN_LAUNCH}")
    emit("")
    results: list = []
    which = {w.strip() for w in args.kernels.split(",")}
    with torch.no_grad():
        if "norm" in which:
            bench_norm(args.reps, results)
        if "attn" in which:
            bench_attention(args.reps, results)
    summary(results)
    emit(f"# {time.perf_counter() - T0:.1f} s")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "memkernels.txt").write_text("\n".join(LINES) + "\n")
        (out / "memkernels.json").write_text(json.dumps(results, indent=1, default=str))
        # what `bench.headline --launches` applies: the measured best per sequence length
        (out / "best_launch.json").write_text(json.dumps(BEST, indent=1))
        log(f"wrote {out / 'memkernels.txt'}")


if __name__ == "__main__":
    main()
