"""What every tokenizer and generator in this package exposes.

Tokenizers (SoftVQ-VAE, TiTok) take images B×3×H×W in [-1, 1] and give B×N×D latents; generators
(SiT, MaskGIT) produce what a tokenizer decodes. The app, the CLI and the analysis code talk to
models only through these attributes and methods, so a new family plugs in by subclassing.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import nn

from ..device import module_device


def int_in_range(name: str, value: Any, lo: int, hi: int) -> int:
    """A config integer within sane bounds, checked before anything is allocated (memory bombs)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if not lo <= int(value) <= hi:
        raise ValueError(f"{name} = {value} is out of the sane range {lo}..{hi}")
    return int(value)


def on_model_device(method: Callable) -> Callable:
    """Move a method's tensor arguments to its module's device first (a no-op when already there).

    Every Tokenizer ``encode`` / ``decode`` / ``decode_tokens`` and Generator ``forward`` gets this
    automatically (``__init_subclass__``); new families get it by subclassing. Results come back
    on the model's device."""
    if getattr(method, "_on_model_device", False):
        return method

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        dev = module_device(self)
        args = tuple(a.to(dev) if isinstance(a, torch.Tensor) and a.device != dev else a for a in args)
        kwargs = {k: v.to(dev) if isinstance(v, torch.Tensor) and v.device != dev else v
                  for k, v in kwargs.items()}
        return method(self, *args, **kwargs)

    wrapper._on_model_device = True
    return wrapper


def _wrap_device_methods(cls: type, names: tuple[str, ...]) -> None:
    for name in names:
        if name in cls.__dict__ and callable(cls.__dict__[name]):
            setattr(cls, name, on_model_device(cls.__dict__[name]))


@dataclass
class Encoded:
    """Output of ``Tokenizer.encode``.

    latents: B×N×D floats, what ``decode`` and (after ``normalize``) a generator consume.
    probs:   B×N×V soft posteriors over each token's codebook (SoftVQ only).
    indices: B×N int64 codeword ids in token order (argmax of ``probs`` for SoftVQ, the nearest
             codeword for TiTok VQ); None for quantizer-free (VAE) models.
    extras:  family-specific tensors (pre-quantization features, posterior log-variance, ...).
    """

    latents: torch.Tensor
    probs: Optional[torch.Tensor] = None
    indices: Optional[torch.Tensor] = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


class Tokenizer(nn.Module):
    """Base class of 1D image tokenizers."""

    family: str = "tokenizer"  # "softvq" | "titok"
    # State-dict prefixes that exist in released checkpoints but are unused at inference.
    training_only_prefixes: tuple[str, ...] = ()
    # Buffers that official checkpoints may or may not carry (e.g. usage counters).
    optional_keys: tuple[str, ...] = ()

    config: dict[str, Any]
    image_size: int
    num_tokens: int
    token_dim: int
    codebook_size: Optional[int] = None  # None for continuous (VAE) tokenizers
    num_codebooks: int = 1

    # Ordered 1D tokenizers (One-D-Piece, FlexTok) decode any prefix ``latents[:, :k]``; the
    # others need all ``num_tokens`` tokens and ``decode`` refuses fewer (``check_token_count``).
    prefix_decodable: bool = False

    # Inputs on any device are moved to the model's; results come back on the model's device.
    device_methods: tuple[str, ...] = ("encode", "decode", "decode_tokens")

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _wrap_device_methods(cls, cls.device_methods)

    def check_token_count(self, k: int) -> None:
        """Raise a ValueError unless ``decode`` can take ``k`` tokens (1 ≤ k ≤ N for prefix models)."""
        if k == self.num_tokens:
            return
        if not self.prefix_decodable:
            raise ValueError(f"this {self.family} tokenizer cannot decode fewer tokens than it was "
                             f"built for: it needs all {self.num_tokens}, got {k}")
        if not 1 <= k <= self.num_tokens:
            raise ValueError(f"a prefix of 1..{self.num_tokens} tokens decodes, got {k}")

    def latents_from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Codeword ids B×N → the latents ``decode`` takes (B×N×D); tokenizers with a codebook
        override this (``decode`` also accepts the ids directly)."""
        raise ValueError(f"this {self.family} tokenizer has no codebook: decode float latents")

    def encode(self, images: torch.Tensor) -> Encoded:  # pragma: no cover - abstract
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    # Generators work on normalised latents; identity unless the config says otherwise.
    latent_mean: float = 0.0
    latent_std: float = 1.0

    def normalize(self, latents: torch.Tensor) -> torch.Tensor:
        return (latents - self.latent_mean) / self.latent_std

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.latent_std + self.latent_mean

    @property
    def is_discrete(self) -> bool:
        return self.family == "titok" and self.codebook_size is not None and not self.is_vae

    @property
    def is_vae(self) -> bool:
        return False

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(images).latents)

    def describe(self) -> str:
        kind = f"{self.num_codebooks}×{self.codebook_size} codewords" if self.codebook_size else "continuous"
        return (f"{self.family} · {self.image_size}px · {self.num_tokens} tokens × {self.token_dim} dims · "
                f"{kind}")


class Generator(nn.Module):
    """Base class of class-conditional generators over 1D tokens."""

    family: str = "generator"  # "sit" | "maskgit"
    training_only_prefixes: tuple[str, ...] = ()
    optional_keys: tuple[str, ...] = ()

    config: dict[str, Any]
    num_tokens: int
    num_classes: int
    token_dim: Optional[int] = None      # SiT: latent channels it models
    codebook_size: Optional[int] = None  # MaskGIT: vocabulary of image tokens
    class_names: Optional[list[str]] = None

    # ``gen(x, t, y)`` / ``gen(ids, labels)`` take inputs on any device; outputs on the model's.
    device_methods: tuple[str, ...] = ("forward",)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _wrap_device_methods(cls, cls.device_methods)

    def describe(self) -> str:
        what = f"{self.token_dim} dims" if self.token_dim else f"{self.codebook_size} codes"
        return f"{self.family} · {self.num_tokens} tokens × {what} · {self.num_classes} classes"
