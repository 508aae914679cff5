"""Image sets the app analyses: the bundled examples, the held-out textscenes split, uploads."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ..cancel import raise_if_cancelled
from ..data.textscenes import TextScenes
from .common import list_examples
from .inputs import InputError, file_paths, load_batch, model_image

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


def textscenes(size: int, count: int, split: str = "heldout", seed: int = 0,
               with_masks: bool = False) -> ImageSet:
    """``count`` held-out textscenes images rendered at ``size`` (deterministic), with their class
    words, texts and ground-truth text masks."""
    count = int(count)
    if count < 1:
        raise InputError("ask for at least one textscenes image")
    ds = TextScenes(split=split, size=count, image_size=size, seed=seed)
    samples = [ds.sample(i) for i in range(len(ds))]
    masks = torch.stack([torch.from_numpy(s.mask) for s in samples]) if with_masks else None
    return ImageSet(torch.stack([s.tensor() for s in samples]),
                    [f"#{i} {s.text}" for i, s in enumerate(samples)], [s.word for s in samples],
                    masks, note=f"{len(samples)} held-out textscenes images")


def get(source: str, size: int, count: int = 64, files=None, with_masks: bool = False) -> ImageSet:
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
    index = int(index)
    if source == "examples":
        paths = list_examples()[:count]
        if not 0 <= index < len(paths):
            raise InputError(f"image index {index} out of range")
        stem = Path(paths[index]).stem
        return ImageSet(model_image(paths[index], size)[0], [stem], [stem.split("_")[0]])
    if source == "textscenes":
        if not 0 <= index < int(count):
            raise InputError(f"image index {index} out of range")
        sample = TextScenes(split="heldout", size=int(count), image_size=size, seed=0).sample(index)
        return ImageSet(sample.tensor()[None], [f"#{index} {sample.text}"], [sample.word])
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
