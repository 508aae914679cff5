"""Analyses behind the explorer's tabs, usable from a notebook (no gradio here).

- :mod:`.codec`: batched encode / decode / reconstruct (every tab, the evaluation, the benchmarks).
- :mod:`.pictures`: colour maps, overlays, enlargement, grids of maps, tensor → uint8.
- :mod:`.ablation`: per-token ablation, token subsets, swaps, interpolation.
- :mod:`.codebook`: soft posteriors, entropy, effective codewords, codebook usage.
- :mod:`.latent_map`: encode sets of images and project them (PCA / UMAP).
- :mod:`.text_tokens`: which tokens carry text (ablation inside vs outside text boxes, OCR).
- ``ocr`` and ``metrics`` (data helper's): OCR and image metrics.

Submodules are imported lazily so that ``import softvq_demo.analysis.ablation`` stays light.
"""
import importlib

__all__ = ["ablation", "codebook", "codec", "latent_map", "pictures", "text_tokens"]


def __getattr__(name):
    if name in ("ablation", "codebook", "codec", "latent_map", "pictures", "text_tokens", "ocr", "metrics"):
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(name)
