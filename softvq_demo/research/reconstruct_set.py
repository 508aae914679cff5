"""A folder of images through a tokenizer, sharded like ``sample``: the reconstructions' ``.npz``,
the preprocessed inputs' ``.npz`` (the reference batch for rFID), PSNR / SSIM, and OCR text
metrics (T-ACC / T-NED, TokBench) inside boxes where a boxes file gives them.

    python -m softvq_demo reconstruct-set /data/imagenet/val --tokenizer softvq-l-64 --out runs/rl64
    torchrun --nproc_per_node=8 -m softvq_demo reconstruct-set /data/imagenet/val ...

Images are found recursively (ImageNet-val's flat folder or one folder per class both work) and
ordered by their relative path, which is their global index. Preprocessing is ADM's
``center_crop_arr`` (box-downsample by 2 while the short side is at least twice the size, bicubic
to the size, centre crop), which the SoftVQ and TiTok evaluation scripts use for ImageNet.

Boxes file (JSON): ``{"relative/path.jpg": [[x0, y0, x1, y1], ...], ...}`` in the original image's
pixels; each box is mapped through the crop, and the OCR of the reconstruction's box is compared
with the OCR of the input's box (pairs whose input box reads empty are skipped, as TokBench).
"""
from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..analysis import metrics, ocr
from ..data.images import load_image
from ..device import autocast, module_device
from ..sampling.fast import fast_enabled, fast_tokenizer
from .sample_set import _all_reduce, to_uint8_nhwc
from .shards import (Dist, check_settings, chunks, join_shards, my_chunks, shard_path, write_npz,
                     write_settings)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def list_images(folder) -> list[str]:
    """Image files under ``folder`` as sorted relative POSIX paths."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    return files


def center_crop_arr(img: Image.Image, size: int) -> tuple[np.ndarray, tuple[float, float, float]]:
    """ADM's preprocessing → (size×size×3 uint8, (scale, left, top)) where a point (x, y) of the
    original lands at (x·scale − left, y·scale − top)."""
    w0 = img.size[0]
    while min(img.size) >= 2 * size:
        img = img.resize(tuple(x // 2 for x in img.size), resample=Image.BOX)
    scale = size / min(img.size)
    img = img.resize(tuple(round(x * scale) for x in img.size), resample=Image.BICUBIC)
    arr = np.asarray(img.convert("RGB"))
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return arr[top:top + size, left:left + size].copy(), (img.size[0] / w0, float(left), float(top))


def map_box(box, transform, size: int) -> Optional[tuple[int, int, int, int]]:
    """A box of the original image in the model input's pixels (None if it falls outside)."""
    scale, left, top = transform
    x0, y0, x1, y1 = (float(v) for v in box)
    x0, x1 = sorted((x0 * scale - left, x1 * scale - left))
    y0, y1 = sorted((y0 * scale - top, y1 * scale - top))
    x0, y0 = max(0, int(np.floor(x0))), max(0, int(np.floor(y0)))
    x1, y1 = min(size, int(np.ceil(x1))), min(size, int(np.ceil(y1)))
    return (x0, y0, x1, y1) if x1 - x0 >= 2 and y1 - y0 >= 2 else None


def read_boxes(path) -> dict[str, list]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"--boxes {path}: not a readable JSON file ({type(err).__name__})")
    if not isinstance(data, dict) or not all(
            isinstance(v, list) and all(isinstance(b, (list, tuple)) and len(b) == 4 for b in v)
            for v in data.values()):
        raise ValueError("--boxes must map image paths to lists of [x0, y0, x1, y1] boxes")
    return data


def _reconstruct(tok, x: torch.Tensor, fast: Optional[bool]) -> torch.Tensor:
    device = module_device(tok)
    model = fast_tokenizer(tok) if fast_enabled(device, fast) else tok
    with torch.no_grad(), autocast(device):
        return model.decode(model.encode(x.to(device)).latents).float().clamp(-1, 1)


def reconstruct_set(tokenizer, folder, out, *, dist: Dist, batch_size: int = 64,
                    boxes: Optional[str] = None, fast: Optional[bool] = None,
                    sources: Optional[dict] = None, progress: bool = True, workers: int = 8) -> dict:
    """This rank's share of the folder; rank 0 joins the chunks and the metrics. ``workers``
    threads decode and crop the images (JPEG decoding, not the GPU, sets the pace otherwise)."""
    files = list_images(folder)
    box_map = read_boxes(boxes) if boxes else {}
    unknown = sorted(set(box_map) - set(files))
    if unknown:
        raise ValueError(f"--boxes names {len(unknown)} file(s) not in the folder, e.g. {unknown[0]}")
    out = Path(out)
    size = int(tokenizer.image_size)
    n = len(files)
    plan = chunks(n, batch_size)
    identity = dict(kind="reconstruct-set", sources=sources or {}, folder=str(Path(folder).resolve()),
                    n=n, batch_size=batch_size, image_size=size, boxes=bool(box_map),
                    fast=fast_enabled(dist.device, fast))
    check_settings(out, identity)
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_settings(out, identity, status="running")
        (out / "files.txt").write_text("\n".join(files) + "\n")
    todo = list(my_chunks(plan, dist, out))
    bar = tqdm(total=sum(b - a for a, b in todo), unit="img", disable=not (progress and dist.is_main),
               desc="reconstruct-set")
    busy = 0.0
    pool = ThreadPoolExecutor(max_workers=max(1, workers))

    def prepare(i: int):
        return center_crop_arr(load_image(Path(folder) / files[i]), size)

    for start, stop in todo:
        crops = list(pool.map(prepare, range(start, stop)))
        inputs = np.stack([c[0] for c in crops])
        x = torch.from_numpy(inputs).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
        t0 = time.perf_counter()
        y = _reconstruct(tokenizer, x, fast)
        if tuple(y.shape[1:]) != (3, size, size):
            raise ValueError(f"the tokenizer decodes to shape {tuple(y.shape[1:])}, not images 3×{size}×{size}")
        recon = to_uint8_nhwc(y)
        busy += time.perf_counter() - t0
        box_index, box_ref, box_pred = [], [], []
        for k, i in enumerate(range(start, stop)):
            for box in box_map.get(files[i], []):
                b = map_box(box, crops[k][1], size)
                if b is None:
                    continue
                x0, y0, x1, y1 = b
                box_index.append(i)
                box_ref.append(ocr.read_string(inputs[k, y0:y1, x0:x1]))
                box_pred.append(ocr.read_string(recon[k, y0:y1, x0:x1]))
        write_npz(shard_path(out, start, stop), images=recon, inputs=inputs,
                  psnr=metrics.psnr(recon, inputs, reduction="none").numpy(),
                  ssim=metrics.ssim(recon, inputs, reduction="none").numpy(),
                  box_index=np.array(box_index, dtype=np.int64), box_ref=np.array(box_ref, dtype=str),
                  box_pred=np.array(box_pred, dtype=str))
        bar.update(stop - start)
    bar.close()
    pool.shutdown()
    done = sum(b - a for a, b in todo)
    (done_all,) = _all_reduce(dist, [float(done)], "sum")
    (busy_max,) = _all_reduce(dist, [busy], "max")
    dist.barrier()
    summary = dict(n=n, images_this_run=int(done_all), world_size=dist.world_size, device=str(dist.device),
                   model_seconds=busy_max, images_per_s=done_all / busy_max if busy_max else None)
    if dist.is_main:
        a = join_shards(out, plan, ("images", "inputs", "psnr", "ssim", "box_ref", "box_pred"))
        finite = a["psnr"][np.isfinite(a["psnr"])]
        summary.update(psnr=float(finite.mean()) if finite.size else float("inf"),
                       ssim=float(a["ssim"].mean()))
        if box_map:
            m = ocr.text_metrics(list(a["box_pred"]), list(a["box_ref"]))
            summary.update(t_acc=m["t_acc"], t_ned=m["t_ned"], box_pairs=m["n"],
                           boxes_without_text=m["n_skipped"])
        name = f"{n}x{size}x{size}x3.npz"
        summary["npz"] = str(write_npz(out / f"reconstructions_{name}", arr_0=a["images"]))
        summary["inputs_npz"] = str(write_npz(out / f"inputs_{name}", arr_0=a["inputs"]))
        write_settings(out, identity, status="done", summary=summary)
    return summary
