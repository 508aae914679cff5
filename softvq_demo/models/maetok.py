"""MAETok (arXiv 2502.03444): a plain continuous autoencoder into N 1D tokens.

Same repository and checkpoint format as SoftVQ-VAE (``MAETok/*`` on the Hub: the flat ``ModelArgs``
config.json + model.safetensors), so this file reuses SoftVQ's timm ViT encoder/decoder and adds
what MAETok's released models use:
- no quantizer: ``latents = quant_conv(encoder(x))`` are the tokens (mask modelling and the
  auxiliary decoders exist in training only);
- learned *mixed 2D RoPE* on the image positions of every attention layer (``use_rope`` +
  ``rope_mixed``): per layer and head a learned pair of x/y frequencies, channels rotated in
  interleaved (real, imag) pairs, on q and k only;
- a MoVQ decoder (``*_movqv2`` names): DINOv2 widths, but LayerNorms without affine whose output at
  the N latent positions is modulated (``h·scale + shift``) by a linear map of the raw latents.

Configs do not name the family (AEModel and SoftVQModel share ``ModelArgs``): a config with RoPE,
a MoVQ decoder, or a checkpoint without ``quantize.`` tensors is MAETok (``claims`` below).
"""
from __future__ import annotations

import copy
from typing import Any, Collection, Optional

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from timm.models.vision_transformer import Attention
from torch import nn

from .base import Encoded, Tokenizer, int_in_range
from .registry import Family, register_family
from .softvq import ViTDecoder, ViTEncoder

MOVQ_SUFFIX = "_movqv2"
LN_EPS = 1e-6


# --------------------------------------------------------------------------- mixed 2D RoPE
def grid_positions(stored_x: torch.Tensor, stored_y: torch.Tensor, grid_h: int, grid_w: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """x/y positions of the row-major patch grid. The checkpoint's ``freqs_t_x/y`` are a cache
    for the base grid; like the official forward, recompute them when the grid differs."""
    n = grid_h * grid_w
    if stored_x.numel() == n and stored_y.numel() == n:
        return stored_x.float(), stored_y.float()
    t = torch.arange(n, device=stored_x.device, dtype=torch.float32)
    return t % grid_w, torch.div(t, grid_w, rounding_mode="floor")


def mixed_rope_angles(freqs: torch.Tensor, t_x: torch.Tensor, t_y: torch.Tensor, heads: int
                      ) -> torch.Tensor:
    """Angles depth×heads×n×(hd/2): θ = t_x·f_x + t_y·f_y, with f = freqs[axis, layer, h·hd/2 + j]."""
    fx, fy = (freqs[a].float().reshape(freqs.shape[1], heads, -1) for a in (0, 1))
    return t_x[None, None, :, None] * fx[:, :, None, :] + t_y[None, None, :, None] * fy[:, :, None, :]


def rotate_pairs(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (2j, 2j+1) of x (B×heads×n×hd) by angles (heads×n×hd/2)."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    re, im = pairs.unbind(-1)
    cos, sin = angles.cos(), angles.sin()
    return torch.stack([re * cos - im * sin, re * sin + im * cos], dim=-1).flatten(-2).to(x.dtype)


def attention(attn: Attention, x: torch.Tensor, angles: Optional[torch.Tensor], start: int,
              count: int) -> torch.Tensor:
    """timm ``Attention`` parameters, with RoPE on q/k of positions [start, start + count)."""
    b, n, c = x.shape
    heads = attn.num_heads
    q, k, v = attn.qkv(x).reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    if angles is not None:
        end = start + count
        q = torch.cat([q[:, :, :start], rotate_pairs(q[:, :, start:end], angles), q[:, :, end:]], 2)
        k = torch.cat([k[:, :, :start], rotate_pairs(k[:, :, start:end], angles), k[:, :, end:]], 2)
    out = F.scaled_dot_product_attention(q, k, v)
    return attn.proj(out.transpose(1, 2).reshape(b, n, c))


def vit_block(block: nn.Module, x: torch.Tensor, angles: Optional[torch.Tensor], start: int,
              count: int) -> torch.Tensor:
    """A timm (DINOv2) pre-norm block with LayerScale, its attention given the RoPE angles."""
    x = x + block.drop_path1(block.ls1(attention(block.attn, block.norm1(x), angles, start, count)))
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))


def modulate_latents(h: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """MoVQ modulation ``h·scale + shift`` (not ``1 + scale``) on the last N (latent) positions."""
    n = shift.shape[1]
    return torch.cat([h[:, :-n], h[:, -n:] * scale + shift], dim=1)


class MoVQBlock(nn.Module):
    """Pre-norm block with affine-free LayerNorms, the latent positions modulated by the latents."""

    def __init__(self, dim: int, heads: int, latent_dim: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS, elementwise_affine=False)
        self.attn = Attention(dim, heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS, elementwise_affine=False)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(latent_dim, 4 * dim))

    def forward(self, x: torch.Tensor, z: torch.Tensor, angles: Optional[torch.Tensor], start: int,
                count: int) -> torch.Tensor:
        shift_a, scale_a, shift_m, scale_m = self.adaLN_modulation(z).chunk(4, dim=-1)
        h = modulate_latents(self.norm1(x), shift_a, scale_a)
        x = x + attention(self.attn, h, angles, start, count)
        return x + self.mlp(modulate_latents(self.norm2(x), shift_m, scale_m))


class MoVQNorm(nn.Module):
    """The MoVQ final norm; its modulation only touches the latent positions, which the decoder
    discards, so it does not change the image (its weights are kept for checkpoint fidelity)."""

    def __init__(self, dim: int, latent_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=LN_EPS, elementwise_affine=False)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(latent_dim, 2 * dim))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(z).chunk(2, dim=-1)
        return modulate_latents(self.norm(x), shift, scale)


def _add_rope(module: nn.Module, depth: int, width: int, heads: int, grid: int) -> None:
    """``freqs`` (learned; read from the checkpoint) and the base-grid position cache."""
    if width % heads or (width // heads) % 4:
        raise ValueError(f"mixed RoPE needs a head width divisible by 4 (width {width}, {heads} heads)")
    module.freqs = nn.Parameter(torch.zeros(2, depth, width // 2))
    t = torch.arange(grid * grid, dtype=torch.float32)
    module.register_buffer("freqs_t_x", t % grid)
    module.register_buffer("freqs_t_y", torch.div(t, grid, rounding_mode="floor"))


# --------------------------------------------------------------------------- encoder / decoder
class RoPEViTEncoder(ViTEncoder):
    """SoftVQ's encoder (class token, absolute positions, N latent queries) with optional RoPE."""

    def __init__(self, model_name: str, image_size: int, patch_size: int, num_latent_tokens: int,
                 overrides: Optional[dict], drop_path_rate: float, use_rope: bool, base_grid: int):
        super().__init__(model_name, image_size, patch_size, num_latent_tokens, overrides,
                         drop_path_rate)
        self.patch_size = patch_size
        self.use_rope = use_rope
        if use_rope:
            _add_rope(self, len(self.model.blocks), self.width, self.model.blocks[0].attn.num_heads,
                      base_grid)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        vit = self.model
        gh, gw = images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size
        x = vit._pos_embed(vit.patch_embed(images))  # absolute positions are added even with RoPE
        latents = (self.latent_tokens + self.latent_pos_embed).expand(x.shape[0], -1, -1)
        x = vit.norm_pre(torch.cat([x, latents.to(x.dtype)], dim=1))
        start = x.shape[1] - self.num_latent_tokens - gh * gw
        angles = None
        if self.use_rope:
            angles = mixed_rope_angles(self.freqs, *grid_positions(self.freqs_t_x, self.freqs_t_y, gh, gw),
                                       vit.blocks[0].attn.num_heads)
        for i, block in enumerate(vit.blocks):
            x = vit_block(block, x, None if angles is None else angles[i], start, gh * gw)
        return vit.norm(x)[:, -self.num_latent_tokens:]


class MAETokDecoder(ViTDecoder):
    """Mask tokens for every patch (+ class token) and the N latents; plain DINOv2 blocks or MoVQ
    blocks modulated by the raw latents; RoPE or absolute positions on the patch positions."""

    def __init__(self, model_name: str, image_size: int, patch_size: int, num_latent_tokens: int,
                 latent_dim: int, overrides: Optional[dict], drop_path_rate: float, to_pixel: str,
                 cls_token: bool, use_ape: bool, use_rope: bool, base_grid: int):
        self.movq = model_name.endswith(MOVQ_SUFFIX)
        base_name = model_name[:-len(MOVQ_SUFFIX)] if self.movq else model_name
        # Built with a class token so the position table has 1 + L rows, as the official one does.
        super().__init__(base_name, image_size, patch_size, num_latent_tokens, overrides,
                         drop_path_rate, to_pixel, cls_token=True)
        vit = self.model
        if not cls_token:
            vit.cls_token = None
        self.use_ape, self.use_rope = use_ape and not use_rope, use_rope
        depth, heads = len(vit.blocks), vit.blocks[0].attn.num_heads
        if self.movq:
            ratio = vit.blocks[0].mlp.fc1.out_features / self.width
            vit.blocks = nn.ModuleList(MoVQBlock(self.width, heads, latent_dim, ratio) for _ in range(depth))
            vit.norm = MoVQNorm(self.width, latent_dim)
        if use_rope:
            _add_rope(self, depth, self.width, heads, base_grid)

    def forward(self, tokens: torch.Tensor, latents: torch.Tensor, image_size: tuple[int, int]
                ) -> torch.Tensor:
        """tokens: post_quant_conv(latents) B×N×D; latents: the raw B×N×d (MoVQ modulation)."""
        vit = self.model
        p = self.patch_size
        gh, gw = image_size[0] // p, image_size[1] // p
        b = tokens.shape[0]
        x = self.mask_token.expand(b, gh * gw, -1).to(tokens.dtype)
        if vit.cls_token is not None:
            x = torch.cat([vit.cls_token.expand(b, -1, -1).to(x.dtype), x], dim=1)
        if self.use_ape:
            x = x + vit.pos_embed.to(x.dtype)
        prefix = x.shape[1] - gh * gw
        x = vit.norm_pre(torch.cat([x, tokens + self.latent_pos_embed.to(tokens.dtype)], dim=1))
        angles = None
        if self.use_rope:
            heads = vit.blocks[0].attn.num_heads
            angles = mixed_rope_angles(self.freqs, *grid_positions(self.freqs_t_x, self.freqs_t_y, gh, gw),
                                       heads)
        for i, block in enumerate(vit.blocks):
            a = None if angles is None else angles[i]
            if self.movq:
                x = block(x, latents, a, prefix, gh * gw)
            else:
                x = vit_block(block, x, a, prefix, gh * gw)
        x = vit.norm(x, latents) if self.movq else vit.norm(x)
        x = self.to_pixel.model(x[:, prefix:prefix + gh * gw])  # B × hw × (p·p·3), [py, px, c]
        x = x.reshape(b, gh, gw, p, p, 3).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(b, 3, gh * p, gw * p)


# --------------------------------------------------------------------------- the tokenizer
class MAETok(Tokenizer):
    family = "maetok"
    # REPA teacher/projection and token-drop mask (training); the paper's auxiliary HOG/DINO/CLIP
    # decoders and teacher, present in later checkpoints and ignored by the official loader too.
    training_only_prefixes = ("repa_model.", "projection.", "encoder.mask_token", "clip_model.",
                              *(f"{part}_{target}." for part in ("decoder", "post_quant_conv", "to_pixel")
                                for target in ("hog", "dino", "clip")))

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        self.config = copy.deepcopy(config)
        c = self.config
        self.image_size = int(c["image_size"])
        self.num_tokens = int(c["num_latent_tokens"])
        self.token_dim = int(c["codebook_embed_dim"])
        self.codebook_size = None  # continuous: there is no quantizer
        self.latent_mean = float(c.get("vq_mean", 0.0))
        self.latent_std = float(c.get("vq_std", 1.0))
        use_rope = bool(c.get("use_rope", False))
        enc_p, dec_p = int(c.get("enc_patch_size", 16)), int(c.get("dec_patch_size", 16))
        base = int(c.get("base_image_size", self.image_size))
        self.encoder = RoPEViTEncoder(c["encoder_model"], self.image_size, enc_p, self.num_tokens,
                                      c.get("enc_model_kwargs"), float(c.get("enc_drop_path_rate", 0.0)),
                                      use_rope, base // enc_p)
        self.quant_conv = nn.Linear(self.encoder.width, self.token_dim)
        self.decoder = MAETokDecoder(c["decoder_model"], self.image_size, dec_p, self.num_tokens,
                                     self.token_dim, c.get("dec_model_kwargs"),
                                     float(c.get("dec_drop_path_rate", 0.0)), c.get("to_pixel", "linear"),
                                     bool(c.get("dec_cls_token", True)), bool(c.get("use_ape", True)),
                                     use_rope, base // dec_p)
        self.post_quant_conv = nn.Linear(self.token_dim, self.decoder.width)

    def encode(self, images: torch.Tensor) -> Encoded:
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != (self.image_size,) * 2:
            raise ValueError(f"MAETok expects images B×3×{self.image_size}×{self.image_size} in "
                             f"[-1, 1], got {tuple(images.shape)}")
        features = self.encoder(images.to(self.quant_conv.weight.dtype))
        return Encoded(latents=self.quant_conv(features), extras={"encoder_out": features})

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Raw latents B×N×d (what ``encode`` gives; generators' samples after ``denormalize``)."""
        if not latents.is_floating_point():
            raise ValueError("MAETok has no codebook: decode float latents, not token ids")
        if latents.ndim != 3 or latents.shape[2] != self.token_dim or latents.shape[1] > self.num_tokens:
            raise ValueError(f"expected latents B×{self.num_tokens}×{self.token_dim}, "
                             f"got {tuple(latents.shape)}")
        self.check_token_count(latents.shape[1])
        latents = latents.to(self.post_quant_conv.weight.dtype)
        return self.decoder(self.post_quant_conv(latents), latents, (self.image_size, self.image_size))


# --------------------------------------------------------------------------- registry
def detect(config: dict[str, Any]) -> bool:
    """The flat ``ModelArgs`` layout of Hhhhhhao/continuous_tokenizer (shared with SoftVQ)."""
    return isinstance(config, dict) and "encoder_model" in config and "num_latent_tokens" in config \
        and "model" not in config and config.get("enc_type", "vit") == "vit"


def claims(config: dict[str, Any], tensor_names: Optional[Collection[str]]) -> bool:
    """MAETok rather than SoftVQ: RoPE or a MoVQ decoder (no SoftVQ release has them), or weights
    without a quantizer."""
    if config.get("use_rope") or str(config.get("decoder_model", "")).endswith(MOVQ_SUFFIX):
        return True
    return tensor_names is not None and not any(k.startswith("quantize.") for k in tensor_names)


def validate(config: dict[str, Any]) -> None:
    size = int_in_range("image_size", config.get("image_size"), 16, 2048)
    base = int_in_range("base_image_size", config.get("base_image_size", size), 16, 2048)
    int_in_range("num_latent_tokens", config.get("num_latent_tokens"), 1, 4096)
    int_in_range("codebook_embed_dim", config.get("codebook_embed_dim"), 1, 4096)
    for part in ("enc", "dec"):
        patch = int_in_range(f"{part}_patch_size", config.get(f"{part}_patch_size", 16), 1, size)
        if size % patch or base % patch:
            raise ValueError(f"{part}_patch_size {patch} does not divide image_size {size} and "
                             f"base_image_size {base}")
        extra = config.get(f"{part}_model_kwargs") or {}
        if not isinstance(extra, dict):
            raise ValueError(f"{part}_model_kwargs must be an object")
        for key, hi in (("embed_dim", 8192), ("depth", 128), ("num_heads", 256)):
            if key in extra:
                int_in_range(f"{part}_model_kwargs.{key}", extra[key], 1, hi)
    if config.get("use_rope") and not config.get("rope_mixed", False):
        raise ValueError("use_rope without rope_mixed (axial RoPE) is not supported: the official "
                         "code cannot run it either")
    if config.get("use_ape", True) and not config.get("use_rope") and not config.get("dec_cls_token", True):
        raise ValueError("use_ape needs dec_cls_token: the decoder's 1 + L position table has a "
                         "class-token row")


register_family(Family("maetok", "tokenizer", detect, MAETok, validate, claims=claims))

__all__ = ["MAETok", "RoPEViTEncoder", "MAETokDecoder", "MoVQBlock", "mixed_rope_angles", "rotate_pairs"]
