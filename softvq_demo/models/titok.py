"""TiTok (Yu et al., 2024): a ViT that reads an image into N learned latent tokens.

Checkpoint-compatible with bytedance/1d-tokenizer (``modeling/titok.py``): ``config.json`` is the
official nested experiment config (``model.vq_model``, ``dataset.preprocessing.crop_size``) and the
state-dict keys are the official ones, so Hub checkpoints load unchanged.

Official conventions we keep inside, and hide behind our API:
- images enter the network in [0, 1]; our ``encode`` takes [-1, 1] and converts;
- tokens travel as B×C×1×N in the official code; our ``latents`` are B×N×C;
- VQ indices are B×1×N officially; ours are B×N.

Variants, all selected by ``model.vq_model``:
- ``quantize_mode: vq`` (nearest codeword, optionally on L2-normalised vectors) or ``vae`` (the
  encoder predicts mean ‖ log-variance; our ``latents`` is the mean, sampling is an option);
- ``is_legacy`` (default true): the encoder *reshapes* (not transposes) its B×N×W output to
  B×W×N×1 before ``conv_out``; every released VQ tokenizer was trained with this quirk. With
  ``is_legacy: false`` the tensor is properly permuted;
- decoder head: legacy = ``ffn`` (1×1 conv, tanh, 1×1 conv) → logits over the 1024 MaskGIT-VQGAN
  codes; non-legacy = 1×1 conv to p²·3 values per cell, unpatchified to RGB, then a 3×3 conv;
- ``finetune_decoder: true`` ("two-stage", all released VQ models): softmax over those 1024 logits,
  expected embedding from ``pixel_quantize``, then the MaskGIT-VQGAN ``pixel_decoder``.
"""
from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .base import Encoded, Tokenizer, int_in_range
from .maskgit_vqgan import CODE_DIM, NUM_CODES, RELEASED_CONFIG, PixelDecoder
from .registry import Family, register_family

# Official ViT sizes; ``vit_enc_arch`` / ``vit_dec_arch`` ({width, layers, heads}) override them.
MODEL_SIZES: dict[str, dict[str, int]] = {
    "small": {"width": 512, "layers": 8, "heads": 8},
    "base": {"width": 768, "layers": 12, "heads": 12},
    "large": {"width": 1024, "layers": 24, "heads": 16},
}


# --------------------------------------------------------------------------- config helpers
def _vq(config: dict[str, Any]) -> dict[str, Any]:
    return config["model"]["vq_model"]


def vit_arch(config: dict[str, Any], part: str) -> dict[str, int]:
    """Width/layers/heads of the encoder (part="enc") or decoder (part="dec")."""
    vq = _vq(config)
    override = vq.get(f"vit_{part}_arch")
    if override:
        return {k: int(override[k]) for k in ("width", "layers", "heads")}
    size = vq.get(f"vit_{part}_model_size")
    if size not in MODEL_SIZES:
        raise ValueError(f"model.vq_model.vit_{part}_model_size {size!r} is not one of "
                         f"{sorted(MODEL_SIZES)} (or give vit_{part}_arch)")
    return dict(MODEL_SIZES[size])


def pixel_decoder_config(vq: dict[str, Any]) -> dict[str, Any]:
    """The released pixel decoder, with ``pixel_decoder_arch`` ({hidden_channels, num_res_blocks})
    merged over it for small models (the size-override convention of the fixtures)."""
    arch = vq.get("pixel_decoder_arch") or {}
    if not isinstance(arch, dict) or set(arch) - {"hidden_channels", "num_res_blocks"}:
        raise ValueError("model.vq_model.pixel_decoder_arch may only set hidden_channels and "
                         "num_res_blocks")
    conf = dict(RELEASED_CONFIG)
    if "hidden_channels" in arch:
        conf["hidden_channels"] = int_in_range("pixel_decoder_arch.hidden_channels",
                                               arch["hidden_channels"], 32, 1024)
        if conf["hidden_channels"] % 32:  # GroupNorm(32 groups) throughout
            raise ValueError("pixel_decoder_arch.hidden_channels must be a multiple of 32")
    if "num_res_blocks" in arch:
        conf["num_res_blocks"] = int_in_range("pixel_decoder_arch.num_res_blocks",
                                              arch["num_res_blocks"], 1, 8)
    return conf


def _quantize_mode(vq: dict[str, Any]) -> str:
    return vq.get("quantize_mode", "vq")


# --------------------------------------------------------------------------- transformer blocks
class PackedSelfAttention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameter layout (one packed
    q/k/v projection ``in_proj_weight``/``in_proj_bias`` and ``out_proj``), batch-first, computed
    with ``scaled_dot_product_attention`` (flash/memory-efficient kernels on GPU)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, w = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # B×heads×N×head_dim
        return self.out_proj(out.transpose(1, 2).reshape(b, n, w))


class ResidualAttentionBlock(nn.Module):
    """Pre-norm CLIP block: x + attn(ln_1(x)), then x + mlp(ln_2(x)) with exact GELU."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.ln_1 = nn.LayerNorm(width)
        self.attn = PackedSelfAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, hidden)),
            ("gelu", nn.GELU()),
            ("c_proj", nn.Linear(hidden, width)),
        ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


def _param(*shape: int, scale: float) -> nn.Parameter:
    return nn.Parameter(scale * torch.randn(*shape))


# --------------------------------------------------------------------------- encoder / decoder
class TiTokEncoder(nn.Module):
    """Patches + class token + N latent queries through a ViT; the latent positions become tokens.

    Returns the official layout B×C×1×N (C = token_size, doubled in VAE mode)."""

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        vq = _vq(config)
        arch = vit_arch(config, "enc")
        self.width, self.heads = arch["width"], arch["heads"]
        self.patch_size = int(vq["vit_enc_patch_size"])
        self.grid_size = int(config["dataset"]["preprocessing"]["crop_size"]) // self.patch_size
        self.num_latent_tokens = int(vq["num_latent_tokens"])
        self.out_channels = int(vq["token_size"]) * (2 if _quantize_mode(vq) == "vae" else 1)
        self.is_legacy = bool(vq.get("is_legacy", True))

        w, scale = self.width, self.width ** -0.5
        self.patch_embed = nn.Conv2d(3, w, kernel_size=self.patch_size, stride=self.patch_size)
        self.class_embedding = _param(1, w, scale=scale)
        self.positional_embedding = _param(self.grid_size ** 2 + 1, w, scale=scale)
        self.latent_token_positional_embedding = _param(self.num_latent_tokens, w, scale=scale)
        self.ln_pre = nn.LayerNorm(w)
        self.transformer = nn.ModuleList(ResidualAttentionBlock(w, self.heads)
                                         for _ in range(arch["layers"]))
        self.ln_post = nn.LayerNorm(w)
        self.conv_out = nn.Conv2d(w, self.out_channels, kernel_size=1)

    def forward(self, pixels: torch.Tensor, latent_tokens: torch.Tensor) -> torch.Tensor:
        b = pixels.shape[0]
        x = self.patch_embed(pixels).flatten(2).transpose(1, 2)            # B×g²×W
        cls = self.class_embedding.to(x.dtype).expand(b, -1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        latents = (latent_tokens + self.latent_token_positional_embedding).to(x.dtype)
        x = torch.cat([x, latents.expand(b, -1, -1)], dim=1)
        x = self.ln_pre(x)
        for block in self.transformer:
            x = block(x)
        x = self.ln_post(x[:, -self.num_latent_tokens:])                   # B×N×W
        n = self.num_latent_tokens
        if self.is_legacy:
            # The released models' quirk: a reshape that mixes token and channel axes.
            x = x.reshape(b, self.width, n, 1)
        else:
            x = x.permute(0, 2, 1).reshape(b, self.width, n, 1)
        x = self.conv_out(x)                                               # B×C×N×1
        return x.reshape(b, self.out_channels, 1, n)


class TiTokDecoder(nn.Module):
    """A g×g grid of mask tokens (plus class token) attends to the N tokens; the grid becomes
    either 1024-way proxy-code logits (legacy head) or RGB pixels (non-legacy head)."""

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        vq = _vq(config)
        arch = vit_arch(config, "dec")
        self.width, self.heads = arch["width"], arch["heads"]
        self.patch_size = int(vq["vit_dec_patch_size"])
        self.grid_size = int(config["dataset"]["preprocessing"]["crop_size"]) // self.patch_size
        self.num_latent_tokens = int(vq["num_latent_tokens"])
        self.token_size = int(vq["token_size"])
        self.is_legacy = bool(vq.get("is_legacy", True))

        w, scale = self.width, self.width ** -0.5
        self.decoder_embed = nn.Linear(self.token_size, w)
        self.class_embedding = _param(1, w, scale=scale)
        self.positional_embedding = _param(self.grid_size ** 2 + 1, w, scale=scale)
        self.mask_token = _param(1, 1, w, scale=scale)
        self.latent_token_positional_embedding = _param(self.num_latent_tokens, w, scale=scale)
        self.ln_pre = nn.LayerNorm(w)
        self.transformer = nn.ModuleList(ResidualAttentionBlock(w, self.heads)
                                         for _ in range(arch["layers"]))
        self.ln_post = nn.LayerNorm(w)
        p = self.patch_size
        if self.is_legacy:
            # Index 1 is the (parameter-free) tanh, so keys are ffn.0.* and ffn.2.* as upstream.
            self.ffn = nn.Sequential(nn.Conv2d(w, 2 * w, 1), nn.Tanh(), nn.Conv2d(2 * w, NUM_CODES, 1))
            self.conv_out = nn.Identity()
        else:
            self.ffn = nn.Sequential(nn.Conv2d(w, p * p * 3, 1))
            self.conv_out = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens B×N×C → legacy: logits B×1024×g×g; otherwise pixels B×3×S×S (network range)."""
        b, n, _ = tokens.shape
        x = self.decoder_embed(tokens) + self.latent_token_positional_embedding[:n]
        g2 = self.grid_size ** 2
        grid = torch.cat([self.class_embedding.expand(b, 1, -1), self.mask_token.expand(b, g2, -1)],
                         dim=1)
        grid = (grid + self.positional_embedding).to(x.dtype)
        x = self.ln_pre(torch.cat([grid, x], dim=1))
        for block in self.transformer:
            x = block(x)
        x = self.ln_post(x[:, 1:1 + g2])                                   # drop cls and tokens
        g = self.grid_size
        x = x.transpose(1, 2).reshape(b, self.width, g, g)
        x = self.ffn(x.contiguous())
        if not self.is_legacy:
            # Unpatchify: channel index is (p1, p2, rgb) → pixels (h·p + p1, w·p + p2).
            p = self.patch_size
            x = x.reshape(b, p, p, 3, g, g).permute(0, 3, 4, 1, 5, 2).reshape(b, 3, g * p, g * p)
        return self.conv_out(x)


class VectorQuantizer(nn.Module):
    """Nearest-codeword lookup (squared L2; on unit vectors when ``use_l2_norm``)."""

    def __init__(self, codebook_size: int, token_size: int, use_l2_norm: bool):
        super().__init__()
        self.embedding = nn.Embedding(codebook_size, token_size)
        self.use_l2_norm = use_l2_norm

    def codebook(self) -> torch.Tensor:
        w = self.embedding.weight.float()
        return F.normalize(w, dim=-1) if self.use_l2_norm else w

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z B×N×C → (codewords B×N×C, indices B×N). Distances in fp32 as upstream."""
        z = z.float()
        if self.use_l2_norm:
            z = F.normalize(z, dim=-1)
        e = self.codebook()
        flat = z.reshape(-1, z.shape[-1])
        # Same expansion as upstream, ‖z‖² + ‖e‖² − 2 z·e, so near-ties break the same way.
        d = flat.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1) - 2 * flat @ e.t()
        indices = d.argmin(dim=1).view(z.shape[:-1])
        return self.lookup(indices), indices

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        return F.embedding(indices, self.codebook())


# --------------------------------------------------------------------------- the tokenizer
class TiTok(Tokenizer):
    family = "titok"
    # Usage counters of the optional clustering-VQ training trick; never used at inference.
    training_only_prefixes = ("quantize.embed_prob",)

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        self.config = copy.deepcopy(config)
        vq = _vq(config)
        self.quantize_mode = _quantize_mode(vq)
        self.finetune_decoder = bool(vq.get("finetune_decoder", True))
        self.is_legacy = bool(vq.get("is_legacy", True))
        self.image_size = int(config["dataset"]["preprocessing"]["crop_size"])
        self.num_tokens = int(vq["num_latent_tokens"])
        self.token_dim = int(vq["token_size"])
        self.codebook_size = int(vq["codebook_size"]) if self.quantize_mode == "vq" else None
        self.num_codebooks = 1

        self.encoder = TiTokEncoder(config)
        self.decoder = TiTokDecoder(config)
        self.latent_tokens = _param(self.num_tokens, self.encoder.width,
                                    scale=self.encoder.width ** -0.5)
        if self.quantize_mode == "vq":
            self.quantize = VectorQuantizer(self.codebook_size, self.token_dim,
                                            bool(vq.get("use_l2_norm", False)))
        if self.finetune_decoder:
            # Two-stage models: the 1024 logits become an expected MaskGIT-VQGAN code, then pixels.
            self.pixel_quantize = nn.Module()
            self.pixel_quantize.embedding = nn.Embedding(NUM_CODES, CODE_DIM)
            self.pixel_decoder = PixelDecoder(pixel_decoder_config(vq))

    # ------------------------------------------------------------------ properties
    @property
    def is_vae(self) -> bool:
        return self.quantize_mode == "vae"

    @property
    def outputs_logits(self) -> bool:
        """Stage-1 legacy models have no pixel decoder: ``decode`` gives proxy-code logits."""
        return self.is_legacy and not self.finetune_decoder

    # ------------------------------------------------------------------ encode
    def encode(self, images: torch.Tensor, sample: bool = False,
               generator: Optional[torch.Generator] = None) -> Encoded:
        """images B×3×S×S in [-1, 1] → tokens. VAE: ``sample=True`` draws from the posterior
        (as the official ``encode`` does) instead of returning its mean."""
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != (self.image_size,) * 2:
            raise ValueError(f"TiTok expects images B×3×{self.image_size}×{self.image_size}, "
                             f"got {tuple(images.shape)}")
        # The network was trained on [0, 1]; follow the weights' dtype (a model loaded in bf16).
        pixels = ((images + 1) / 2).to(self.encoder.patch_embed.weight.dtype)
        z = self.encoder(pixels, self.latent_tokens)             # B×C×1×N
        z = z.squeeze(2).transpose(1, 2)                         # B×N×C
        extras = {"pre_quant": z}
        if self.is_vae:
            mean, logvar = z.float().chunk(2, dim=-1)
            logvar = logvar.clamp(-30.0, 20.0)
            latents = mean
            if sample:
                noise = torch.randn(mean.shape, generator=generator,
                                    device=generator.device if generator is not None else mean.device)
                latents = mean + torch.exp(0.5 * logvar) * noise.to(mean.device)
            extras.update(mean=mean, logvar=logvar)
            return Encoded(latents=latents, extras=extras)
        latents, indices = self.quantize(z)
        return Encoded(latents=latents, indices=indices, extras=extras)

    # ------------------------------------------------------------------ decode
    def tokens_from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """int ids B×N (or the official B×1×N) → codewords B×N×C."""
        if self.is_vae:
            raise ValueError("this TiTok is a VAE: it has no codebook, decode float latents")
        if indices.ndim == 3 and indices.shape[1] == 1:
            indices = indices[:, 0]
        if indices.ndim != 2:
            raise ValueError(f"token ids must be B×N, got {tuple(indices.shape)}")
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.codebook_size):
            raise ValueError(f"token ids must be in 0..{self.codebook_size - 1}")
        return self.quantize.lookup(indices.long())

    def latents_from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        return self.tokens_from_indices(indices)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Float latents B×N×C (or the official B×C×1×N) or int ids B×N → images in [-1, 1].

        A stage-1 legacy model has no pixel decoder: it returns its B×1024×g×g logits over the
        MaskGIT-VQGAN codes, exactly as the official ``decode`` does."""
        if not latents.is_floating_point():
            tokens = self.tokens_from_indices(latents)
        elif latents.ndim == 4 and latents.shape[2] == 1:
            tokens = latents.squeeze(2).transpose(1, 2)
        else:
            tokens = latents
        if tokens.ndim != 3 or tokens.shape[2] != self.token_dim or tokens.shape[1] > self.num_tokens:
            raise ValueError(f"TiTok latents must be B×{self.num_tokens}×{self.token_dim}, "
                             f"got {tuple(latents.shape)}")
        self.check_token_count(tokens.shape[1])  # a prefix only where the family allows it
        param = self.decoder.decoder_embed.weight
        out = self.decoder(tokens.to(param.dtype))
        if self.finetune_decoder:
            probs = out.softmax(dim=1)                           # B×1024×g×g
            codes = torch.einsum("bkhw,kd->bdhw", probs, self.pixel_quantize.embedding.weight.to(probs.dtype))
            out = self.pixel_decoder(codes)
        elif self.outputs_logits:
            return out
        return out * 2 - 1                                       # [0, 1] → [-1, 1]

    def decode_tokens(self, indices: torch.Tensor) -> torch.Tensor:
        return self.decode(indices)


# --------------------------------------------------------------------------- registry
def detect(config: dict[str, Any]) -> bool:
    """The official nested config with a tokenizer section (``model.vq_model`` naming ViT sizes).

    Official generator configs repeat the tokenizer section, and released tokenizer configs may
    carry the generator section too, so the loader's ``kind`` is what tells them apart."""
    model = config.get("model") if isinstance(config, dict) else None
    vq = model.get("vq_model") if isinstance(model, dict) else None
    return isinstance(vq, dict) and ("vit_enc_model_size" in vq or "vit_enc_arch" in vq)


def validate(config: dict[str, Any]) -> None:
    """Refuse absurd or inconsistent configs before anything is allocated."""
    try:
        vq = _vq(config)
        crop = config["dataset"]["preprocessing"]["crop_size"]
    except (KeyError, TypeError) as err:
        raise ValueError(f"TiTok config lacks {err} (needs model.vq_model and "
                         "dataset.preprocessing.crop_size)") from err
    crop = int_in_range("dataset.preprocessing.crop_size", crop, 8, 2048)
    mode = _quantize_mode(vq)
    if mode not in ("vq", "vae"):
        raise ValueError(f"model.vq_model.quantize_mode {mode!r}: expected 'vq' or 'vae'")
    int_in_range("model.vq_model.num_latent_tokens", vq.get("num_latent_tokens"), 1, 4096)
    int_in_range("model.vq_model.token_size", vq.get("token_size"), 1, 4096)
    if mode == "vq":
        int_in_range("model.vq_model.codebook_size", vq.get("codebook_size"), 2, 1 << 20)
    for part in ("enc", "dec"):
        patch = int_in_range(f"model.vq_model.vit_{part}_patch_size", vq.get(f"vit_{part}_patch_size"),
                        1, crop)
        if crop % patch:
            raise ValueError(f"crop_size {crop} is not a multiple of vit_{part}_patch_size {patch}")
        if (crop // patch) ** 2 > 65536:
            raise ValueError(f"vit_{part}_patch_size {patch} gives a {crop // patch}² grid: too many "
                             "positions")
        arch = vit_arch(config, part)
        width = int_in_range(f"vit_{part} width", arch["width"], 8, 8192)
        int_in_range(f"vit_{part} layers", arch["layers"], 1, 128)
        heads = int_in_range(f"vit_{part} heads", arch["heads"], 1, 256)
        if width % heads:
            raise ValueError(f"vit_{part} width {width} is not divisible by its {heads} heads")
    finetune = bool(vq.get("finetune_decoder", True))
    if finetune and mode != "vq":
        raise ValueError("finetune_decoder (the MaskGIT-VQGAN pixel decoder) needs quantize_mode vq")
    if finetune and not vq.get("is_legacy", True):
        raise ValueError("finetune_decoder needs the legacy decoder head (1024 proxy-code logits); "
                         "set is_legacy: true or finetune_decoder: false")


register_family(Family(name="titok", kind="tokenizer", detect=detect, build=TiTok, validate=validate))

__all__ = ["TiTok", "TiTokEncoder", "TiTokDecoder", "VectorQuantizer", "vit_arch", "MODEL_SIZES"]
