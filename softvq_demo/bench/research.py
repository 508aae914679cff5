"""``python -m softvq_demo sample`` at research scale, next to the bench's figure for the same
settings (issue 15's GPU check).

    python -m softvq_demo.bench.research --num-samples 5000 --out DIR
    python -m softvq_demo.bench.research --tiny --device cpu --num-samples 64   # harness check

Two cases, each first as a user runs it (the ``sample`` command in a fresh process: load, compile,
sample, decode, write shards and the .npz), then as ``python -m softvq_demo.bench`` times it
(``Bench.run_fast`` end to end after a warm-up run, plus the fast tokenizer's decode, in this
process, rows printed by ``Bench.sit_row``):
- the embedded models (textscenes-sit → textscenes-softvq-32) at their own sampling defaults;
- SiT-XL/1 over 64×32 tokens with random weights (``bench.gpu.build_sit``) → a random SoftVQ-L-64
  decoder, at the bench's "50 euler" setting (CFG 1.75 on t ≤ 0.7).
The sample command's images/s include the decode and the .npz writing; "after first batch"
leaves out the first chunk (compile and graph capture).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def run_sample(gen: str, tok: str, n: int, batch: int, out: Path, device: str, options: dict) -> dict:
    flags = {"steps": "--steps", "method": "--sampler", "cfg_scale": "--cfg",
             "guidance_low": "--guidance-low", "guidance_high": "--guidance-high"}
    cmd = [sys.executable, "-m", "softvq_demo", "sample", "--generator", gen, "--tokenizer", tok,
           "--num-samples", str(n), "--batch-size", str(batch), "--device", device, "--out", str(out)]
    for k, v in options.items():
        if k in flags:
            cmd += [flags[k], str(v)]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        return dict(error=res.stderr.strip().splitlines()[-1:] or ["failed"], wall_s=wall)
    settings = json.loads((out / "settings.json").read_text())
    summary = settings["summary"]
    return dict(wall_s=round(wall, 1), images_per_s=summary["images_per_s"],
                images_per_s_after_first_batch=summary["images_per_s_after_first_batch"],
                command=" ".join(cmd[1:]), settings_json=settings)


def bench_figure(bench, gen, tok, net, setting: str, batch: int) -> dict:
    """The bench's end-to-end timing of the fast sampler (+ the fast decode) at this batch."""
    from ..sampling import fast as fastmod

    opts = bench.settings[setting]
    noise = torch.randn(batch, gen.num_tokens, gen.token_dim, device=bench.device)
    y = torch.randint(0, gen.num_classes, (batch,), device=bench.device)
    flops_row = bench.sit_flops_row(gen)
    t_gen = bench.timeit(lambda: bench.run_fast(gen, noise, y, opts), reps=2, warmup=1)
    row = bench.sit_row(net, "fast", batch, setting, None, flops_row, measured_s=t_gen,
                        note="research bench")
    ftok = fastmod.fast_tokenizer(tok) if bench.cuda else tok
    lat = tok.denormalize(noise)
    with torch.no_grad():
        t_dec = bench.timeit(lambda: ftok.decode(lat), reps=3, warmup=1)
    return dict(generator_images_per_s=row["images_per_s"], decode_images_per_s=batch / t_dec,
                with_decode_images_per_s=batch / (t_gen + t_dec))


def main(argv=None) -> None:
    from ..loading import load_generator, load_tokenizer, save_pretrained
    from ..sampling import sit_defaults
    from .gpu import SETTINGS, SETTINGS_TINY, Bench, build_sit, build_softvq

    p = argparse.ArgumentParser(prog="python -m softvq_demo.bench.research")
    p.add_argument("--num-samples", type=int, default=5000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="tiny random models instead of SiT-XL")
    p.add_argument("--skip", default="", help="embedded,xl")
    p.add_argument("--out", default=os.environ.get("OUT"))
    args = p.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp())
    bench = Bench(argparse.Namespace(device=args.device, tiny=args.tiny, quick=True, budget=600.0, out=None))
    bench.measure_env()
    bench.measure_peak()
    rows = []
    dev = torch.device(args.device)
    with tempfile.TemporaryDirectory() as models:
        if "embedded" not in args.skip:
            gen = load_generator("textscenes-sit", device=dev)
            tok = load_tokenizer("textscenes-softvq-32", device=dev)
            opts = {k: v for k, v in sit_defaults(gen).items()}
            bench.settings = {**bench.settings, "embedded defaults": opts}
            net = ("textscenes-sit", tok.image_size, gen.num_tokens, gen.token_dim, "1D")
            fig = bench_figure(bench, gen, tok, net, "embedded defaults", args.batch_size)
            del gen, tok
            run = run_sample("textscenes-sit", "textscenes-softvq-32", args.num_samples, args.batch_size,
                             Path(models) / "sample-embedded", args.device, opts)
            rows.append(dict(case="embedded textscenes-sit -> textscenes-softvq-32", settings=opts, **run, **fig))
        if "xl" not in args.skip:
            n, d = (16, 4) if args.tiny else (64, 32)
            setting = "10 euler" if args.tiny else "50 euler"
            gen, tok = build_sit(n, d, dev, args.tiny), build_softvq("L", dev, args.tiny)
            gdir, tdir = Path(models) / "sit", Path(models) / "tok"
            save_pretrained(gen, gdir)
            save_pretrained(tok, tdir)
            net = ("SiT-XL/1 random" if not args.tiny else "tiny SiT random", tok.image_size, n, d, "1D")
            fig = bench_figure(bench, gen, tok, net, setting, args.batch_size)
            del gen, tok
            torch.cuda.empty_cache() if dev.type == "cuda" else None
            opts = (SETTINGS_TINY if args.tiny else SETTINGS)[setting]
            run = run_sample(str(gdir), str(tdir), args.num_samples, args.batch_size,
                             Path(models) / "sample-xl", args.device, opts)
            rows.append(dict(case=f"{net[0]} {n}x{d} -> random SoftVQ-L decoder", settings=opts, **run, **fig))
            # (the .npz files stay in the temp folder: too big to bring back from a device run)
    print()
    print(f"## sample command vs bench ({bench.env.get('gpu', args.device)}, {args.num_samples} images, "
          f"batch {args.batch_size})")
    print("| case | sample: images/s (all) | sample: after first batch | bench fast: generator only "
          "| bench: generator + decode | wall (s) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['case']} | ERROR {r['error']} | | | | {r['wall_s']:.0f} |")
            continue
        print(f"| {r['case']} | {r['images_per_s']:.1f} | {r['images_per_s_after_first_batch'] or float('nan'):.1f} "
              f"| {r['generator_images_per_s']:.1f} | {r['with_decode_images_per_s']:.1f} | {r['wall_s']:.0f} |")
    out.mkdir(parents=True, exist_ok=True)
    (out / "research_bench.json").write_text(json.dumps(dict(env=bench.env, rows=rows), indent=1, default=str))


if __name__ == "__main__":
    main()
