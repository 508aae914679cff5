"""Analyses behind the explorer's tabs, usable from a notebook (no gradio here).

- :mod:`.codec`: batched encode / decode / reconstruct (every tab, the evaluation, the benchmarks).
- :mod:`.pictures`: colour maps, overlays, enlargement, grids of maps, tensor → uint8.
- :mod:`.ablation`: per-token ablation, token subsets, swaps, interpolation.
- :mod:`.codebook`: soft posteriors, entropy, effective codewords, codebook usage.
- :mod:`.latent_map`: encode sets of images and project them (PCA / UMAP).
- :mod:`.text_tokens`: which tokens carry text (ablation inside vs outside text boxes, OCR).
- ``ocr`` and ``metrics`` (data helper's): OCR and image metrics.
- :mod:`.baseline`: the one ablation baseline (per-position train-split mean token) and where it came from.
- :mod:`.tokbench`: TokBench's text protocol (GT-box crops, recognition only, size buckets) and
  the no-ground-truth "OCR vs original" protocol.
- :mod:`.importance`: dataset-level text-token importance with s.e. / bootstrap CI, concentration beside it.
- :mod:`.deletion`: deletion curves (top-k vs random-k vs bottom-k), the faithfulness check.
- :mod:`.prefix`: reconstructions from the first k and the k most important tokens.

Submodules are imported lazily so that ``import softvq_demo.analysis.ablation`` stays light.
"""
import importlib

__all__ = ["ablation", "codebook", "codec", "latent_map", "pictures", "text_tokens",
           "baseline", "tokbench", "importance", "deletion", "prefix"]


def __getattr__(name):
    if name in ("ablation", "codebook", "codec", "latent_map", "pictures", "text_tokens", "ocr", "metrics",
                "baseline", "tokbench", "importance", "deletion", "prefix"):
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(name)
