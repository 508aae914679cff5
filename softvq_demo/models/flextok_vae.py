"""The SD-style ``AutoencoderKL`` that FlexTok tokenizes (EPFL-VILAB/flextok_vae_c{4,8,16}).

Plain PyTorch with diffusers' parameter names and config keys, so a diffusers-layout VAE folder
(``config.json`` + ``diffusion_pytorch_model.safetensors``) and the ``vae.vae.*`` tensors inside a
FlexTok checkpoint load unchanged, without diffusers at run time. Only what FlexTok uses is here:
``DownEncoderBlock2D`` / ``UpDecoderBlock2D`` ResNet stacks, the single-head mid-block attention,
the diagonal-Gaussian posterior (mean, clamped log-variance) and the decoder.

Registered as family ``autoencoder-kl`` (kind "autoencoder"), so ``loading.load_folder(folder,
"autoencoder")`` loads a VAE folder with the same strict, meta-first checks as every model.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .base import int_in_range
from .registry import Family, register_family

# diffusers' AutoencoderKL defaults for the keys a config may leave out.
DEFAULTS: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "block_out_channels": [64],
    "down_block_types": ["DownEncoderBlock2D"], "up_block_types": ["UpDecoderBlock2D"],
    "layers_per_block": 1, "norm_num_groups": 32, "act_fn": "silu", "scaling_factor": 0.18215,
    "use_quant_conv": True, "use_post_quant_conv": True, "mid_block_add_attention": True,
    "shift_factor": None, "force_upcast": True, "sample_size": 32,
}
EPS = 1e-6  # diffusers' resnet / attention / output GroupNorm eps in AutoencoderKL


class ResnetBlock(nn.Module):
    """GroupNorm → SiLU → 3×3 conv, twice; 1×1 ``conv_shortcut`` when the width changes."""

    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=EPS)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, cout, eps=EPS)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class MidAttention(nn.Module):
    """One-head spatial self-attention with a residual (diffusers ``Attention`` of the VAE)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, channels, eps=EPS)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = self.group_norm(x).reshape(b, c, h * w).transpose(1, 2)
        q, k, v = (proj(t).unsqueeze(1) for proj in (self.to_q, self.to_k, self.to_v))
        out = F.scaled_dot_product_attention(q, k, v)[:, 0]
        return x + self.to_out[0](out).transpose(1, 2).reshape(b, c, h, w)


class MidBlock(nn.Module):
    def __init__(self, channels: int, groups: int, attention: bool):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels, groups),
                                      ResnetBlock(channels, channels, groups)])
        self.attentions = nn.ModuleList([MidAttention(channels, groups)] if attention else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        for attn in self.attentions:
            x = attn(x)
        return self.resnets[1](x)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # diffusers' asymmetric padding (padding=0 mode)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Stage(nn.Module):
    """A Down/UpEncoderBlock2D: ResNets, then an optional resampler (``downsamplers`` /
    ``upsamplers`` hold at most one module, as in diffusers)."""

    def __init__(self, cin: int, cout: int, layers: int, groups: int, resample: Optional[str]):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(cin if i == 0 else cout, cout, groups)
                                      for i in range(layers)])
        if resample == "down":
            self.downsamplers = nn.ModuleList([Downsample(cout)])
        elif resample == "up":
            self.upsamplers = nn.ModuleList([Upsample(cout)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for r in self.resnets:
            x = r(x)
        for s in getattr(self, "downsamplers", ()):
            x = s(x)
        for s in getattr(self, "upsamplers", ()):
            x = s(x)
        return x


class Encoder(nn.Module):
    def __init__(self, c: dict[str, Any]):
        super().__init__()
        widths, groups, layers = c["block_out_channels"], c["norm_num_groups"], c["layers_per_block"]
        self.conv_in = nn.Conv2d(c["in_channels"], widths[0], 3, padding=1)
        self.down_blocks = nn.ModuleList([
            Stage(widths[max(i - 1, 0)], w, layers, groups, None if i == len(widths) - 1 else "down")
            for i, w in enumerate(widths)])
        self.mid_block = MidBlock(widths[-1], groups, c["mid_block_add_attention"])
        self.conv_norm_out = nn.GroupNorm(groups, widths[-1], eps=EPS)
        self.conv_out = nn.Conv2d(widths[-1], 2 * c["latent_channels"], 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class Decoder(nn.Module):
    def __init__(self, c: dict[str, Any]):
        super().__init__()
        widths = list(reversed(c["block_out_channels"]))
        groups, layers = c["norm_num_groups"], c["layers_per_block"]
        self.conv_in = nn.Conv2d(c["latent_channels"], widths[0], 3, padding=1)
        self.mid_block = MidBlock(widths[0], groups, c["mid_block_add_attention"])
        self.up_blocks = nn.ModuleList([
            Stage(widths[max(i - 1, 0)], w, layers + 1, groups, None if i == len(widths) - 1 else "up")
            for i, w in enumerate(widths)])
        self.conv_norm_out = nn.GroupNorm(groups, widths[-1], eps=EPS)
        self.conv_out = nn.Conv2d(widths[-1], c["out_channels"], 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class AutoencoderKL(nn.Module):
    """diffusers' ``AutoencoderKL`` (inference only). ``encode`` returns the posterior
    (mean, log-variance clamped to [-30, 20] as diffusers does); ``decode`` takes raw latents
    (no scaling factor: callers such as FlexTok divide by it first)."""

    family = "autoencoder-kl"

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        self.config = dict(config)
        c = resolved_config(config)
        self.latent_channels = c["latent_channels"]
        self.scaling_factor = float(c["scaling_factor"])
        self.downsample_factor = 2 ** (len(c["block_out_channels"]) - 1)
        self.encoder = Encoder(c)
        self.decoder = Decoder(c)
        z2, z = 2 * c["latent_channels"], c["latent_channels"]
        self.quant_conv = nn.Conv2d(z2, z2, 1) if c["use_quant_conv"] else None
        self.post_quant_conv = nn.Conv2d(z, z, 1) if c["use_post_quant_conv"] else None

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images B×3×H×W in [-1, 1] → posterior (mean, logvar), each B×C×H/f×W/f."""
        moments = self.encoder(images)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    @staticmethod
    def sample(mean: torch.Tensor, logvar: torch.Tensor,
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """A posterior draw mean + σ·ε (ε drawn like diffusers' ``latent_dist.sample``)."""
        eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype).to(mean.device)
        return mean + torch.exp(0.5 * logvar) * eps

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def describe(self) -> str:
        return (f"AutoencoderKL · f{self.downsample_factor} · {self.latent_channels} latent channels · "
                f"scaling factor {self.scaling_factor:g}")


def resolved_config(config: dict[str, Any]) -> dict[str, Any]:
    """The config with diffusers' defaults filled in, checked for sane, supported values."""
    c = {**DEFAULTS, **{k: v for k, v in config.items() if v is not None or k not in DEFAULTS}}
    if c.get("scaling_factor") is None:
        c["scaling_factor"] = DEFAULTS["scaling_factor"]
    widths = c["block_out_channels"]
    if not isinstance(widths, (list, tuple)) or not 1 <= len(widths) <= 8:
        raise ValueError(f"VAE block_out_channels must be a list of 1..8 widths, got {widths!r}")
    c["block_out_channels"] = [int_in_range("VAE block_out_channels", w, 1, 4096) for w in widths]
    for key, hi in (("in_channels", 16), ("out_channels", 16), ("latent_channels", 256),
                    ("layers_per_block", 16), ("norm_num_groups", 4096)):
        c[key] = int_in_range(f"VAE {key}", c[key], 1, hi)
    if any(w % c["norm_num_groups"] for w in c["block_out_channels"]):
        raise ValueError(f"VAE norm_num_groups {c['norm_num_groups']} must divide every width "
                         f"{c['block_out_channels']}")
    n = len(widths)
    if list(c["down_block_types"]) != ["DownEncoderBlock2D"] * n or \
            list(c["up_block_types"]) != ["UpDecoderBlock2D"] * n:
        raise ValueError("only AutoencoderKL with DownEncoderBlock2D / UpDecoderBlock2D blocks (one "
                         "per width) is supported")
    if c["act_fn"] != "silu":
        raise ValueError(f"VAE act_fn {c['act_fn']!r} is not supported (only silu)")
    if c.get("shift_factor") not in (None, 0, 0.0):
        raise ValueError("VAE shift_factor is not supported")
    try:
        if not 0 < float(c["scaling_factor"]) < 1e3:
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(f"VAE scaling_factor must be a positive number, got {c['scaling_factor']!r}") \
            from None
    return c


def _is_autoencoder_kl(config: dict) -> bool:
    return config.get("_class_name") == "AutoencoderKL"


register_family(Family("autoencoder-kl", "autoencoder", _is_autoencoder_kl, AutoencoderKL,
                       lambda c: resolved_config(c) and None))
