"""The MaskGIT-VQGAN convolutional decoder, used as TiTok's pixel decoder.

Two-stage TiTok models (every released VQ tokenizer with ``finetune_decoder: true``) do not predict
pixels themselves: their ViT decoder predicts, for each cell of a g×g grid, a distribution over the
1024 codes of a pretrained MaskGIT-VQGAN; the expected code embedding (256-d) then goes through
this decoder. State-dict keys follow the official module (``conv_in``, ``mid.i``,
``up.i.block.j``, ``up.i.upsample_conv``, ``norm_out``, ``conv_out``) so checkpoints load as-is.

Two quirks of the official code are kept on purpose, because the released weights were trained
with them:
- residual blocks that change width apply their 1×1 ``nin_shortcut`` to the block's *output*
  (out→out channels), not to its input; the input is then not used as a residual at all;
- the official "same" padding for stride-1 3×3/1×1 convs is plain symmetric padding k//2, so
  ordinary ``nn.Conv2d`` layers reproduce it.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

# The decoder shipped inside the released TiTok checkpoints (f16, 256 px, 1024×256 codebook).
RELEASED_CONFIG: dict[str, Any] = {
    "channel_mult": [1, 1, 2, 2, 4],
    "num_resolutions": 5,
    "dropout": 0.0,
    "hidden_channels": 128,
    "num_channels": 3,
    "num_res_blocks": 2,
    "resolution": 256,
    "z_channels": 256,
}
NUM_CODES = 1024   # MaskGIT-VQGAN codebook size: what a legacy TiTok decoder predicts logits over
CODE_DIM = 256     # its code width (z_channels of the pixel decoder)


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class ResBlock(nn.Module):
    """GroupNorm → SiLU → conv3×3, twice (bias-free convs, as in the official VQGAN)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = _group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = _group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.changes_width = in_channels != out_channels
        if self.changes_width:
            # out→out on purpose: see the module docstring.
            self.nin_shortcut = nn.Conv2d(out_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if self.changes_width:
            return h + self.nin_shortcut(h)  # official quirk: shortcut taken from h, not x
        return h + x


class UpBlock(nn.Module):
    """Residual blocks at one resolution, then (except for level 0) nearest ×2 and a 3×3 conv."""

    def __init__(self, conf: dict[str, Any], level: int):
        super().__init__()
        mult = conf["channel_mult"]
        top = level == conf["num_resolutions"] - 1
        block_in = conf["hidden_channels"] * (mult[-1] if top else mult[level + 1])
        block_out = conf["hidden_channels"] * mult[level]
        blocks = []
        for _ in range(conf["num_res_blocks"]):
            blocks.append(ResBlock(block_in, block_out, conf.get("dropout", 0.0)))
            block_in = block_out
        self.block = nn.ModuleList(blocks)
        self.upsamples = level != 0
        if self.upsamples:
            self.upsample_conv = nn.Conv2d(block_out, block_out, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.block:
            x = blk(x)
        if self.upsamples:
            x = self.upsample_conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return x


class PixelDecoder(nn.Module):
    """z (B×z_channels×h×w) → pixels B×3×(h·2^(L−1))×(w·2^(L−1)), roughly in [0, 1]."""

    def __init__(self, conf: Optional[dict[str, Any]] = None):
        super().__init__()
        conf = dict(RELEASED_CONFIG if conf is None else conf)
        validate_config(conf)
        self.conf = conf
        hidden, mult = conf["hidden_channels"], conf["channel_mult"]
        block_in = hidden * mult[conf["num_resolutions"] - 1]
        self.conv_in = nn.Conv2d(conf["z_channels"], block_in, 3, padding=1)
        self.mid = nn.ModuleList(ResBlock(block_in, block_in, conf.get("dropout", 0.0))
                                 for _ in range(conf["num_res_blocks"]))
        # up[i] works at level i; the forward pass runs from the coarsest level (last) down to 0.
        self.up = nn.ModuleList(UpBlock(conf, level) for level in range(conf["num_resolutions"]))
        block_out = hidden * mult[0]
        self.norm_out = _group_norm(block_out)
        self.conv_out = nn.Conv2d(block_out, conf["num_channels"], 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(z)
        for blk in self.mid:
            x = blk(x)
        for blk in reversed(self.up):
            x = blk(x)
        return self.conv_out(F.silu(self.norm_out(x)))


def validate_config(conf: dict[str, Any]) -> None:
    """Refuse configs the official class could not build, or absurd sizes, with a ValueError."""
    try:
        mult = [int(m) for m in conf["channel_mult"]]
        levels = int(conf["num_resolutions"])
        hidden = int(conf["hidden_channels"])
        blocks = int(conf["num_res_blocks"])
        z = int(conf["z_channels"])
        out = int(conf["num_channels"])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"pixel decoder config: missing or non-integer field ({err})") from err
    if levels != len(mult) or not 1 <= levels <= 8:
        raise ValueError(f"pixel decoder config: num_resolutions {levels} must equal "
                         f"len(channel_mult) = {len(mult)} and be in 1..8")
    if not all(1 <= m <= 16 for m in mult):
        raise ValueError(f"pixel decoder config: channel_mult {mult} out of range 1..16")
    if not 32 <= hidden <= 1024 or hidden % 32:
        raise ValueError(f"pixel decoder config: hidden_channels {hidden} must be a multiple of 32 "
                         "(GroupNorm uses 32 groups) in 32..1024")
    if not 1 <= blocks <= 8:
        raise ValueError(f"pixel decoder config: num_res_blocks {blocks} out of range 1..8")
    if not 1 <= z <= 4096 or not 1 <= out <= 16:
        raise ValueError(f"pixel decoder config: z_channels {z} / num_channels {out} out of range")
