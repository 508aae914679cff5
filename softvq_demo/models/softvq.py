"""SoftVQ-VAE (arXiv 2412.10958): ViT encoder -> N soft-quantized 1D tokens -> ViT decoder.

Parameter names follow the official checkpoints (``SoftVQVAE/*`` on the Hub): the encoder and
decoder are timm VisionTransformers created by name, so timm supplies every block and the keys
match. Each token is a softmax-weighted sum of its group's codewords, so the tokens stay
continuous while the posterior over codewords is there to inspect.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import timm
import torch
import torch.nn.functional as F
from torch import nn

from .base import Encoded, Tokenizer
from .registry import Family, register_family


def create_vit(name: str, image_size: int, patch_size: int, overrides: Optional[dict] = None,
               drop_path_rate: float = 0.0) -> nn.Module:
    """A timm ViT by name, with no classifier head and no pretrained download."""
    kwargs = dict(pretrained=False, img_size=image_size, patch_size=patch_size, num_classes=0,
                  drop_path_rate=drop_path_rate)
    kwargs.update(overrides or {})
    return timm.create_model(name, **kwargs)


class ViTEncoder(nn.Module):
    """Patches plus N learned latent tokens through a ViT; the latent positions are the output."""

    def __init__(self, model_name: str, image_size: int, patch_size: int, num_latent_tokens: int,
                 overrides: Optional[dict] = None, drop_path_rate: float = 0.0):
        super().__init__()
        self.model = create_vit(model_name, image_size, patch_size, overrides, drop_path_rate)
        width = self.model.embed_dim
        self.num_latent_tokens = num_latent_tokens
        self.latent_tokens = nn.Parameter(torch.zeros(1, num_latent_tokens, width))
        self.latent_pos_embed = nn.Parameter(torch.zeros(1, num_latent_tokens, width))
        nn.init.trunc_normal_(self.latent_tokens, std=0.02)
        nn.init.trunc_normal_(self.latent_pos_embed, std=0.02)

    @property
    def width(self) -> int:
        return self.model.embed_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        vit = self.model
        x = vit.patch_embed(images)
        x = vit._pos_embed(x)  # class token + learned positions, exactly as timm does it
        latents = (self.latent_tokens + self.latent_pos_embed).expand(x.shape[0], -1, -1)
        x = torch.cat([x, latents.to(x.dtype)], dim=1)
        x = vit.norm_pre(x)
        x = vit.blocks(x)
        x = vit.norm(x)
        return x[:, -self.num_latent_tokens:]


class ViTDecoder(nn.Module):
    """Mask tokens for every patch plus the N latent tokens through a ViT; patches -> pixels."""

    def __init__(self, model_name: str, image_size: int, patch_size: int, num_latent_tokens: int,
                 overrides: Optional[dict] = None, drop_path_rate: float = 0.0,
                 to_pixel: str = "linear", cls_token: bool = True):
        super().__init__()
        if to_pixel != "linear":
            raise ValueError(f"to_pixel={to_pixel!r} is not supported (released models use 'linear')")
        overrides = dict(overrides or {})
        overrides.setdefault("class_token", cls_token)
        self.model = create_vit(model_name, image_size, patch_size, overrides, drop_path_rate)
        width = self.model.embed_dim
        self.patch_size = patch_size
        self.num_latent_tokens = num_latent_tokens
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.latent_pos_embed = nn.Parameter(torch.zeros(1, num_latent_tokens, width))
        self.to_pixel = nn.Module()
        self.to_pixel.model = nn.Linear(width, 3 * patch_size * patch_size)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.latent_pos_embed, std=0.02)

    @property
    def width(self) -> int:
        return self.model.embed_dim

    def forward(self, tokens: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        vit = self.model
        h, w = image_size[0] // self.patch_size, image_size[1] // self.patch_size
        b = tokens.shape[0]
        x = self.mask_token.expand(b, h * w, -1).to(tokens.dtype)
        x = vit._pos_embed(x.reshape(b, h, w, -1) if getattr(vit, "dynamic_img_size", False) else x)
        prefix = x.shape[1] - h * w  # class (and register) tokens in front
        x = torch.cat([x, tokens + self.latent_pos_embed.to(tokens.dtype)], dim=1)
        x = vit.norm_pre(x)
        x = vit.blocks(x)
        x = vit.norm(x)
        x = x[:, prefix:prefix + h * w]
        x = self.to_pixel.model(x)  # B × hw × (p·p·3), indexed [py, px, c]
        p = self.patch_size
        x = x.reshape(b, h, w, p, p, 3).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(b, 3, h * p, w * p)


class SoftVectorQuantizer(nn.Module):
    """K codebooks of V codewords; token n uses codebook n // (N/K).

    The quantized token is the posterior-weighted sum of codewords, softmax(token·codeword / tau).
    """

    def __init__(self, num_codebooks: int, codebook_size: int, dim: int, tau: float,
                 l2_norm: bool, show_usage: bool):
        super().__init__()
        self.num_codebooks = num_codebooks
        self.codebook_size = codebook_size
        self.tau = tau
        self.l2_norm = l2_norm
        self.embedding = nn.Parameter(torch.empty(num_codebooks, codebook_size, dim))
        nn.init.normal_(self.embedding, std=1.0 / math.sqrt(dim))
        if show_usage:  # usage counters of the official training code; unused at inference
            self.register_buffer("codebook_used", torch.zeros(num_codebooks, 65536))

    def codewords(self) -> torch.Tensor:
        return F.normalize(self.embedding, dim=-1) if self.l2_norm else self.embedding

    def group(self, z: torch.Tensor) -> torch.Tensor:
        b, n, d = z.shape
        if n % self.num_codebooks:
            raise ValueError(f"{n} tokens cannot be split into {self.num_codebooks} codebook groups")
        return z.reshape(b, self.num_codebooks, n // self.num_codebooks, d)

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """B×N×V logits (before the temperature) of every token against its codebook."""
        zg = self.group(F.normalize(z, dim=-1) if self.l2_norm else z)
        logits = torch.einsum("bkgd,kvd->bkgv", zg, self.codewords().to(zg.dtype))
        return logits.reshape(z.shape[0], z.shape[1], self.codebook_size)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probs = torch.softmax(self.logits(z).float() / self.tau, dim=-1).to(z.dtype)
        return self.mix(probs), probs

    def mix(self, probs: torch.Tensor) -> torch.Tensor:
        """Quantized tokens from posteriors B×N×V (one-hot posteriors give hard codewords)."""
        pg = self.group(probs)
        zq = torch.einsum("bkgv,kvd->bkgd", pg, self.codewords().to(probs.dtype))
        return zq.reshape(probs.shape[0], probs.shape[1], -1)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        onehot = F.one_hot(indices.long(), self.codebook_size).to(self.embedding.dtype)
        return self.mix(onehot)


class SoftVQModel(Tokenizer):
    family = "softvq"
    training_only_prefixes = ("repa_model.", "projection.")
    optional_keys = ("quantize.codebook_used",)

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        self.config = dict(config)
        c = self.config
        self.image_size = int(c["image_size"])
        self.num_tokens = int(c["num_latent_tokens"])
        self.token_dim = int(c["codebook_embed_dim"])
        self.codebook_size = int(c["codebook_size"])
        self.num_codebooks = int(c.get("num_codebooks", 1))
        self.latent_mean = float(c.get("vq_mean", 0.0))
        self.latent_std = float(c.get("vq_std", 1.0))
        if c.get("use_rope", False):
            raise ValueError("use_rope=true is not supported (no released model uses it)")
        self.encoder = ViTEncoder(c["encoder_model"], self.image_size, int(c.get("enc_patch_size", 16)),
                                  self.num_tokens, c.get("enc_model_kwargs"),
                                  float(c.get("enc_drop_path_rate", 0.0)))
        self.decoder = ViTDecoder(c["decoder_model"], self.image_size, int(c.get("dec_patch_size", 16)),
                                  self.num_tokens, c.get("dec_model_kwargs"),
                                  float(c.get("dec_drop_path_rate", 0.0)), c.get("to_pixel", "linear"),
                                  bool(c.get("dec_cls_token", True)))
        self.quant_conv = nn.Linear(self.encoder.width, self.token_dim)
        self.quantize = SoftVectorQuantizer(self.num_codebooks, self.codebook_size, self.token_dim,
                                            float(c.get("tau", 0.07)), bool(c.get("codebook_l2_norm", True)),
                                            bool(c.get("codebook_show_usage", False)))
        self.post_quant_conv = nn.Linear(self.token_dim, self.decoder.width)

    @property
    def tau(self) -> float:
        return self.quantize.tau

    def _check_images(self, images: torch.Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images B×3×H×W, got {tuple(images.shape)}")
        if images.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"this tokenizer takes {self.image_size}×{self.image_size} images, "
                             f"got {images.shape[-2]}×{images.shape[-1]}")

    def encode(self, images: torch.Tensor) -> Encoded:
        self._check_images(images)
        features = self.encoder(images)
        z = self.quant_conv(features)
        latents, probs = self.quantize(z)
        return Encoded(latents=latents, probs=probs, indices=probs.argmax(dim=-1),
                       extras={"encoder_out": features, "pre_quant": z})

    def latents_from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Codeword ids → hard codewords (one-hot posteriors)."""
        return self.quantize.lookup(indices.reshape(indices.shape[0], -1))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        if not torch.is_floating_point(latents):  # codeword ids -> hard codewords
            ids = latents.reshape(latents.shape[0], -1)
            self.check_token_count(ids.shape[1])
            latents = self.latents_from_indices(ids)
        if latents.ndim != 3 or latents.shape[2] != self.token_dim or latents.shape[1] > self.num_tokens:
            raise ValueError(f"expected latents B×{self.num_tokens}×{self.token_dim}, "
                             f"got {tuple(latents.shape)}")
        self.check_token_count(latents.shape[1])
        latents = latents.to(self.post_quant_conv.weight.dtype)
        return self.decoder(self.post_quant_conv(latents), (self.image_size, self.image_size))


def _is_softvq(config: dict) -> bool:
    return "encoder_model" in config and "num_latent_tokens" in config and "model" not in config \
        and config.get("enc_type", "vit") == "vit"


def _validate(config: dict) -> None:
    try:
        size, tokens = int(config["image_size"]), int(config["num_latent_tokens"])
        dim, books, book = (int(config["codebook_embed_dim"]), int(config.get("num_codebooks", 1)),
                            int(config["codebook_size"]))
        patches = (int(config.get("enc_patch_size", 16)), int(config.get("dec_patch_size", 16)))
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"SoftVQ config: missing or non-integer field ({err})") from err
    checks = [(16 <= size <= 2048, f"image_size {size}"), (1 <= tokens <= 4096, f"num_latent_tokens {tokens}"),
              (1 <= dim <= 4096, f"codebook_embed_dim {dim}"), (1 <= books <= 64, f"num_codebooks {books}"),
              (2 <= book <= 1 << 20, f"codebook_size {book}"), (tokens % books == 0, "tokens not divisible by codebooks")]
    checks += [(1 <= p <= size and size % p == 0, f"patch size {p} for image {size}") for p in patches]
    for ok, what in checks:
        if not ok:
            raise ValueError(f"SoftVQ config out of range: {what}")
    for key in ("enc_model_kwargs", "dec_model_kwargs"):
        extra = config.get(key) or {}
        if not isinstance(extra, dict):
            raise ValueError(f"{key} must be an object")
        width, depth = int(extra.get("embed_dim", 1024)), int(extra.get("depth", 24))
        if not (1 <= width <= 8192 and 1 <= depth <= 128):
            raise ValueError(f"SoftVQ config out of range: {key} {extra}")


register_family(Family("softvq", "tokenizer", _is_softvq, SoftVQModel, _validate))
