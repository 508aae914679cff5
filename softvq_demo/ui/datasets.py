"""Image sets the app analyses: the bundled examples, the held-out textscenes split, uploads."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .common import list_examples
from .inputs import InputError, model_image

SOURCES = ("examples", "textscenes", "upload")


@dataclass
class ImageSet:
    images: torch.Tensor                 # M×3×S×S in [-1, 1]
    names: list[str]
    labels: Optional[list[str]] = None   # class per image (for colouring)
    masks: Optional[torch.Tensor] = None  # M×S×S bool text masks (textscenes only)
    note: str = ""


def examples(size: int, limit: int = 256) -> ImageSet:
    paths = list_examples()[:limit]
    if not paths:
        raise InputError("no example images found in assets/examples")
    ims, names = [], []
    for p in paths:
        ims.append(model_image(p, size)[0])
        names.append(Path(p).stem)
    labels = [n.split("_")[0] for n in names]
    return ImageSet(torch.cat(ims), names, labels, note=f"{len(names)} bundled examples")


def _textscenes():
    try:
        from ..data import textscenes as ts
        return ts
    except ImportError as err:
        raise InputError(f"the textscenes dataset module is not available ({err})") from err


def textscenes(size: int, count: int, split: str = "heldout", seed: int = 0,
               with_masks: bool = False) -> ImageSet:
    """``count`` held-out textscenes images rendered at ``size`` (deterministic), with their class
    words, texts and ground-truth text masks."""
    ts = _textscenes()
    count = int(count)
    if count < 1:
        raise InputError("ask for at least one textscenes image")
    ds = ts.TextScenes(split=split, size=count, image_size=size, seed=seed)
    ims, names, labels, masks = [], [], [], []
    for i in range(len(ds)):
        img, label, text, mask = _unpack(ds[i])
        ims.append(_to_tensor(img, size))
        words = getattr(ts, "CLASS_WORDS", None)
        labels.append(words[int(label)] if (words is not None and label is not None) else str(label))
        names.append(f"#{i} {text}" if text else f"#{i}")
        masks.append(_mask_tensor(mask, size) if mask is not None else None)
    m = None
    if with_masks:
        if any(mm is None for mm in masks):
            raise InputError("this textscenes split has no text masks")
        m = torch.stack(masks)
    return ImageSet(torch.cat(ims), names, labels, m,
                    note=f"{len(ims)} held-out textscenes images")


def _accepts(fn, name: str) -> bool:
    import inspect
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _unpack(item):
    """A dataset item (dict / tuple / object) → (image, label, text, mask)."""
    if isinstance(item, dict):
        img = item.get("image", item.get("img"))
        return img, item.get("label", item.get("class")), item.get("text"), item.get("mask",
                                                                                    item.get("text_mask"))
    if isinstance(item, (tuple, list)):
        img = item[0]
        label = item[1] if len(item) > 1 else None
        rest = list(item[2:])
        text = next((r for r in rest if isinstance(r, str)), None)
        mask = next((r for r in rest if isinstance(r, (torch.Tensor, np.ndarray))), None)
        return img, label, text, mask
    return (getattr(item, "image"), getattr(item, "label", None), getattr(item, "text", None),
            getattr(item, "mask", None))


def _to_tensor(img, size: int) -> torch.Tensor:
    import torch.nn.functional as F
    from PIL import Image

    if isinstance(img, Image.Image) or isinstance(img, np.ndarray) and img.dtype == np.uint8:
        return model_image(img if isinstance(img, Image.Image) else Image.fromarray(img), size)[0]
    t = torch.as_tensor(img).float()
    if t.dim() == 3:
        t = t.unsqueeze(0)
    if t.min() >= 0 and t.max() <= 1.0 + 1e-6:
        t = t * 2 - 1
    if t.shape[-1] != size:
        t = F.interpolate(t, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)
    return t


def _mask_tensor(mask, size: int) -> torch.Tensor:
    import torch.nn.functional as F

    m = torch.as_tensor(np.asarray(mask)).float()
    if m.dim() == 3:
        m = m.amax(0)
    if m.shape[-1] != size:
        m = F.interpolate(m[None, None], size=(size, size), mode="nearest")[0, 0]
    return m > 0.5


def get(source: str, size: int, count: int = 64, files=None, with_masks: bool = False) -> ImageSet:
    from .inputs import file_paths, load_batch

    if source == "examples":
        s = examples(size, limit=count)
        if with_masks:
            raise InputError("the bundled examples have no text masks: use textscenes")
        return s
    if source == "textscenes":
        return textscenes(size, count, with_masks=with_masks)
    if source == "upload":
        ims, names, skipped = load_batch(file_paths(files), size)
        note = f"{len(names)} uploaded images" + (f" ({len(skipped)} skipped: "
                                                 + "; ".join(skipped[:3]) + ")" if skipped else "")
        if with_masks:
            raise InputError("uploaded images have no text masks: use textscenes")
        return ImageSet(ims, names, None, note=note)
    raise InputError(f"unknown image set {source!r}: use one of {', '.join(SOURCES)}")


def one(source: str, size: int, count: int, files, index: int) -> ImageSet:
    """Image ``index`` of the set ``get(source, size, count, files)``, without building the rest
    (a latent-map click rebuilt all 2 048 images of the set for one of them). Uploads are read in
    order up to the ``index``-th readable one, as ``get`` numbers them."""
    from ..cancel import raise_if_cancelled
    from .inputs import file_paths

    index = int(index)
    if source == "examples":
        paths = list_examples()[:count]
        if not 0 <= index < len(paths):
            raise InputError(f"image index {index} out of range")
        stem = Path(paths[index]).stem
        return ImageSet(model_image(paths[index], size)[0], [stem], [stem.split("_")[0]])
    if source == "textscenes":
        ts = _textscenes()
        ds = ts.TextScenes(split="heldout", size=int(count), image_size=size, seed=0)
        img, label, text, _ = _unpack(ds[index])
        words = getattr(ts, "CLASS_WORDS", None)
        name = f"#{index} {text}" if text else f"#{index}"
        return ImageSet(_to_tensor(img, size), [name],
                        [words[int(label)] if (words is not None and label is not None) else str(label)])
    if source == "upload":
        readable = -1
        for path in dict.fromkeys(file_paths(files)):
            raise_if_cancelled()
            try:
                image = model_image(path, size)[0]
            except InputError:
                continue
            readable += 1
            if readable == index:
                return ImageSet(image, [Path(path).name])
        raise InputError(f"image index {index} out of range")
    raise InputError(f"unknown image set {source!r}: use one of {', '.join(SOURCES)}")
