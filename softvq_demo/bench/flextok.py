"""FlexTok decode timing: the decoder steps on the fast path against the reference, side by side.

    python -m softvq_demo.bench.flextok --released d12_d12,d18_d18,d18_d28 --batch 1,8
    python -m softvq_demo.bench.flextok --tokenizer FOLDER_OR_NAME --batch 1,8

``--released`` builds each released configuration (the manifests' configs in
``$SOFTVQ_REFERENCE/flextok/manifests``) on the device with random weights drawn as the fixtures
draw theirs (FIXTURES.md: Linear/Conv N(0, 1/fan_in), biases 0.1·N, norms 1 + 0.1·N, tokens N(0, 1)):
timing needs the shapes, not trained weights. For each model and batch, on the same ids and noise
with the release sampler settings (20 steps, guidance 7.5 with APG, all 256 tokens):

- ``fp32``: ``FlexTok.sample_latents`` in float32, TF32 off: the agreement baseline;
- ``bf16 ref``: the same under bf16 autocast, eager: what a CUDA decode ran before (``analysis.codec``
  wraps decodes in autocast) and what it still runs where the policy keeps the reference path;
- ``fast``: ``sampling.flextok_fast`` (bf16 copy, compiled blocks, the steps as one CUDA graph);
  "first call" is its cold start (compile + capture), the other columns are warm medians;
- ``tok.decode``: the public decode of that (now warm) shape under the default policy (``auto``),
  VAE included, checking that it took the fast path.

Columns: seconds for all steps of one batch (median of ``--repeats``; fp32 runs once), decoder
steps per second, per-image decode time (steps + the VAE decode under bf16 autocast), speed-ups, and
the agreement with fp32 of the sampled latents (max |Δ| and ‖Δ‖/‖fp32‖) and of the pixels (both
latents decoded by the fp32 VAE, so only the steps differ). The policy's estimate of the bf16
reference time (``sampling.policy.reference_seconds``) is printed beside the measured one.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

RELEASED = ("d12_d12", "d18_d18", "d18_d28")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable[[], torch.Tensor], repeats: int, device: torch.device) -> tuple[float, torch.Tensor]:
    times, out = [], None
    for _ in range(max(1, repeats)):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def released_config(name: str, reference: Optional[str] = None) -> dict:
    root = Path(reference or os.environ.get("SOFTVQ_REFERENCE")
                or Path(__file__).resolve().parents[3] / "shared" / "reference")
    return json.loads((root / "flextok" / "manifests" / f"flextok_{name}.json").read_text())["config"]


@torch.no_grad()
def random_flextok(config: dict, device: torch.device, seed: int = 0):
    """A FlexTok of this config built on ``device``, weights drawn as FIXTURES.md says (the fixed
    sin-cos tables left as computed)."""
    from ..models.flextok import FlexTok

    with torch.device(device):
        tok = FlexTok(config)
    gen = torch.Generator(device=device).manual_seed(seed)
    for module in tok.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:  # the sin-cos position tables
                continue
            if isinstance(module, (nn.Linear, nn.Conv2d)) and name == "weight":
                p.normal_(0, p[0].numel() ** -0.5, generator=gen)
            elif isinstance(module, (nn.GroupNorm, nn.LayerNorm)) and name == "weight":
                p.normal_(1, 0.1, generator=gen)
            elif name == "bias":
                p.normal_(0, 0.1, generator=gen)
            else:  # registers, mask token, null condition, the learned register posemb
                p.normal_(0, 0.5 if name == "posembs" else 1.0, generator=gen)
    return tok.eval().requires_grad_(False)


def _agreement(out: torch.Tensor, ref: torch.Tensor) -> dict:
    d = (out.double() - ref.double())
    return {"max_abs": float(d.abs().max()), "rel": float(d.norm() / ref.double().norm())}


@torch.no_grad()
def bench_model(tok, label: str, batches: list[int], steps: int, guidance: float, apg: bool,
                repeats: int, seed: int = 0) -> list[dict]:
    from ..device import autocast, module_device
    from ..models.flextok import noise_from_seed
    from ..sampling import policy
    from ..sampling.flextok_fast import flextok_fast, run_options

    dev = module_device(tok)
    rows = []
    shape = (tok.latent_channels, tok.latent_size, tok.latent_size)
    options = run_options(steps, guidance, apg)
    for b in batches:
        gen = torch.Generator().manual_seed(seed + b)
        ids = torch.randint(0, tok.codebook_size, (b, tok.num_tokens), generator=gen).to(dev)
        values = tok.fsq.ids_to_values(ids)
        noise = noise_from_seed(seed + b, b, shape, per_image=True, device=dev)

        def ref_steps(n: int = steps) -> torch.Tensor:
            return tok.sample_latents(values, noise, n, guidance, apg).float()

        def bf16_steps(n: int = steps) -> torch.Tensor:
            with autocast(dev):
                return tok.sample_latents(values, noise, n, guidance, apg).float()

        ref_steps(1), bf16_steps(1)  # cuBLAS handles, allocator: out of the timings
        fp32_s, ref = _time(ref_steps, 1, dev)
        bf16_s, bref = _time(bf16_steps, repeats, dev)
        _sync(dev)
        t0 = time.perf_counter()
        fast = flextok_fast(tok)
        out = fast.sample_latents(values, noise, steps, guidance, apg)
        _sync(dev)
        first_s = time.perf_counter() - t0
        fast_s, out = _time(lambda: fast.sample_latents(values, noise, steps, guidance, apg), repeats, dev)

        def vae() -> torch.Tensor:
            with autocast(dev):
                return tok.vae_decode(out)
        vae_s, _ = _time(vae, repeats, dev)
        pixels_ref = tok.vae_decode(ref).float()
        pix = {name: float((tok.vae_decode(x).double() - pixels_ref.double()).abs().max())
               for name, x in (("bf16", bref), ("fast", out))}
        # the public API under the default policy: this shape is warm after a fast run
        os.environ["SOFTVQ_FAST"] = "always"
        tok.decode(ids, noise=noise, steps=steps, guidance_scale=guidance, apg=apg)
        os.environ.pop("SOFTVQ_FAST")

        def decode() -> torch.Tensor:
            with autocast(dev):
                return tok.decode(ids, noise=noise, steps=steps, guidance_scale=guidance, apg=apg)
        decode_s, _ = _time(decode, repeats, dev)
        took_fast = bool(tok.last_decode.get("fast"))
        est = policy.reference_seconds(tok, b, options)
        how = f"{fast.dtype}".removeprefix("torch.") + (", compiled" if fast.compiled else "") + \
            (", CUDA graph" if fast.graphs else "")
        common = {"model": label, "batch": b, "steps": steps, "guidance": guidance, "apg": apg,
                  "vae_s": vae_s, "policy_estimate_s": est}
        for path, s, agree, px, first in (
                ("fp32", fp32_s, None, None, None),
                ("bf16 ref (autocast, eager)", bf16_s, _agreement(bref, ref), pix["bf16"], None),
                (f"fast ({how})", fast_s, _agreement(out, ref), pix["fast"], first_s)):
            rows.append({**common, "path": path, "steps_s": s, "steps_per_s": steps / s,
                         "ms_per_image": 1000 * (s + vae_s) / b, "x_fp32": fp32_s / s,
                         "x_bf16": bf16_s / s, "first_s": first, "agree": agree, "pixels_max_abs": px})
        rows.append({**common, "path": "tok.decode (policy auto" + (" → fast)" if took_fast else
                                                                     " → REFERENCE!)"),
                     "steps_s": None, "steps_per_s": None, "ms_per_image": 1000 * decode_s / b,
                     "x_fp32": (fp32_s + vae_s) / decode_s, "x_bf16": (bf16_s + vae_s) / decode_s,
                     "first_s": None, "agree": None, "pixels_max_abs": None, "decode_fast": took_fast})
        for r in rows[-4:]:
            print(_line(r), flush=True)
    return rows


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


HEADER = ("| model | B | path | first call s | s / steps | steps/s | ms / image | × fp32 | × bf16 ref "
          "| latents max abs Δ | latents rel Δ | pixels max abs Δ |")


def _line(r: dict) -> str:
    a = r["agree"] or {}
    return (f"| {r['model']} | {r['batch']} | {r['path']} | {_fmt(r['first_s'], '.1f')} "
            f"| {_fmt(r['steps_s'], '.4f')} | {_fmt(r['steps_per_s'], '.1f')} | {r['ms_per_image']:.1f} "
            f"| {r['x_fp32']:.1f} | {r['x_bf16']:.2f} | {_fmt(a.get('max_abs'), '.2e')} "
            f"| {_fmt(a.get('rel'), '.2e')} | {_fmt(r['pixels_max_abs'], '.2e')} |")


def table(rows: list[dict]) -> str:
    lines = [HEADER, "|" + "---|" * 12]
    lines += [_line(r) for r in rows]
    est = {(r["model"], r["batch"]): r for r in rows if r["path"].startswith("bf16")}
    lines.append("")
    lines.append("policy estimate of the bf16 reference (s) vs measured steps + VAE: " + ", ".join(
        f"{m} B{b} {r['policy_estimate_s']:.2f} vs {r['steps_s'] + r['vae_s']:.2f}"
        for (m, b), r in est.items()))
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--released", default=None,
                   help=f"comma-separated released configs, random weights ({', '.join(RELEASED)})")
    p.add_argument("--tokenizer", default=None, help="a folder, catalogue name or Hub id instead")
    p.add_argument("--batch", default="1,8", help="comma-separated batch sizes")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--no-apg", action="store_true", help="plain CFG instead of APG")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", default=None, help="also write the rows here")
    a = p.parse_args(argv)
    if not (a.released or a.tokenizer):
        p.error("give --released or --tokenizer")
    from .. import load_tokenizer
    from ..sampling.fast import release

    dev = torch.device(a.device)
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 (the agreement baseline)
    torch.backends.cudnn.allow_tf32 = False
    batches = [int(v) for v in a.batch.split(",")]
    apg = not a.no_apg
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(f"FlexTok decode · {a.steps} steps · guidance {a.guidance:g}{' (APG)' if apg else ''} · "
          f"all tokens · {gpu} · torch {torch.__version__}", flush=True)
    print(HEADER, flush=True)
    rows = []
    sources = [("released", n) for n in a.released.split(",")] if a.released else [("tok", a.tokenizer)]
    for kind, name in sources:
        tok = random_flextok(released_config(name), dev) if kind == "released" \
            else load_tokenizer(name, device=dev)
        rows += bench_model(tok, Path(name).name, batches, a.steps, a.guidance, apg, a.repeats)
        del tok
        gc.collect()
        release()
    print("\n" + table(rows))
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
