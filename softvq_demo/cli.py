"""Command line: ``python -m softvq_demo reconstruct|generate|models``.

Every expected failure (missing file, not an image, unknown model, mismatched pair, bad value)
ends in one ``error:`` line and exit status 2; ``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch
from tqdm.auto import tqdm

from .analysis.metrics import psnr
from .catalogue import CATALOGUE, find_entry
from .convert import add_parser as add_convert_parser, main_convert
from .data.images import load_image, to_model_input, to_pil
from .device import autocast
from .loading import load_generator, load_tokenizer
from .research import fid
from .research.reconstruct_set import reconstruct_set
from .research.sample_set import sample_set
from .research.shards import distributed
from .sampling import check_pair, generate, pair_warning, settings


def _parse_classes(text: str) -> list[int]:
    try:
        classes = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--classes takes comma-separated integers, got {text!r}")
    if not classes:
        raise argparse.ArgumentTypeError("--classes is empty")
    return classes


def _range(setting) -> str:
    return f"{setting.low:g}..{setting.high:g}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m softvq_demo",
                                     description="Reconstruct and generate with 1D image tokenizers.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    rec = sub.add_parser("reconstruct", help="encode and decode images")
    rec.add_argument("images", nargs="+", help="image files")
    rec.add_argument("--tokenizer", default="textscenes-softvq-32",
                     help="folder, catalogue name or Hub id (default: %(default)s)")
    rec.add_argument("--out", default="out", help="output folder (default: %(default)s)")
    rec.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: auto)")

    gen = sub.add_parser("generate", help="class-conditional generation")
    gen.add_argument("--generator", default="textscenes-sit")
    gen.add_argument("--tokenizer", default=None, help="default: the generator's paired tokenizer")
    gen.add_argument("--classes", type=_parse_classes, default=[0], help="e.g. 207,360")
    sit, mg = settings.SIT, settings.MASKGIT
    gen.add_argument("--steps", type=int, default=None,
                     help=f"SiT {_range(sit['steps'])} (default {sit['steps'].default}); MaskGIT "
                          f"{_range(mg['steps'])} (default: the model's own)")
    gen.add_argument("--cfg", type=float, default=None,
                     help=f"guidance scale, {_range(sit['cfg_scale'])} (default: the model's own)")
    gen.add_argument("--sampler", default=None, help=f"SiT: {', '.join(sit['method'].choices)}")
    gen.add_argument("--guidance-low", type=float, default=None,
                     help=f"SiT: {sit['guidance_low'].help} (default {sit['guidance_low'].default})")
    gen.add_argument("--guidance-high", type=float, default=None,
                     help=f"SiT (default {sit['guidance_high'].default})")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--out", default="out")
    gen.add_argument("--device", default=None)

    sub.add_parser("models", help="list the catalogue")
    add_convert_parser(sub)
    add_research_commands(sub)
    return parser


def add_research_commands(sub) -> None:
    """``sample``, ``reconstruct-set`` and ``fid`` (softvq_demo.research; docs/reproduce.md)."""
    smp = sub.add_parser("sample", help="N samples into an ADM .npz (torchrun-shardable, resumable)")
    smp.add_argument("--generator", default="textscenes-sit")
    smp.add_argument("--tokenizer", default=None, help="default: the generator's paired tokenizer")
    # not "--n": torchrun's own parser would take it for an abbreviation of --nnodes/--nproc...
    smp.add_argument("--num-samples", type=int, default=50000, help="number of images (default: %(default)s)")
    smp.add_argument("--batch-size", type=int, default=64, help="images per chunk and per batch; "
                     "part of the result for SDE and MaskGIT (default: %(default)s)")
    smp.add_argument("--labels", default="balanced", help="balanced (i %% classes) or uniform")
    smp.add_argument("--steps", type=int, default=None)
    smp.add_argument("--cfg", type=float, default=None, help="guidance scale")
    smp.add_argument("--sampler", default=None, help="SiT: euler, heun, sde")
    smp.add_argument("--guidance-low", type=float, default=None)
    smp.add_argument("--guidance-high", type=float, default=None)
    smp.add_argument("--seed", type=int, default=0)
    smp.add_argument("--png", action="store_true", help="also write one PNG per image")
    smp.add_argument("--ref", default=None, help="reference .npz: compute FID / IS / P-R at the end")
    smp.add_argument("--reference-path", action="store_true",
                     help="the reference sampler instead of the CUDA fast path")
    smp.add_argument("--out", default="out/samples")
    smp.add_argument("--device", default=None, help="cpu, cuda (each torchrun rank takes its own)")
    rs = sub.add_parser("reconstruct-set", help="a folder of images through a tokenizer into .npz")
    rs.add_argument("folder", help="images, found recursively (ImageNet-val layout or any)")
    rs.add_argument("--tokenizer", default="textscenes-softvq-32")
    rs.add_argument("--batch-size", type=int, default=64)
    rs.add_argument("--boxes", default=None, help="JSON {relative path: [[x0,y0,x1,y1], ...]} for "
                    "OCR text metrics")
    rs.add_argument("--rfid", action="store_true", help="compute rFID (reconstructions vs inputs)")
    rs.add_argument("--workers", type=int, default=8, help="image-decoding threads per process")
    rs.add_argument("--reference-path", action="store_true", help="no CUDA fast path")
    rs.add_argument("--out", default="out/reconstruct-set")
    rs.add_argument("--device", default=None)
    fd = sub.add_parser("fid", help="FID / IS / precision-recall of a .npz against a reference .npz")
    fd.add_argument("samples")
    fd.add_argument("reference")
    fd.add_argument("--device", default=None)
    fd.add_argument("--batch-size", type=int, default=200)


def cmd_models() -> None:
    print(f"{'name':28} {'kind':10} {'family':8} {'px':>4} {'tok':>4} {'dim':>4} {'codes':>6} "
          f"{'rFID':>5} {'gFID':>5}  source")
    for e in CATALOGUE:
        fmt = lambda v: "-" if v is None else str(v)  # noqa: E731
        src = f"checkpoints/{e.embedded}" if e.embedded else e.repo_id
        print(f"{e.name:28} {e.kind:10} {e.family:8} {e.image_size:>4} {e.num_tokens:>4} "
              f"{fmt(e.token_dim):>4} {fmt(e.codebook_size):>6} {fmt(e.rfid):>5} {fmt(e.gfid):>5}  {src}")


def cmd_reconstruct(args) -> None:
    paths = [Path(p) for p in args.images]
    for p in paths:  # fail before loading a model
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no such file")
    tok = load_tokenizer(args.tokenizer, device=args.device)
    # Decoded once, at model size (small), before the progress bar: a bad file is one clean error.
    inputs = [to_model_input(load_image(p), tok.image_size) for p in paths]
    device = next(tok.parameters()).device
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for p, (x, how) in zip(tqdm(paths, desc="reconstruct", unit="img"), inputs):
        with torch.no_grad(), autocast(device):
            y = tok.decode(tok.encode(x.to(device)).latents).float().clamp(-1, 1).cpu()
        to_pil(y[0]).save(out / f"{p.stem}_recon.png")
        to_pil(x[0]).save(out / f"{p.stem}_input.png")
        tqdm.write(f"{p.name}: {how}; PSNR {float(psnr(y, x)):.2f} dB -> {out / (p.stem + '_recon.png')}")


def load_generator_and_tokenizer(generator: str, tokenizer: Optional[str], device):
    """The generator, the tokenizer it decodes through (``tokenizer``, or the catalogue's pair) and
    that tokenizer's source."""
    gen = load_generator(generator, device=device)
    if tokenizer is None:
        entry = find_entry(generator)
        if entry is None or entry.pair is None:
            raise ValueError("--tokenizer is required for a generator outside the catalogue")
        tokenizer = entry.pair
    return gen, load_tokenizer(tokenizer, device=device), tokenizer


def cmd_generate(args) -> None:
    gen, tok, _ = load_generator_and_tokenizer(args.generator, args.tokenizer, args.device)
    check_pair(tok, gen)
    warning = pair_warning(tok, gen)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    given = {"--steps": ("steps", args.steps), "--cfg": (settings.guidance_key(gen), args.cfg),
             "--sampler": ("method", args.sampler), "--guidance-low": ("guidance_low", args.guidance_low),
             "--guidance-high": ("guidance_high", args.guidance_high)}
    table = settings.family_settings(gen.family)
    for flag, (key, value) in given.items():
        if value is not None and key not in table:
            raise ValueError(f"{flag} applies to SiT generators only")
    options = settings.check(gen.family, {k: v for k, v in given.values() if v is not None})
    bar = None  # opened on the first step, so that a bad option ends in one clean error line

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(desc="sampling", unit="step", total=total)
        bar.update(done - bar.n)

    result = generate(gen, tok, args.classes, seed=args.seed, progress=progress, **options)
    if bar is not None:
        bar.close()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = gen.class_names
    for i, (img, c) in enumerate(zip(result.images, result.labels.tolist())):
        label = f"_{names[c]}" if names and c < len(names) else ""
        to_pil(img).save(out / f"{i:03d}_class{c}{label}.png")
    t = result.timings
    print(f"{len(result.images)} images -> {out}/ | generator {t['generator_s']:.3f} s, decode "
          f"{t['decode_s']:.3f} s, {t['images_per_s']:.2f} img/s, {t['ms_per_step']:.1f} ms/step "
          f"on {t['device']}")


def _sampler_options(gen, args) -> dict:
    if gen.family == "sit":
        pairs = (("steps", args.steps), ("cfg_scale", args.cfg), ("method", args.sampler),
                 ("guidance_low", args.guidance_low), ("guidance_high", args.guidance_high))
    else:
        if args.sampler is not None:
            raise ValueError("--sampler applies to SiT generators only")
        pairs = (("steps", args.steps), ("guidance_scale", args.cfg))
    return {k: v for k, v in pairs if v is not None}


def _print_fid(samples, reference, device, batch_size: int = 200) -> None:
    """FID & co, or one line saying why not (the .npz stays usable with the ADM evaluator)."""
    try:
        res = fid.compare(samples, reference, device=device, batch_size=batch_size)
    except (fid.InceptionMissing, ImportError) as err:
        print(f"FID not computed: {err}. {samples} is ready for the ADM evaluator.", file=sys.stderr)
        return
    print("  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in res.items()))


def cmd_research(args) -> None:
    """One process, or one rank of ``torchrun --nproc_per_node=K -m softvq_demo ...``."""
    if args.command == "fid":
        _print_fid(args.samples, args.reference, args.device, args.batch_size)
        return
    fast = False if args.reference_path else None
    with distributed(args.device) as dist:
        if args.command == "reconstruct-set":
            tok = load_tokenizer(args.tokenizer, device=dist.device)
            summary = reconstruct_set(tok, args.folder, args.out, dist=dist, batch_size=args.batch_size,
                                      boxes=args.boxes, fast=fast, sources={"tokenizer": args.tokenizer},
                                      workers=args.workers)
            ref = summary.get("inputs_npz") if args.rfid else None
        else:
            gen, tok, tok_src = load_generator_and_tokenizer(args.generator, args.tokenizer, dist.device)
            summary = sample_set(gen, tok, args.num_samples, args.out, dist=dist, seed=args.seed,
                                 batch_size=args.batch_size, labels=args.labels, png=args.png, fast=fast,
                                 sources={"generator": args.generator, "tokenizer": tok_src},
                                 **_sampler_options(gen, args))
            ref = args.ref
        if dist.is_main:
            rate = summary.get("images_per_s")
            extra = "".join(f", {k} {summary[k]:.4f}" for k in ("psnr", "ssim", "t_acc", "t_ned")
                            if isinstance(summary.get(k), float))
            print(f"{summary['npz']}: {summary['images_this_run']} images this run on "
                  f"{dist.world_size} process(es) ({summary['device']}), "
                  f"{rate:.2f} img/s{extra}" if rate else f"{summary['npz']}: nothing left to do{extra}")
            if ref:
                _print_fid(summary["npz"], ref, dist.device)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "models":
            cmd_models()
        elif args.command == "reconstruct":
            cmd_reconstruct(args)
        elif args.command == "generate":
            cmd_generate(args)
        elif args.command == "convert":
            main_convert(args)
        elif args.command in ("sample", "reconstruct-set", "fid"):
            cmd_research(args)
    except BrokenPipeError:  # e.g. `models | head`
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # one readable line for users; --debug for developers
        if args.debug:
            raise
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0
