"""Inference fast path: bf16 weights, compiled blocks, CUDA graphs, no host syncs in the loop.

``sample()`` / ``generate()`` (``softvq_demo.sampling``) use this on CUDA; everything here also
runs eagerly on the CPU (float32, no compile, no graphs), which is how the tests check it.

SiT (flow matching)
    ``SiTFast(gen)`` holds a bf16 copy of the generator's weights in a functional layout and the
    compiled pieces of its forward (embedding, one transformer block reused by all 28 layers,
    final layer fused with the CFG combination and the sampler update). ``sample_sit_fast``
    runs Euler and SDE sampling as CUDA-graph replays, one graph per kind of step (guided or
    not); the step index, time, update coefficients and SDE noise live on the device, so the
    host only launches replays and never waits on the GPU. The sampler state is float32 (the
    reference ``sample_flow`` keeps float64; the difference is far below bf16 rounding).
    What differs from a plain bf16 forward, all exact rewrites:
    - the conditional and unconditional halves run as one batch of 2B rows (as ``sample_flow``);
    - the adaLN modulation depends only on (t, y), both known before sampling starts. When the
      table fits (``table_limit``: 256 MiB, or a tenth of the GPU's memory: B=64 × 250 steps
      fits on an 80 GB GPU) the modulations of every step and row are computed up front,
      instead of reading the 28 adaLN weight matrices (a third of SiT-XL's weights) once per
      step. Larger batches compute them per step, as one product for all layers;
    - each compiled block ends with the NEXT block's modulated LayerNorm (``_sit_block``), so the
      last residual add and that LayerNorm share one pass over the float32 residual stream;
    - attention runs through the kernel that ``pick_attention`` timed fastest (as graph
      replays) for the model's token count and head size on this GPU: flash, memory-efficient,
      cuDNN, or ``kernels.short_attention`` (Triton, sequences up to 128 tokens, reading q, k, v
      straight from the qkv product);
    - each residual add + LayerNorm + modulation is one Triton pass (``kernels.residual_norm``)
      where its check against PyTorch passes (then the block is not torch.compiled: nothing of
      it is left for Inductor); otherwise the compiled expressions;
    - at few token rows (batch 1: ≤ 128) a product feeding that pass (fc2; proj where it pays)
      may run split over its reduction as one batched cuBLAS call of float32 partial sums,
      which the pass adds with the bias (``kernels.pick_split`` times it per shape first): the
      product is then never rounded to bf16.
    Not an exact rewrite: with bf16 weights (CUDA) the residual stream is *stored* in bf16 (its
    adds and LayerNorms in float32); ``SOFTVQ_RESIDUAL=fp32`` stores it in float32. Agreement
    with float32 for both is in docs/benchmarks.md (H200, 2026-12-02).
    Heun (two evaluations per step) goes through ``FastVelocity``, a graph-captured drop-in for
    ``gen(x, t, y)`` that ``sample_flow`` accepts in place of the model.

Tokenizers
    ``fast_tokenizer(tok)`` gives an object with ``encode``/``decode`` that runs a bf16 copy of the
    tokenizer (quantizers kept in float32 with autocast off: SoftVQ's temperature 0.07 and TiTok's
    nearest-codeword search are sensitive), transformer blocks compiled, small batches as CUDA
    graphs, convolutions channels-last.

MaskGIT
    ``sample_maskgit_fast`` reproduces ``sampling.maskgit.sample_maskgit`` step for step with the
    same random draws (drawn up front in the same order), a bf16 compiled copy of the network,
    and every step as a graph replay without host syncs.

Modules, by subject: ``runtime`` (switches, compile, CUDA graphs, attention-kernel pick,
low-precision copies, per-model caches), ``kernels`` (Triton kernels behind custom ops), ``sit``,
``tokenizers``, ``maskgit``. The models are
reached through small documented hooks (``SiT.functional_weights``,
``Tokenizer.latents_from_indices``, MaskGIT's ``body``), not through their submodules.

Switches: ``SOFTVQ_FAST=0`` turns the fast path off in ``sample``/``generate``;
``SOFTVQ_COMPILE=0`` keeps it but skips ``torch.compile``; ``SOFTVQ_CUDA_GRAPHS=0`` skips graphs;
``SOFTVQ_RESIDUAL=fp32|bf16`` the residual stream's storage; ``SOFTVQ_FUSED_NORM=0`` the Inductor
LayerNorm passes instead of the Triton one; ``SOFTVQ_ATTENTION=...`` forces an attention kernel;
``SOFTVQ_SKINNY=1`` lets ``kernels.pick_linear`` time skinny GEMMs for batch 1; ``SOFTVQ_SPLITK=0``
keeps batch-1 products whole.
"""
from .maskgit import sample_maskgit_fast
from .runtime import (ATTENTION_PICKS, compile_enabled, fast_enabled, graphs_enabled, low_precision_copy,
                      pick_attention, release)
from .sit import FastVelocity, SiTFast, fast_velocity, sample_sit_fast, sit_fast
from .tokenizers import FastTokenizer, fast_tokenizer

__all__ = ["release", "SiTFast", "sit_fast", "sample_sit_fast", "FastVelocity", "fast_velocity",
           "FastTokenizer", "fast_tokenizer", "low_precision_copy", "sample_maskgit_fast",
           "fast_enabled", "compile_enabled", "graphs_enabled", "pick_attention", "ATTENTION_PICKS"]
