"""FlexTok decode timing: the reference sampler (model dtype, eager) against the fast path
(bf16 copy, compiled step, CUDA graphs) on the same tokens and noise; prints a table.

    python -m softvq_demo.bench.flextok --tokenizer flextok-d18-d28 --batch 8 --steps 20 --k 256

Columns: seconds per sampler run (median of ``--repeats`` after a warm-up that includes
compilation), images/s, and the largest |Δ| of the sampled VAE latents from the reference
(bf16 rounding, amplified by guidance). The VAE decode is timed separately (not on the fast path).
Not yet run on a GPU (issue 18's note).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, repeats: int, device: torch.device) -> tuple[float, torch.Tensor]:
    out = fn()  # warm-up (compiles / captures on the fast path)
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


@torch.no_grad()
def run(source: str, batch: int, steps: int, k: int, guidance: float, apg: bool, repeats: int,
        device: str) -> list[dict]:
    from .. import load_tokenizer
    from ..models.flextok import noise_from_seed
    from ..sampling.flextok_fast import FlexTokFast

    tok = load_tokenizer(source, device=device)
    dev = torch.device(device)
    k = min(k, tok.num_tokens)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, tok.codebook_size, (batch, k), generator=gen).to(dev)
    values = tok.fsq.ids_to_values(ids)
    shape = (tok.latent_channels, tok.latent_size, tok.latent_size)
    noise = noise_from_seed(0, batch, shape, per_image=True, device=dev)
    rows = []
    ref_s, ref = _time(lambda: tok.sample_latents(values, noise, steps, guidance, apg), repeats, dev)
    rows.append({"path": f"reference ({next(tok.parameters()).dtype}, eager)", "s / run": ref_s,
                 "images / s": batch / ref_s, "max |Δ latents|": 0.0})
    fast = FlexTokFast(tok)
    fast_s, out = _time(lambda: fast.sample_latents(values, noise, steps, guidance, apg), repeats, dev)
    how = f"{fast.dtype}, {'compiled' if fast.compiled else 'eager'}" + \
        (", CUDA graphs" if fast.graphs else "")
    rows.append({"path": f"fast ({how})", "s / run": fast_s, "images / s": batch / fast_s,
                 "max |Δ latents|": float((out.float() - ref.float()).abs().max())})
    vae_s, _ = _time(lambda: tok.vae_decode(ref), repeats, dev)
    rows.append({"path": "VAE decode (model dtype)", "s / run": vae_s, "images / s": batch / vae_s,
                 "max |Δ latents|": float("nan")})
    return rows, k


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokenizer", required=True, help="folder, catalogue name or Hub id")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--k", type=int, default=256, help="tokens decoded (a prefix)")
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--no-apg", action="store_true", help="plain CFG instead of APG")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args(argv)
    rows, k = run(a.tokenizer, a.batch, a.steps, a.k, a.guidance, not a.no_apg, a.repeats, a.device)
    print(f"FlexTok decode · {a.tokenizer} · batch {a.batch} · {a.steps} steps · k = {k} · "
          f"guidance {a.guidance:g}{'' if a.no_apg else ' (APG)'} · {a.device}")
    print(f"{'path':44} {'s / run':>9} {'images/s':>9} {'max |Δ latents|':>16}")
    for r in rows:
        print(f"{r['path']:44} {r['s / run']:9.4f} {r['images / s']:9.2f} {r['max |Δ latents|']:16.3g}")


if __name__ == "__main__":
    main()
