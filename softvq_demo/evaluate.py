"""Evaluate a tokenizer (and optionally a class-conditional generator) on textscenes and photos.

    python -m softvq_demo.evaluate --tokenizer textscenes-softvq-32 --n 200
    python -m softvq_demo.evaluate --tokenizer TOK --generator GEN --n-per-class 16 --json out.json

Tokenizer (reconstruction), on the held-out textscenes split and on crops of the scikit-image
photographs, every image resized to the tokenizer's ``image_size``:
- PSNR, SSIM of reconstruction vs input;
- T-ACC / T-NED (TokBench): OCR of the reconstruction vs OCR of the input (pairs where the input
  reads empty are skipped), "word acc" the reconstruction's OCR vs the ground-truth word, and
  "input word acc" the inputs' own OCR vs the ground-truth word (the ceiling; photos: no text).

Generator: for each class, ``--n-per-class`` images without and with classifier-free guidance:
the fraction whose OCR reads the class word, and the diversity within a class (mean pairwise RMS
pixel distance at 64 px; the same figure for real held-out images is given for reference).

Only the public API is used (``load_tokenizer``, ``load_generator``, ``generate``). Results come
back as a dict (``evaluate(...)``) and can be written with ``--json``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .analysis import metrics
from .analysis import ocr as ocr_lib  # "ocr" is the local name of the reader or None below
from .analysis.codec import reconstruct_images
from .data import textscenes as ts
from .data import textscenes2 as ts2
from .loading import load_generator, load_tokenizer
from .sampling import generate, settings


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """B×3×h×w in [-1, 1] → B×3×size×size (bicubic, antialiased when shrinking)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = torch.nn.functional.interpolate(images, size=(size, size), mode="bicubic",
                                          antialias=images.shape[-1] > size, align_corners=False)
    return out.clamp(-1, 1)


def _nan_to_none(v):
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def evaluate_set(tok, images: torch.Tensor, words: Optional[Sequence[str]] = None, *,
                 batch_size: int = 32, use_ocr: bool = True, progress: bool = True,
                 name: str = "set") -> dict:
    """Reconstruction metrics for B×3×S×S images already at the tokenizer's size."""
    t0 = time.perf_counter()
    recon = reconstruct_images(tok, images, batch_size=batch_size, progress=progress,
                               desc=f"{name}: reconstruct")
    t_rec = time.perf_counter() - t0
    psnr = metrics.psnr(recon, images, reduction="none")
    ssim = metrics.ssim(recon, images, reduction="none")
    finite = psnr[torch.isfinite(psnr)]
    out = dict(n=int(images.shape[0]), psnr=float(finite.mean()) if finite.numel() else float("inf"),
               ssim=float(ssim.mean()), reconstruct_s=t_rec)
    if use_ocr:
        ocr = ocr_lib
        refs = ocr.read_strings(images, progress=progress, desc=f"{name}: OCR inputs")
        preds = ocr.read_strings(recon, progress=progress, desc=f"{name}: OCR reconstructions")
        m = ocr.text_metrics(preds, refs)
        out.update(t_acc=_nan_to_none(m["t_acc"]), t_ned=_nan_to_none(m["t_ned"]), ocr_pairs=m["n"],
                   inputs_without_text=m["n_skipped"])
        if words is not None:
            gt = ocr.text_metrics(preds, list(words))
            orig = ocr.text_metrics(refs, list(words))
            out.update(word_acc=gt["t_acc"], word_ned=gt["t_ned"], input_word_acc=orig["t_acc"],
                       input_word_ned=orig["t_ned"])
            per_class = {}
            for w in sorted(set(words)):
                idx = [i for i, x in enumerate(words) if x == w]
                per_class[w] = dict(n=len(idx), input=float(np.mean([ocr.t_acc(refs[i], w) for i in idx])),
                                    recon=float(np.mean([ocr.t_acc(preds[i], w) for i in idx])))
            out["per_class_word_acc"] = per_class
        out["examples"] = [dict(ref=r, pred=p) for r, p in list(zip(refs, preds))[:8]]
    return out


def evaluate_tokenizer(tok, n: int = 200, photos: Optional[int] = None, *, seed: int = 0,
                       batch_size: int = 32, use_ocr: bool = True, render_size: int = ts.BASE_SIZE,
                       progress: bool = True) -> dict:
    """Reconstruction on ``n`` held-out textscenes images and ``photos`` photograph crops."""
    size = int(tok.image_size)
    photos = n if photos is None else photos
    res = dict(tokenizer=_model_info(tok), image_size=size, render_size=render_size)
    if n > 0:
        ds = ts.TextScenes("heldout", size=n, image_size=render_size, seed=seed)
        samples = [ds.sample(i) for i in tqdm(range(n), desc="render textscenes", unit="img",
                                              leave=False, disable=not progress)]
        x = _resize(ts.to_tensor(np.stack([s.image for s in samples])), size)
        res["textscenes"] = evaluate_set(tok, x, [s.word for s in samples], batch_size=batch_size,
                                         use_ocr=use_ocr, progress=progress, name="textscenes")
    if photos > 0:
        x = _resize(ts.to_tensor(ts.photo_crops(photos, render_size, seed=seed)), size)
        res["photos"] = evaluate_set(tok, x, None, batch_size=batch_size, use_ocr=use_ocr,
                                     progress=progress, name="photos")
    return res


# ------------------------------------------------------------------------------ text tables
BICUBIC_FACTORS = (2, 3, 4)
BOX_PAD = 0.15   # crops of ground-truth boxes are padded by this fraction of the box height


def bicubic_copy(images: torch.Tensor, factor: int) -> torch.Tensor:
    """A ``factor``× bicubic down-and-up copy (antialiased down): (S/factor)²·3 numbers an image."""
    size = images.shape[-1]
    small = max(1, round(size / factor))
    down = torch.nn.functional.interpolate(images, size=(small, small), mode="bicubic", antialias=True,
                                           align_corners=False)
    return torch.nn.functional.interpolate(down, size=(size, size), mode="bicubic",
                                           align_corners=False).clamp(-1, 1)


def _crop(image_u8: np.ndarray, box, pad: float = BOX_PAD) -> np.ndarray:
    x0, y0, x1, y1 = box
    p = max(1, round((y1 - y0) * pad))
    h, w = image_u8.shape[:2]
    return image_u8[max(0, y0 - p):min(h, y1 + p), max(0, x0 - p):min(w, x1 + p)]


def _u8(images: torch.Tensor) -> np.ndarray:
    return ((images.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def _region_psnr(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor) -> float:
    """Mean over images of the PSNR restricted to ``weight`` (B×1×H×W, 0/1); images whose region
    is empty are left out."""
    err = (a - b).pow(2)
    area = weight.sum(dim=(1, 2, 3)) * a.shape[1]
    keep = area > 0
    if not keep.any():
        return float("nan")
    mse = (err * weight).sum(dim=(1, 2, 3))[keep] / area[keep]
    if bool((mse == 0).all()):
        return float("inf")  # identical inside the region (the inputs' own row)
    return float((10 * torch.log10(4.0 / mse.clamp_min(1e-10))).mean())


def text_rows(images: torch.Tensor, outputs: dict, lines: Optional[list] = None, *, use_ocr: bool = True,
              progress: bool = True, name: str = "set") -> dict:
    """Rows (one per entry of ``outputs``: name → B×3×S×S in [-1, 1]) of PSNR, SSIM, PSNR inside
    and outside the text boxes, and T-ACC / T-NED read on crops of the ground-truth boxes
    (``lines``: per image a list of (text, box)). OCR protocol here: RapidOCR recognition alone
    on each padded ground-truth box crop, compared with the ground-truth string after
    :func:`ocr.normalize_text` (case-insensitive, letters and digits) -- TokBench's crops-of-GT
    protocol, in its case-insensitive variant."""
    rows = {}
    inside = None
    if lines is not None:
        inside = torch.zeros(images.shape[0], 1, images.shape[-2], images.shape[-1])
        for i, ls in enumerate(lines):
            for _, (x0, y0, x1, y1) in ls:
                inside[i, :, y0:y1, x0:x1] = 1
    ocr = ocr_lib if (use_ocr and lines is not None) else None
    for key, out in outputs.items():
        psnr = metrics.psnr(out, images, reduction="none")
        finite = psnr[torch.isfinite(psnr)]
        row = dict(psnr=float(finite.mean()) if finite.numel() else float("inf"),
                   ssim=float(metrics.ssim(out, images, reduction="none").mean()))
        if inside is not None:
            row["psnr_in_box"] = _region_psnr(out, images, inside)
            row["psnr_out_box"] = _region_psnr(out, images, 1 - inside)
        if ocr is not None:
            u8 = _u8(out)
            preds, refs = [], []
            for i, ls in enumerate(tqdm(lines, desc=f"{name}: OCR {key}", unit="img", leave=False,
                                        disable=not progress)):
                for text, box in ls:
                    preds.append(ocr.recognize(_crop(u8[i], box))[0])
                    refs.append(text)
            m = ocr.text_metrics(preds, refs)
            row.update(t_acc=_nan_to_none(m["t_acc"]), t_ned=_nan_to_none(m["t_ned"]), lines=m["n"])
        rows[key] = row
    return rows


def _text_set(kind: str, n: int, seed: int, render_size: int) -> tuple[torch.Tensor, Optional[list]]:
    if kind == "unseen":     # textscenes v2 held-out split: unseen fonts, unseen words, unseen photos
        ds = ts2.TextScenes2("heldout", size=n, image_size=render_size, seed=seed)
        samples = [ds.sample(i) for i in range(n)]
        return ts.to_tensor(np.stack([s.image for s in samples])), [list(zip(s.lines, s.boxes)) for s in samples]
    if kind == "textscenes_v1":
        ds = ts.TextScenes("heldout", size=n, image_size=render_size, seed=seed)
        samples = [ds.sample(i) for i in range(n)]
        return ts.to_tensor(np.stack([s.image for s in samples])), [[(s.text, s.box)] for s in samples]
    return ts.to_tensor(ts2.photo_crops(n, render_size, seed=seed)), None


TEXT_SETS = {"unseen": "textscenes v2 held-out (unseen fonts + words)", "textscenes_v1": "textscenes v1 held-out",
             "photos": "held-out photo crops (no text)"}


def evaluate_tables(tok, n: int = 200, photos: Optional[int] = None, *, seed: int = 0, batch_size: int = 32,
                    use_ocr: bool = True, progress: bool = True) -> dict:
    """Per set of :data:`TEXT_SETS`: the tokenizer's row, the inputs' own ("original", the OCR
    ceiling) and bicubic 2×/3×/4× down-and-up copies, so a reader sees what the tokens buy."""
    size = int(tok.image_size)
    photos = n if photos is None else photos
    out = {}
    for kind in TEXT_SETS:
        count = photos if kind == "photos" else n
        if count <= 0:
            continue
        x, lines = _text_set(kind, count, seed, size)
        recon = reconstruct_images(tok, x, batch_size=batch_size, progress=progress, desc=f"{kind}: reconstruct")
        outputs = {"tokenizer": recon, "original": x}
        outputs.update({f"bicubic {k}x": bicubic_copy(x, k) for k in BICUBIC_FACTORS})
        out[kind] = dict(n=count, rows=text_rows(x, outputs, lines, use_ocr=use_ocr, progress=progress, name=kind))
    return out


def format_tables(tables: dict, title: str = "") -> str:
    lines = [title] if title else []
    head = (f"{'set':16} {'row':12} {'PSNR':>6} {'SSIM':>6} {'PSNR box':>8} {'PSNR out':>8} {'T-ACC':>6} "
            f"{'T-NED':>6}")
    lines += [head, "-" * len(head)]
    for kind, t in tables.items():
        for key, r in t["rows"].items():
            lines.append(f"{kind + ' (' + str(t['n']) + ')':16} {key:12} {_f(r['psnr'], 2):>6} {_f(r['ssim']):>6} "
                         f"{_f(r.get('psnr_in_box'), 2):>8} {_f(r.get('psnr_out_box'), 2):>8} "
                         f"{_f(r.get('t_acc')):>6} {_f(r.get('t_ned')):>6}")
    lines.append("T-ACC/T-NED: RapidOCR recognition on padded ground-truth box crops vs the ground-truth "
                 "text, case-insensitive (TokBench crop protocol, case-insensitive variant)")
    return "\n".join(lines)


def _model_info(model) -> dict:
    info = {}
    for k in ("family", "image_size", "num_tokens", "token_dim", "codebook_size", "num_classes"):
        v = getattr(model, k, None)
        if isinstance(v, (int, float, str)):
            info[k] = v
    info["parameters_m"] = round(sum(p.numel() for p in model.parameters()) / 1e6, 2)
    return info


def _guidance_options(gen, cfg: Optional[float], guided: bool) -> dict:
    """Sampler options for a run with (``guided``) or without classifier-free guidance."""
    if not guided:
        return settings.unguided(gen)
    return {} if cfg is None else {settings.guidance_key(gen): float(cfg)}


def _effective_cfg(gen, options: dict) -> Optional[float]:
    key = settings.guidance_key(gen)
    return options.get(key, settings.defaults(gen)[key])


def class_words_for(gen) -> Optional[list[str]]:
    names = getattr(gen, "class_names", None)
    if names:
        return [str(n) for n in names]
    if getattr(gen, "num_classes", None) == ts.NUM_CLASSES:
        return list(ts.CLASS_WORDS)
    return None


@torch.no_grad()
def evaluate_generator(gen, tok, *, n_per_class: int = 16, classes: Optional[Sequence[int]] = None,
                       cfg: Optional[float] = None, steps: Optional[int] = None, seed: int = 0,
                       batch_size: int = 64, use_ocr: bool = True, progress: bool = True,
                       reference: bool = True) -> dict:
    """Per-class OCR word rate and within-class diversity, without and with CFG."""
    words = class_words_for(gen)
    if classes is None:
        classes = list(range(gen.num_classes)) if gen.num_classes <= 64 else list(range(10))
    classes = [int(c) for c in classes]
    labels = [c for c in classes for _ in range(n_per_class)]
    res = dict(generator=_model_info(gen), n_per_class=n_per_class, classes=classes,
               class_words=[words[c] for c in classes] if words else None, runs={})
    ocr = ocr_lib if (use_ocr and words) else None
    for guided in (False, True):
        key = "cfg" if guided else "no_cfg"
        options = _guidance_options(gen, cfg, guided)
        if steps is not None:
            options["steps"] = int(steps)
        images, t_gen = [], 0.0
        batches = range(0, len(labels), batch_size)
        for bi, i in enumerate(tqdm(batches, desc=f"generate ({key})", unit="batch", leave=False,
                                    disable=not progress)):
            out = generate(gen, tok, labels[i:i + batch_size], seed=seed * 1000 + bi, **options)
            images.append(out.images.float().cpu())
            t_gen += float(out.timings.get("total_s", 0.0))
        images = torch.cat(images)
        per_class = {}
        texts = ocr.read_strings(images, progress=progress, desc=f"OCR ({key})") if ocr else None
        for c in classes:
            idx = [i for i, lab in enumerate(labels) if lab == c]
            name = words[c] if words else str(c)
            row = dict(diversity=metrics.diversity(images[idx]))
            if texts is not None:
                row["reads_word"] = float(np.mean([ocr.reads_word(texts[i], words[c]) for i in idx]))
                row["examples"] = [texts[i] for i in idx[:4]]
            per_class[name] = row
        run = dict(cfg_scale=_effective_cfg(gen, options), options=options, images=len(labels),
                   generate_s=t_gen, per_class=per_class,
                   diversity=float(np.mean([r["diversity"] for r in per_class.values()])))
        if texts is not None:
            run["reads_word"] = float(np.mean([r["reads_word"] for r in per_class.values()]))
        res["runs"][key] = run
    if reference and words and list(words) in (list(ts.CLASS_WORDS), list(ts2.CLASS_WORDS)):
        res["real"] = _real_reference(tok, classes, n_per_class, seed, ocr, progress,
                                      v2=list(words) == list(ts2.CLASS_WORDS))
    return res


def _real_reference(tok, classes, n_per_class, seed, ocr, progress, v2: bool = False) -> dict:
    """The same figures for real textscenes images of each class (v2: the class mode of the
    training split, the generators' data; v1: the held-out split), at the tokenizer's size."""
    words = ts2.CLASS_WORDS if v2 else ts.CLASS_WORDS
    per_class = {}
    for c in tqdm(classes, desc="real reference", unit="class", leave=False, disable=not progress):
        if v2:
            imgs = [ts2.render_scene(seed, 10_000 + c * n_per_class + j, mode="class", label=c).image
                    for j in range(n_per_class)]
        else:
            imgs = [ts.render_sample(ts.split_seed("heldout", seed), 10_000 + c * n_per_class + j, label=c).image
                    for j in range(n_per_class)]
        x = _resize(ts.to_tensor(np.stack(imgs)), int(tok.image_size))
        row = dict(diversity=metrics.diversity(x))
        if ocr is not None:
            row["reads_word"] = float(np.mean([ocr.reads_word(ocr.read_string(im), words[c]) for im in x]))
        per_class[words[c]] = row
    out = dict(per_class=per_class, diversity=float(np.mean([r["diversity"] for r in per_class.values()])))
    if ocr is not None:
        out["reads_word"] = float(np.mean([r["reads_word"] for r in per_class.values()]))
    return out


def evaluate(tokenizer, generator=None, *, n: int = 200, photos: Optional[int] = None,
             n_per_class: int = 16, classes: Optional[Sequence[int]] = None, cfg: Optional[float] = None,
             steps: Optional[int] = None, seed: int = 0, batch_size: int = 32, use_ocr: bool = True,
             device=None, progress: bool = True, tables: bool = True) -> dict:
    """Load (if given sources) and evaluate; returns the results dict."""
    tok = tokenizer if isinstance(tokenizer, torch.nn.Module) else load_tokenizer(tokenizer, device=device)
    tok.eval()
    t0 = time.perf_counter()
    res = dict(tokenizer_source=str(tokenizer) if not isinstance(tokenizer, torch.nn.Module) else None,
               seed=seed, ocr=bool(use_ocr))
    res.update(evaluate_tokenizer(tok, n, photos, seed=seed, batch_size=batch_size, use_ocr=use_ocr,
                                  progress=progress))
    if tables:
        res["tables"] = evaluate_tables(tok, n, photos, seed=seed, batch_size=batch_size, use_ocr=use_ocr,
                                        progress=progress)
    if generator is not None:
        gen = generator if isinstance(generator, torch.nn.Module) else load_generator(generator, device=device)
        gen.eval()
        res["generator_source"] = str(generator) if not isinstance(generator, torch.nn.Module) else None
        res["generation"] = evaluate_generator(gen, tok, n_per_class=n_per_class, classes=classes,
                                               cfg=cfg, steps=steps, seed=seed, batch_size=max(batch_size, 1),
                                               use_ocr=use_ocr, progress=progress)
    res["elapsed_s"] = time.perf_counter() - t0
    return res


# ------------------------------------------------------------------------------ printing
def _f(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "inf" if isinstance(v, float) and math.isinf(v) else "–"
    return f"{v:.{digits}f}"


def format_table(res: dict) -> str:
    lines = []
    tok = res.get("tokenizer", {})
    lines.append(f"tokenizer {res.get('tokenizer_source') or ''} ({tok.get('family', '?')}, "
                 f"{tok.get('num_tokens', '?')} tokens, {res.get('image_size')} px)")
    if res.get("tables"):
        lines += [format_tables(res["tables"]), "", "whole-image OCR (reconstruction vs input):"]
    head = f"{'set':12} {'n':>5} {'PSNR':>7} {'SSIM':>6} {'T-ACC':>6} {'T-NED':>6} {'word acc':>8} {'input word acc':>14}"
    lines += [head, "-" * len(head)]
    for key in ("textscenes", "photos"):
        r = res.get(key)
        if not r:
            continue
        lines.append(f"{key:12} {r['n']:>5} {_f(r['psnr'], 2):>7} {_f(r['ssim']):>6} {_f(r.get('t_acc')):>6} "
                     f"{_f(r.get('t_ned')):>6} {_f(r.get('word_acc')):>8} {_f(r.get('input_word_acc')):>14}")
    g = res.get("generation")
    if g:
        lines.append("")
        lines.append(f"generator {res.get('generator_source') or ''} ({g['generator'].get('family', '?')}), "
                     f"{g['n_per_class']} images per class")
        names = list(next(iter(g["runs"].values()))["per_class"].keys())
        cols = [(k, r) for k, r in g["runs"].items()]
        head = f"{'class':10}" + "".join(f" {k + ' reads':>13} {k + ' div':>11}" for k, _ in cols)
        if g.get("real"):
            head += f" {'real reads':>10} {'real div':>9}"
        lines += [head, "-" * len(head)]
        for name in names + ["MEAN"]:
            row = f"{name[:10]:10}"
            for _, r in cols:
                src = r if name == "MEAN" else r["per_class"][name]
                row += f" {_f(src.get('reads_word')):>13} {_f(src.get('diversity')):>11}"
            if g.get("real"):
                src = g["real"] if name == "MEAN" else g["real"]["per_class"].get(name, {})
                row += f" {_f(src.get('reads_word')):>10} {_f(src.get('diversity')):>9}"
            lines.append(row)
        lines.append("cfg scales: " + ", ".join(f"{k}={_f(r['cfg_scale'], 2)}" for k, r in cols))
    return "\n".join(lines)


def _parse_classes(text: Optional[str]) -> Optional[list[int]]:
    if not text:
        return None
    out = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        if "-" in part:
            a, b = (int(v) for v in part.split("-", 1))
            out.extend(range(min(a, b), max(a, b) + 1))
        else:
            out.append(int(part))
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m softvq_demo.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--tokenizer", required=True, help="folder, catalogue name or Hub repo id")
    p.add_argument("--generator", help="class-conditional generator (SiT or MaskGIT) to evaluate too")
    p.add_argument("--n", type=int, default=200, help="held-out textscenes images (default 200)")
    p.add_argument("--photos", type=int, default=None, help="photograph crops (default: --n)")
    p.add_argument("--n-per-class", type=int, default=16, help="generated images per class and setting")
    p.add_argument("--classes", help="class ids for the generator, e.g. 0,3,5-7 (default: all, or 0-9)")
    p.add_argument("--cfg", type=float, default=None, help="guidance scale of the 'with CFG' run "
                   "(default: the generator's)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the sampler's)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: CUDA when available)")
    p.add_argument("--no-ocr", action="store_true", help="skip OCR (PSNR/SSIM/diversity only)")
    p.add_argument("--no-tables", action="store_true", help="skip the per-set tables with bicubic baselines")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    for name in ("n", "n_per_class", "batch_size"):
        if getattr(args, name) < (1 if name == "batch_size" else 0):
            p.error(f"--{name.replace('_', '-')} must be {'positive' if name == 'batch_size' else '>= 0'}")
    if args.photos is not None and args.photos < 0:
        p.error("--photos must be >= 0")
    if args.generator and args.n_per_class < 2:
        p.error("--n-per-class must be at least 2 (diversity compares pairs)")
    try:
        res = evaluate(args.tokenizer, args.generator, n=args.n, photos=args.photos,
                       n_per_class=args.n_per_class, classes=_parse_classes(args.classes), cfg=args.cfg,
                       steps=args.steps, seed=args.seed, batch_size=args.batch_size,
                       use_ocr=not args.no_ocr, device=args.device, progress=not args.quiet,
                       tables=not args.no_tables)
    except (ValueError, FileNotFoundError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_table(res))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2, default=str)
        print(f"results -> {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
