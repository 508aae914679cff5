"""SiT over 1D latent tokens (the ``vae_1d`` variant used with SoftVQ-VAE).

A DiT-style transformer with adaLN-Zero conditioning on (time, class); it predicts the flow
velocity of every token. Parameter names follow the official ``SoftVQVAE/sit-xl_*`` checkpoints.
Sampling lives in ``softvq_demo/sampling/flow.py``, not here.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import Generator
from .registry import Family, register_family

# Named configs, as in the SiT paper (patch size 1: one position per 1D token).
SIT_CONFIGS = {
    "SiT-XL/1": dict(depth=28, hidden_size=1152, num_heads=16),
    "SiT-L/1": dict(depth=24, hidden_size=1024, num_heads=16),
    "SiT-B/1": dict(depth=12, hidden_size=768, num_heads=12),
    "SiT-S/1": dict(depth=12, hidden_size=384, num_heads=6),
}


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def sincos_1d(length: int, dim: int) -> np.ndarray:
    """Channel 2i = sin(pos·ω_i), 2i+1 = cos(pos·ω_i), ω_i = 10000^(-2i/dim) (the official table)."""
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    angles = np.arange(length, dtype=np.float64)[:, None] * omega[None]
    table = np.zeros((length, dim), dtype=np.float64)
    table[:, 0::2], table[:, 1::2] = np.sin(angles), np.cos(angles)
    return table.astype(np.float32)


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    @staticmethod
    def features(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32,
                                                                device=t.device) / half)
        args = t.float()[:, None] * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # cos half first

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.features(t, self.freq_dim).to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class embedding with one extra row: index ``num_classes`` is the null (CFG) class."""

    def __init__(self, num_classes: int, hidden: int):
        super().__init__()
        self.num_classes = num_classes
        self.embedding_table = nn.Embedding(num_classes + 1, hidden)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(y)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class SiTBlock(nn.Module):
    def __init__(self, hidden: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden, num_heads)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden, int(hidden * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(c).chunk(6, dim=-1)
        x = x + gate_a.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_a, scale_a))
        return x + gate_m.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_m, scale_m))


class FinalLayer(nn.Module):
    def __init__(self, hidden: int, out_dim: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden, out_dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class SiT(Generator):
    family = "sit"

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        c = dict(config)
        self.config = c
        if int(c.get("patch_size", 1)) != 1 or not c.get("vae_1d", True):
            raise ValueError("only the 1D-token SiT (vae_1d, patch_size 1) is supported")
        self.num_tokens = int(c["input_size"])
        self.token_dim = int(c["in_channels"])
        self.num_classes = int(c.get("num_classes", 1000))
        self.hidden_size = int(c["hidden_size"])
        self.num_heads = int(c["num_heads"])
        self.depth = int(c["depth"])
        self.path_type = str(c.get("path_type", "linear"))
        self.class_names = c.get("class_names")
        learn_sigma = bool(c.get("learn_sigma", False))
        self.out_channels = self.token_dim * (2 if learn_sigma else 1)
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} not divisible by num_heads {self.num_heads}")
        self.x_embedder = nn.Linear(self.token_dim, self.hidden_size)
        self.t_embedder = TimestepEmbedder(self.hidden_size)
        self.y_embedder = LabelEmbedder(self.num_classes, self.hidden_size)
        # Stored in the checkpoint (frozen); recomputed in init_weights for fresh models.
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens, self.hidden_size), requires_grad=False)
        self.blocks = nn.ModuleList(SiTBlock(self.hidden_size, self.num_heads, float(c.get("mlp_ratio", 4.0)))
                                    for _ in range(self.depth))
        self.final_layer = FinalLayer(self.hidden_size, self.out_channels)
        if self.pos_embed.device.type != "meta":
            self.init_weights()

    @property
    def null_class(self) -> int:
        return self.num_classes

    def init_weights(self) -> None:
        """DiT's initialisation: adaLN-Zero (blocks start as identity), sin-cos positions."""
        def basic(m):
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        self.apply(basic)
        self.pos_embed.data.copy_(torch.from_numpy(sincos_1d(self.num_tokens, self.hidden_size))[None])
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        for layer in (self.t_embedder.mlp[0], self.t_embedder.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for layer in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def functional_weights(self) -> dict[str, Any]:
        """The weights by role, for a functional forward (``sampling.fast.sit``) that must not
        depend on this module's layout: x_embed (w, b); pos N×H; t_mlp (w0, b0, w2, b2); y_table
        (classes + 1)×H; adaln [(w, b)] per block then the final layer's; blocks [(qkv w, b,
        proj w, b, fc1 w, b, fc2 w, b)]; final (w, b) of the velocity's D outputs only (a
        learn_sigma model predicts 2D)."""
        d = self.token_dim
        mlp = self.t_embedder.mlp
        return dict(
            x_embed=(self.x_embedder.weight, self.x_embedder.bias), pos=self.pos_embed[0],
            t_mlp=(mlp[0].weight, mlp[0].bias, mlp[2].weight, mlp[2].bias),
            y_table=self.y_embedder.embedding_table.weight,
            adaln=[(m.weight, m.bias) for m in [b.adaLN_modulation[1] for b in self.blocks]
                   + [self.final_layer.adaLN_modulation[1]]],
            blocks=[(b.attn.qkv.weight, b.attn.qkv.bias, b.attn.proj.weight, b.attn.proj.bias,
                     b.mlp.fc1.weight, b.mlp.fc1.bias, b.mlp.fc2.weight, b.mlp.fc2.bias)
                    for b in self.blocks],
            final=(self.final_layer.linear.weight[:d], self.final_layer.linear.bias[:d]))

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Velocity for noisy tokens x (B×N×D) at times t (B,) with labels y (B,)."""
        if x.ndim != 3 or x.shape[1:] != (self.num_tokens, self.token_dim):
            raise ValueError(f"expected x B×{self.num_tokens}×{self.token_dim}, got {tuple(x.shape)}")
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        h = self.x_embedder(x) + self.pos_embed.to(x.dtype)
        c = self.t_embedder(t).to(h.dtype) + self.y_embedder(y).to(h.dtype)
        for block in self.blocks:
            h = block(h, c)
        out = self.final_layer(h, c)
        return out[..., :self.token_dim]


def sit_config(name: str, num_tokens: int, token_dim: int, num_classes: int = 1000, **extra) -> dict:
    """A config.json for a named SiT (``SiT-XL/1``) over N×D tokens, in the official field names."""
    if name not in SIT_CONFIGS:
        raise ValueError(f"unknown SiT config {name!r}: {', '.join(SIT_CONFIGS)}")
    cfg = dict(input_size=num_tokens, in_channels=token_dim, num_classes=num_classes, patch_size=1,
               vae_1d=True, mlp_ratio=4.0, class_dropout_prob=0.1, learn_sigma=False, use_cfg=True,
               path_type="linear", **SIT_CONFIGS[name])
    cfg.update(extra)
    return cfg


def _is_sit(config: dict) -> bool:
    return "hidden_size" in config and "in_channels" in config and "depth" in config \
        and "model" not in config


def _validate(config: dict) -> None:
    try:
        values = {k: int(config[k]) for k in ("input_size", "in_channels", "hidden_size", "depth", "num_heads")}
        values["num_classes"] = int(config.get("num_classes", 1000))
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"SiT config: missing or non-integer field ({err})") from err
    limits = dict(input_size=4096, in_channels=4096, hidden_size=8192, depth=256, num_heads=256,
                  num_classes=100_000)
    for key, hi in limits.items():
        if not 1 <= values[key] <= hi:
            raise ValueError(f"SiT config out of range: {key}={values[key]}")


register_family(Family("sit", "generator", _is_sit, SiT, _validate))
