"""Research-scale evaluation: many samples or a whole dataset through the models, sharded over
``torchrun`` processes, written in the formats the field's FID tools read.

- ``sample_set``: N generated images → ADM ``.npz`` (+ PNGs), deterministic per (seed, index).
- ``reconstruct_set``: a folder of images through a tokenizer → reconstructions' and inputs'
  ``.npz``, PSNR / SSIM, OCR text metrics in boxes.
- ``fid``: FID / IS / precision-recall between ``.npz`` files (torch-fidelity).
- ``shards``: the rank split, chunk files, resume and settings shared by the two.

CLI: ``python -m softvq_demo sample | reconstruct-set | fid`` (see docs/reproduce.md).
"""
from .shards import Dist, init_dist

__all__ = ["Dist", "init_dist"]
