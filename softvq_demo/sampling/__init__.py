"""Sampling entry points shared by every generator family.

``sample(gen, labels, ...)`` runs the generator's own sampler and returns generator-space tokens
(SiT: normalised latents; MaskGIT: token ids). ``generate(gen, tok, labels, ...)`` adds the
decode and the timings the app shows.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Union

import torch

from ..device import autocast, module_device
from ..models.base import Generator, Tokenizer
from . import compile_cache, policy
from . import flextok_fast
from .flow import PATHS, network_evaluations, sample_flow
from .settings import METHODS, SIT_DEFAULTS, defaults

compile_cache.configure()  # before any torch.compile: kernels persist across processes
flextok_fast.install()  # FlexTok.decode's fast-path hook (the models import no sampler)

Labels = Union[torch.Tensor, Sequence[int], int]
Seed = Union[int, torch.Generator, None]

# The sampler settings of each family (defaults, ranges, choices) are data in .settings;
# ``sit_defaults`` is that module's ``defaults`` under its older name.
sit_defaults = defaults


def check_pair(tokenizer: Tokenizer, generator: Generator) -> None:
    """Raise ValueError saying why a generator cannot produce tokens for this tokenizer."""
    tf, gf = tokenizer.family, generator.family
    if gf == "sit":
        if tokenizer.is_discrete:
            raise ValueError(f"SiT generates continuous latents; {tf} tokenizer is discrete (VQ)")
        if tf == "titok" and not tokenizer.is_vae:
            raise ValueError("SiT generates continuous latents; this TiTok tokenizer is VQ")
    elif gf == "maskgit":
        if not tokenizer.is_discrete:
            raise ValueError(f"MaskGIT generates discrete token ids; the {tf} tokenizer has "
                             "continuous tokens")
        if generator.codebook_size != tokenizer.codebook_size:
            raise ValueError(f"codebook size mismatch: generator predicts {generator.codebook_size} "
                             f"codes, tokenizer has {tokenizer.codebook_size}")
    if generator.num_tokens != tokenizer.num_tokens:
        raise ValueError(f"token count mismatch: generator makes {generator.num_tokens} tokens, "
                         f"tokenizer uses {tokenizer.num_tokens}")
    if gf == "sit" and generator.token_dim != tokenizer.token_dim:
        raise ValueError(f"token dim mismatch: generator makes {generator.token_dim}-dim tokens, "
                         f"tokenizer uses {tokenizer.token_dim}")


def pair_warning(tokenizer: Tokenizer, generator: Generator) -> Optional[str]:
    """A sentence when a catalogue generator is used with a catalogue tokenizer it was not trained on.

    Shapes can match across releases (every SiT-XL over 64×32 tokens fits every 64-token SoftVQ),
    so check_pair cannot catch this; the images would decode but mean little.
    """
    from ..catalogue import find_entry

    gen_name = getattr(generator, "catalogue_name", None)
    tok_name = getattr(tokenizer, "catalogue_name", None)
    entry = find_entry(gen_name) if gen_name else None
    if entry is None or entry.pair is None or tok_name is None or tok_name == entry.pair:
        return None
    return (f"{gen_name} was trained on {entry.pair} latents, not {tok_name}: the shapes fit but "
            f"the decoded images will not be meaningful")


def as_labels(labels: Labels, num_classes: int, device: torch.device) -> torch.Tensor:
    if isinstance(labels, int):
        labels = [labels]
    y = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    if y.numel() == 0:
        raise ValueError("no class labels given")
    bad = [int(v) for v in y if not 0 <= int(v) < num_classes]
    if bad:
        raise ValueError(f"class id(s) {bad[:5]} out of range: this generator has {num_classes} "
                         f"classes (0..{num_classes - 1})")
    return y.to(device)


def make_rng(seed: Seed) -> Optional[torch.Generator]:
    """Seeds become CPU generators so the same seed gives the same images on any device."""
    if seed is None or isinstance(seed, torch.Generator):
        return seed
    return torch.Generator().manual_seed(int(seed))


def sample(generator: Generator, labels: Labels, *, seed: Seed = None,
           noise: Optional[torch.Tensor] = None, progress: Optional[Callable[[int, int], None]] = None,
           fast: Optional[bool] = None, **options) -> torch.Tensor:
    """Run a generator's sampler. SiT options: steps, method (euler|heun|sde), cfg_scale,
    guidance_low, guidance_high, path; MaskGIT options: steps, guidance_scale, guidance_decay,
    randomize_temperature. ``fast=True`` uses ``sampling.fast`` on CUDA (bf16 weights, compiled
    blocks, CUDA graphs); ``fast=False`` runs the reference sampler; ``fast=None`` (default) takes
    the fast path where it pays for itself (``sampling.policy``).

    ``labels`` and ``noise`` may be on any device; the result is on the generator's device."""
    device = module_device(generator)
    y = as_labels(labels, generator.num_classes, device)
    use_fast = policy.choose(generator, device, fast, int(y.shape[0]), options)
    tokens = _sample(generator, y, device, use_fast, seed, noise, progress, options)
    if use_fast:
        policy.mark_warm(generator, policy.run_key(generator, int(y.shape[0]), options))
    return tokens


def _sample(generator, y, device, use_fast, seed, noise, progress, options) -> torch.Tensor:
    rng = make_rng(seed)
    if generator.family == "sit":
        opts = {**sit_defaults(generator), "path": generator.path_type, **options}
        if noise is None:
            shape = (y.shape[0], generator.num_tokens, generator.token_dim)
            noise = torch.randn(shape, generator=rng, device=rng.device if rng else device)
        noise = noise.to(device)
        if use_fast:
            from .fast import sample_sit_fast
            return sample_sit_fast(generator, noise, y, null_class=generator.null_class, rng=rng,
                                   progress=progress, **opts)
        with autocast(device):
            x = sample_flow(generator, noise, y, null_class=generator.null_class, rng=rng,
                            progress=progress, **opts)
        return x.to(torch.float32)
    if generator.family == "maskgit":
        if use_fast:
            from .fast import sample_maskgit_fast
            return sample_maskgit_fast(generator, y, seed=rng, progress=progress, **options)
        from .maskgit import sample_maskgit
        return sample_maskgit(generator, y, seed=rng, progress=progress, **options)
    raise ValueError(f"no sampler for generator family {generator.family!r}")


@dataclass
class Generation:
    images: torch.Tensor                 # B×3×H×W in [-1, 1]
    tokens: torch.Tensor                 # generator-space tokens (normalised latents or ids)
    labels: torch.Tensor
    timings: dict = field(default_factory=dict)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def generate(generator: Generator, tokenizer: Tokenizer, labels: Labels, *, seed: Seed = None,
             noise: Optional[torch.Tensor] = None,
             progress: Optional[Callable[[int, int], None]] = None, fast: Optional[bool] = None,
             **options) -> Generation:
    """Sample tokens and decode them to images, timing both on the device they ran on.

    ``labels``, ``noise`` (SiT) may live on any device. ``images`` come back on the tokenizer's
    device, ``tokens`` and ``labels`` on the generator's."""
    check_pair(tokenizer, generator)
    device = module_device(generator)
    y = as_labels(labels, generator.num_classes, device)
    # decided once for the sampler and the decode (fast=None: where it pays, sampling.policy)
    use_fast = policy.choose(generator, device, fast, int(y.shape[0]), options, tokenizer=tokenizer)
    _sync(device)
    start = time.perf_counter()
    tokens = sample(generator, y, seed=seed, noise=noise, progress=progress, fast=use_fast, **options)
    _sync(device)
    mid = time.perf_counter()
    tok_device = module_device(tokenizer)
    from .fast import fast_tokenizer
    decoder = fast_tokenizer(tokenizer) if use_fast and tok_device.type == "cuda" else tokenizer
    with autocast(tok_device):
        if generator.family == "sit":
            images = decoder.decode(tokenizer.denormalize(tokens.to(tok_device)))
        else:
            images = decoder.decode(tokens.to(tok_device))
    images = images.float().clamp(-1, 1)
    _sync(tok_device)
    end = time.perf_counter()
    steps = options.get("steps") or defaults(generator)["steps"]
    n = int(y.shape[0])
    timings = dict(generator_s=mid - start, decode_s=end - mid, total_s=end - start,
                   images_per_s=n / max(end - start, 1e-9), ms_per_step=1000 * (mid - start) / max(steps, 1),
                   steps=steps, batch=n, device=str(device), fast=use_fast)
    if generator.family == "sit":
        opts = {**sit_defaults(generator), **options}
        timings["network_evals"] = network_evaluations(opts["steps"], opts["method"], opts["cfg_scale"],
                                                       opts["guidance_low"], opts["guidance_high"])
    return Generation(images=images, tokens=tokens, labels=y, timings=timings)


__all__ = ["sample", "generate", "check_pair", "pair_warning", "Generation", "METHODS", "PATHS", "SIT_DEFAULTS",
           "sit_defaults"]
