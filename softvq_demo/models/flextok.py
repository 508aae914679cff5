"""FlexTok (Bachmann et al., arXiv 2502.13967): 1D tokens of flexible length, decoded by flow.

An image is encoded by a frozen SD-style VAE (``flextok_vae.py``) into latents; a transformer reads
the latent patches plus N learned *registers* (causal among themselves), and each register output
is quantised by FSQ (levels [8, 8, 8, 5, 5, 5] released: 64 000 codes, one id per token). Any prefix
of k ids decodes: a rectified-flow transformer denoises VAE latents conditioned on the k register
codes (positions ≥ k hold a learned mask token), optionally with classifier-free guidance (a
learned null condition) or its norm-guided variant APG; the VAE decodes the result.

Checkpoint-compatible with apple/ml-flextok (``FlexTokFromHub``): ``config.json`` is the official
hydra config dict and the state-dict keys are the official ones (``vae.vae.*``,
``encoder.module_dict.<name>.*``, ``decoder.module_dict.<name>.*``). Like the official
``SequentialModuleDictWrapper``, the encoder and decoder are ordered dicts of small modules that
read and write named entries of a shared ``data`` dict, run **in config order** (the order is the
semantics: e.g. the decoder's register posemb runs before the nested-dropout mask token). Each
``_target_`` is mapped to a module here by name; nothing is instantiated from the config (no hydra),
and an unknown target is refused. Images of a batch share one size, so every entry is a batched
tensor rather than the official per-image lists.

Reference: ../shared/reference/flextok/SPEC.md (official behaviour with file/line citations).
"""
from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Any, Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .base import Encoded, Tokenizer, int_in_range
from .flextok_vae import AutoencoderKL
from .registry import Companion, Family, register_family

# The VAE that ``StableDiffusionVAE`` builds when its config names no Hub repo (vae_wrapper.py
# VAE_BASE_CFG); ``latent_channels`` and the fixtures' ``vae_config_overrides`` are merged over it.
VAE_BASE_CONFIG: dict[str, Any] = {
    "_class_name": "AutoencoderKL", "in_channels": 3, "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "act_fn": "silu",
    "norm_num_groups": 32, "sample_size": 256,
}

# Sampler settings of the release (the official README's detokenize call).
RELEASE_SAMPLING = {"steps": 20, "guidance_scale": 7.5, "apg": True}
DEFAULT_SEED = 0
# APG constants of the official ``normalized_guidance`` (cfg_utils.py).
APG_MOMENTUM = -0.5
APG_NORM_THRESHOLD = 2.5


# --------------------------------------------------------------------------- transformer
def layer_norm_fp32(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """The official ``Fp32LayerNorm`` without weight or bias: computed in float32."""
    return F.layer_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


class Attention(nn.Module):
    """Bias-free q/k/v/proj with a parameter-free qk LayerNorm and the μP softmax scale
    8/head_dim (equals 1/√head_dim only for head_dim 64)."""

    def __init__(self, dim: int, head_dim: int):
        super().__init__()
        if dim % head_dim:
            raise ValueError(f"transformer dim {dim} is not a multiple of head_dim {head_dim}")
        self.heads, self.head_dim = dim // head_dim, head_dim
        self.wq = nn.Linear(dim, dim, bias=False)
        self.wk = nn.Linear(dim, dim, bias=False)
        self.wv = nn.Linear(dim, dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        b, n, d = x.shape

        def heads(t):
            return t.view(b, n, self.heads, self.head_dim).transpose(1, 2)

        q, k = layer_norm_fp32(heads(self.wq(x))), layer_norm_fp32(heads(self.wk(x)))
        out = F.scaled_dot_product_attention(q, k, heads(self.wv(x)), attn_mask=mask,
                                             scale=8.0 / self.head_dim)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class SwiGLU(nn.Module):
    def __init__(self, dim: int, mlp_ratio: float):
        super().__init__()
        hidden = int(2 * int(dim * mlp_ratio) / 3)
        self.fc1 = nn.Linear(dim, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, dim, bias=False)
        self.fc3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.silu(self.fc1(x)) * self.fc3(x))


class Block(nn.Module):
    """Pre-norm block; with ``adaln_groups`` > 0 it is adaLN-zero modulated by a condition
    (``FlexBlockAdaLN``), one set of 6 modulations per token group (patches | registers)."""

    def __init__(self, dim: int, head_dim: int, mlp_ratio: float, adaln_groups: int = 0):
        super().__init__()
        self.attn = Attention(dim, head_dim)
        self.mlp = SwiGLU(dim, mlp_ratio)
        if adaln_groups:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, adaln_groups * 6 * dim))

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor],
                cond: Optional[torch.Tensor] = None, groups: Optional[list[int]] = None) -> torch.Tensor:
        if not hasattr(self, "adaLN_modulation"):
            x = x + self.attn(layer_norm_fp32(x), mask)
            return x + self.mlp(layer_norm_fp32(x))
        # B×(G·6·D) → per-token B×L×6·D: group g modulates the tokens of sub-sequence g.
        mods = self.adaLN_modulation(cond).chunk(len(groups), dim=-1)
        per_token = torch.cat([m[:, None].expand(-1, n, -1) for m, n in zip(mods, groups)], dim=1)
        gate_msa, gate_mlp, shift_msa, scale_msa, shift_mlp, scale_mlp = per_token.chunk(6, dim=-1)
        x = x + gate_msa * self.attn(layer_norm_fp32(x) * (1 + scale_msa) + shift_msa, mask)
        return x + gate_mlp * self.mlp(layer_norm_fp32(x) * (1 + scale_mlp) + shift_mlp)


# --------------------------------------------------------------------------- data-dict modules
# Each module reads and writes entries of ``data`` named by its config; all tensors are batched.
def _sincos_2d(dim: int, rows: int, cols: int) -> torch.Tensor:
    """1×D×rows×cols table: ω_i = 10000^(−i/(D/4)), channels [sin aω, cos aω, sin bω, cos bω]
    with a the row and b the column index (posembs.py; the checkpoint stores it anyway)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4))
    a = torch.arange(rows, dtype=torch.float32)[:, None, None] * omega
    b = torch.arange(cols, dtype=torch.float32)[None, :, None] * omega
    a, b = a.expand(rows, cols, -1), b.expand(rows, cols, -1)
    table = torch.cat([a.sin(), a.cos(), b.sin(), b.cos()], dim=-1)
    return table.permute(2, 0, 1)[None]


class ChannelsOp(nn.Module):
    """``PerSampleOp`` with channels_first_to_last / channels_last_to_first."""

    def __init__(self, c: dict):
        super().__init__()
        op = str((c.get("per_sample_op") or {}).get("_target_", "")).rsplit(".", 1)[-1]
        if op not in ("channels_first_to_last", "channels_last_to_first"):
            raise ValueError(f"PerSampleOp {op!r} is not supported")
        self.to_last = op == "channels_first_to_last"
        self.read, self.write = c["read_key"], c["write_key"]

    def forward(self, data: dict) -> None:
        x = data[self.read]
        data[self.write] = x.permute(0, 2, 3, 1) if self.to_last else x.permute(0, 3, 1, 2)


class PatchEmbedder(nn.Module):
    """p×p patches of a B×H×W×C tensor, vector ordered [py, px, c], Linear → B×H/p×W/p×D."""

    def __init__(self, c: dict):
        super().__init__()
        self.p = _patch_size(c)
        self.patch_proj = nn.Linear(self.p * self.p * int_in_range("channels_in", c["channels_in"], 1, 1024),
                                    _dim(c))
        self.read, self.write = c["input_tensor_list_read_key"], c["patches_list_write_key"]

    def forward(self, data: dict) -> None:
        x = data[self.read]
        b, h, w, ch = x.shape
        p = self.p
        x = x.reshape(b, h // p, p, w // p, p, ch).permute(0, 1, 3, 2, 4, 5)
        data[self.write] = self.patch_proj(x.reshape(b, h // p, w // p, p * p * ch))


class PositionEmbedding(nn.Module):
    """``PositionalEmbeddingAdder``: a fixed 2D sin-cos table (``sincos``) or a learned 1D table
    (``learnable_sum``), stored as ``posembs`` and cropped to the input (``absolute``)."""

    def __init__(self, c: dict):
        super().__init__()
        kind, dim, sizes = c.get("posemb_type"), _dim(c), [int_in_range("max_sizes", s, 1, 4096)
                                                           for s in c["max_sizes"]]
        if c.get("posemb_scaling", "absolute") != "absolute":
            raise ValueError(f"posemb_scaling {c.get('posemb_scaling')!r} is not supported")
        if kind == "sincos" and len(sizes) == 2:
            self.posembs = nn.Parameter(_sincos_2d(dim, *sizes), requires_grad=False)
        elif kind == "learnable_sum" and len(sizes) == 1:
            self.posembs = nn.Parameter(0.02 * torch.randn(1, 1, dim, sizes[0]))
        else:
            raise ValueError(f"posemb_type {kind!r} over {len(sizes)}D is not supported")
        self.read, self.write = c["read_key"], c["write_key"]

    def forward(self, data: dict) -> None:
        x = data[self.read]
        if x.dim() == 4:  # B×h×w×D grid
            emb = self.posembs[0, :, :x.shape[1], :x.shape[2]].permute(1, 2, 0)
        else:             # B×N×D sequence
            emb = self.posembs[0, 0, :, :x.shape[1]].t()
        data[self.write] = x + emb.to(x.dtype)


class Registers(nn.Module):
    """``Registers1D``: the first n_max learned registers for every image (eval: all of them)."""

    def __init__(self, c: dict):
        super().__init__()
        self.n = int_in_range("n_max", c["n_max"], 1, 4096)
        self.registers = nn.Parameter(0.02 * torch.randn(self.n, _dim(c)))
        self.read, self.write = c["input_tensor_list_read_key"], c["registers_write_key"]

    def forward(self, data: dict) -> None:
        b = data[self.read].shape[0]
        data[self.write] = self.registers[None].expand(b, -1, -1)


class SequencePacker(nn.Module):
    """``BlockWiseSequencePacker``: concatenates sub-sequences and builds the attention mask.
    ``full``: all tokens see all; ``causal_last``: the first sub-sequence sees only itself, the last
    sees everything before it and itself causally. The official flex-attention padding to a multiple
    of 128 never reaches real tokens and is left out."""

    def __init__(self, c: dict):
        super().__init__()
        self.reads = list(c["input_list_read_keys"])
        self.mode = c.get("mask_mode", "full")
        if self.mode not in ("full", "causal_last") or (self.mode == "causal_last" and len(self.reads) != 2):
            raise ValueError(f"mask_mode {self.mode!r} over {len(self.reads)} sub-sequences is not supported")
        self.write, self.mask_write = c["packed_seq_write_key"], c["block_mask_write_key"]
        self.shapes_write = c["inner_packed_shapes_write_key"]
        self.groups_write = c.get("emb_packing_fn_write_key") if c.get("per_subseq_embs") else None

    def forward(self, data: dict) -> None:
        parts = [data[k] for k in self.reads]
        flat = [p.reshape(p.shape[0], -1, p.shape[-1]) for p in parts]
        lengths = [f.shape[1] for f in flat]
        data[self.write] = torch.cat(flat, dim=1)
        data[self.shapes_write] = [tuple(p.shape[1:-1]) for p in parts]
        if self.groups_write:
            data[self.groups_write] = lengths
        if self.mode == "full":
            data[self.mask_write] = None
            return
        n0, n1 = lengths
        device = flat[0].device
        mask = torch.zeros(n0 + n1, n0 + n1, dtype=torch.bool, device=device)
        mask[:n0, :n0] = True
        mask[n0:, :n0] = True
        mask[n0:, n0:] = torch.ones(n1, n1, dtype=torch.bool, device=device).tril()
        data[self.mask_write] = mask


class Transformer(nn.Module):
    """``FlexTransformer``: pre-norm blocks, no final norm; adaLN when it reads a condition."""

    def __init__(self, c: dict):
        super().__init__()
        dim, depth = _dim(c), int_in_range("depth", c["depth"], 1, 256)
        head_dim = int_in_range("head_dim", c.get("head_dim", 64), 1, 1024)
        mlp_ratio = float(c.get("mlp_ratio", 4.0))
        if not 0 < mlp_ratio <= 64:
            raise ValueError(f"mlp_ratio {mlp_ratio} is out of range")
        self.cond_read = c.get("adaLN_emb_read_key")
        groups = int_in_range("adaLN_expansion", c.get("adaLN_expansion", 1), 1, 16) if self.cond_read else 0
        self.blocks = nn.ModuleList([Block(dim, head_dim, mlp_ratio, groups) for _ in range(depth)])
        self.groups_read = c.get("adaLN_packing_fn_read_key")
        self.expansion = groups
        self.read, self.write = c["input_seq_read_key"], c["output_seq_write_key"]
        self.mask_read = c.get("block_mask_read_key")
        # Intermediate features feed REPA in training only; they are not computed here.

    def forward(self, data: dict) -> None:
        x = data[self.read]
        mask = data.get(self.mask_read) if self.mask_read else None
        cond, groups = None, None
        if self.cond_read:
            cond = data[self.cond_read]
            groups = data[self.groups_read] if self.groups_read else [x.shape[1]]
            if len(groups) != self.expansion:
                raise ValueError(f"adaLN_expansion {self.expansion} does not match the "
                                 f"{len(groups)} packed sub-sequences")
        for block in self.blocks:
            x = block(x, mask, cond, groups)
        data[self.write] = x


class SequenceUnpacker(nn.Module):
    """``SequenceUnpacker``: splits a packed sequence back into its sub-sequences' shapes."""

    def __init__(self, c: dict):
        super().__init__()
        self.read, self.writes = c["packed_seq_read_key"], list(c["inner_seq_write_keys"])
        self.shapes_read = c["inner_packed_shapes_read_key"]

    def forward(self, data: dict) -> None:
        if self.read not in data:  # e.g. the REPA features, which inference does not compute
            return
        x, start = data[self.read], 0
        for key, shape in zip(self.writes, data[self.shapes_read]):
            n = math.prod(shape)
            data[key] = x[:, start:start + n].reshape(x.shape[0], *shape, x.shape[-1])
            start += n


class LinearHead(nn.Module):
    """``LinearHead``: parameter-free LayerNorm, then Linear (no μP readout)."""

    def __init__(self, c: dict):
        super().__init__()
        if c.get("use_mup_readout", False):
            raise ValueError("use_mup_readout=true is not supported (the release uses false)")
        self.proj = nn.Linear(_dim(c), int_in_range("dim_out", c["dim_out"], 1, 4096))
        self.read, self.write = c["read_key"], c["write_key"]

    def forward(self, data: dict) -> None:
        data[self.write] = self.proj(layer_norm_fp32(data[self.read]))


class LinearLayer(nn.Module):
    """``LinearLayer``: a Linear with bias (the decoder's FSQ codes → width)."""

    def __init__(self, c: dict):
        super().__init__()
        self.proj = nn.Linear(int_in_range("dim_in", c["dim_in"], 1, 4096), _dim(c))
        self.read, self.write = c["read_key"], c["write_key"]

    def forward(self, data: dict) -> None:
        data[self.write] = self.proj(data[self.read])


class NestedDropout(nn.Module):
    """``MaskedNestedDropout`` at inference: register positions ≥ k_b become the learned
    ``dropout_mask_token`` (k_b per image from ``eval_keep_k``); the length never changes."""

    def __init__(self, c: dict):
        super().__init__()
        self.dropout_mask_token = nn.Parameter(0.02 * torch.randn(_dim(c)))
        self.key, self.keep_read = c["read_write_key"], c["eval_keep_k_read_key"]

    def forward(self, data: dict) -> None:
        x = data[self.key]
        keep = data.get(self.keep_read)
        if keep is None:
            return
        positions = torch.arange(x.shape[1], device=x.device)[None, :, None]
        k = torch.as_tensor(keep, device=x.device).reshape(-1, 1, 1)
        data[self.key] = torch.where(positions < k, x, self.dropout_mask_token.to(x.dtype))


class NullCondition(nn.Module):
    """``LearnedNullCond`` / ``ZeroNullCond``: images flagged in ``eval_dropout_mask`` (the
    unconditional pass of guidance) get the null condition in every register position."""

    def __init__(self, c: dict, learned: bool):
        super().__init__()
        if learned:
            self.nullcond = nn.Parameter(0.02 * torch.randn(_dim(c)))
        self.key, self.flag_read = c["read_write_key"], c["eval_drop_flag_read_key"]

    def forward(self, data: dict) -> None:
        x = data[self.key]
        flags = data.get(self.flag_read)
        if flags is None:
            return
        null = self.nullcond.to(x.dtype) if hasattr(self, "nullcond") else x.new_zeros(x.shape[-1])
        drop = torch.as_tensor(flags, device=x.device, dtype=torch.bool).reshape(-1, 1, 1)
        data[self.key] = torch.where(drop, null, x)


class TimestepEmbedder(nn.Module):
    """t ∈ [0, 1] → [cos, sin](t·1000/max_timestep·256^(−i/half)) → Linear, SiLU, Linear.
    The max period is 256 (time_embedding.py), not DiT's 10000."""

    def __init__(self, c: dict):
        super().__init__()
        dim = _dim(c)
        self.freq = int_in_range("frequency_embedding_size", c.get("frequency_embedding_size", 256),
                                 2, 8192)
        self.max_timestep = float(c.get("max_timestep", 1000.0))
        self.mlp = nn.Sequential(nn.Linear(self.freq, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.read, self.write = c["timesteps_read_key"], c["time_embedding_write_key"]

    def forward(self, data: dict) -> None:
        t = data[self.read].float()
        half = self.freq // 2
        # Arguments reach ~10³: the float32 rounding of t·freqs is part of the official numbers,
        # so the factor goes into freqs first, as time_embedding.py computes it.
        freqs = torch.exp(-math.log(256) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None] * (freqs * (1000.0 / self.max_timestep))[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if self.freq % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
        data[self.write] = self.mlp(emb.to(self.mlp[0].weight.dtype))


class ToPatchesHead(nn.Module):
    """``ToPatchesLinearHead``: LN, adaLN (shift, scale) from the time embedding, Linear to
    p·p·C, un-patchified ([py, px, c]) to B×H×W×C."""

    def __init__(self, c: dict):
        super().__init__()
        dim, self.p = _dim(c), _patch_size(c)
        self.channels = int_in_range("channels_out", c["channels_out"], 1, 1024)
        if c.get("use_mup_readout", False):
            raise ValueError("use_mup_readout=true is not supported (the release uses false)")
        self.cond_read = c.get("adaLN_emb_read_key")
        if self.cond_read:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.proj = nn.Linear(dim, self.p * self.p * self.channels)
        self.read, self.write = c["read_key"], c["write_key"]

    def forward(self, data: dict) -> None:
        x = layer_norm_fp32(data[self.read])  # B×h×w×D
        if self.cond_read:
            shift, scale = self.adaLN_modulation(data[self.cond_read]).chunk(2, dim=-1)
            x = x * (1 + scale[:, None, None]) + shift[:, None, None]
        b, h, w, _ = x.shape
        p = self.p
        x = self.proj(x).reshape(b, h, w, p, p, self.channels).permute(0, 1, 3, 2, 4, 5)
        data[self.write] = x.reshape(b, h * p, w * p, self.channels)


def _dim(c: dict) -> int:
    return int_in_range("dim", c["dim"], 1, 16384)


def _patch_size(c: dict) -> int:
    sizes = [int_in_range("patch_sizes", s, 1, 64) for s in c["patch_sizes"]]
    if len(sizes) != 2 or sizes[0] != sizes[1]:
        raise ValueError(f"only square 2D patches are supported, got {sizes}")
    return sizes[0]


# _target_ class name → module builder. Nothing else in a config is ever instantiated.
MODULES: dict[str, Callable[[dict], nn.Module]] = {
    "PerSampleOp": ChannelsOp,
    "PatchEmbedder": PatchEmbedder,
    "PositionalEmbeddingAdder": PositionEmbedding,
    "Registers1D": Registers,
    "BlockWiseSequencePacker": SequencePacker,
    "FlexTransformer": Transformer,
    "SequenceUnpacker": SequenceUnpacker,
    "LinearHead": LinearHead,
    "LinearLayer": LinearLayer,
    "MaskedNestedDropout": NestedDropout,
    "LearnedNullCond": lambda c: NullCondition(c, learned=True),
    "ZeroNullCond": lambda c: NullCondition(c, learned=False),
    "TimestepEmbedder": TimestepEmbedder,
    "ToPatchesLinearHead": ToPatchesHead,
}


def _target_name(entry: Any, where: str) -> str:
    if not isinstance(entry, dict) or not isinstance(entry.get("_target_"), str):
        raise ValueError(f"{where}: expected an object with a _target_")
    return entry["_target_"].rsplit(".", 1)[-1]


class ModuleSequence(nn.Module):
    """``SequentialModuleDictWrapper``: the config's modules, run in config order over ``data``."""

    def __init__(self, c: dict, where: str):
        super().__init__()
        entries = c.get("module_dict") if isinstance(c, dict) else None
        if not isinstance(entries, dict) or not entries:
            raise ValueError(f"{where}: no module_dict")
        if len(entries) > 64:
            raise ValueError(f"{where}: {len(entries)} modules is more than any FlexTok has")
        self.module_dict = nn.ModuleDict()
        for name, entry in entries.items():
            target = _target_name(entry, f"{where}.{name}")
            if target not in MODULES:
                raise ValueError(f"{where}.{name}: module {entry['_target_']!r} is not supported")
            try:
                self.module_dict[name] = MODULES[target](entry)
            except KeyError as err:
                raise ValueError(f"{where}.{name}: missing config key {err}") from None

    def forward(self, data: dict) -> dict:
        for module in self.module_dict.values():
            module(data)
        return data


# --------------------------------------------------------------------------- FSQ
class FSQ(nn.Module):
    """Finite scalar quantisation (Mentzer et al. 2023) as ``quantize_fsq.py`` does it.

    Each dimension d is bounded to L_d levels and rounded; values lie on the grid
    (c − L//2)/(L//2), c ∈ 0..L−1, and the id is Σ c_d·basis_d with basis = cumprod([1] + L[:-1])
    (dimension 0 least significant). No parameters."""

    def __init__(self, levels: list[int]):
        super().__init__()
        self.levels = [int_in_range("FSQ levels", v, 2, 1024) for v in levels]
        if not 1 <= len(self.levels) <= 16 or math.prod(self.levels) > 2 ** 31:
            raise ValueError(f"FSQ levels {levels} give an unsupported codebook")
        self.basis = [math.prod(self.levels[:i]) for i in range(len(self.levels))]
        self.codebook_size = math.prod(self.levels)

    def _tensor(self, values: list, ref: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype, device=ref.device)

    def bound(self, z: torch.Tensor) -> torch.Tensor:
        levels = self._tensor(self.levels, z)
        half_l = (levels - 1) * (1 + 1e-3) / 2
        offset = torch.where(levels % 2 == 0, 0.5, 0.0)
        shift = torch.atanh(offset / half_l)
        return torch.tanh(z + shift) * half_l - offset

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """B×N×d pre-quantisation values → (values, ids B×N, rounding margins B×N×d)."""
        z = z.float()
        b = self.bound(z)
        rounded = b.round()
        half_width = self._tensor([v // 2 for v in self.levels], z)
        values = (b + (rounded - b)) / half_width  # the official straight-through arithmetic
        codes = (rounded + half_width).long()
        ids = (codes * self._tensor(self.basis, z, torch.long)).sum(-1)
        margin = 0.5 - (b - rounded).abs()  # distance to the nearest rounding boundary
        return values, ids, margin

    def ids_to_values(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.long()
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.codebook_size):
            raise ValueError(f"FSQ ids must lie in 0..{self.codebook_size - 1}")
        basis = self._tensor(self.basis, ids, torch.long)
        levels = self._tensor(self.levels, ids, torch.long)
        codes = (ids[..., None] // basis) % levels
        half_width = levels // 2
        return (codes - half_width).float() / half_width.float()

    def level_values(self, d: int) -> list[float]:
        """The grid values dimension d can take."""
        L = self.levels[d]
        return [(c - L // 2) / (L // 2) for c in range(L)]


# --------------------------------------------------------------------------- sampler options
_DECODE_OPTIONS: contextvars.ContextVar[dict] = contextvars.ContextVar("flextok_decode_options",
                                                                       default={})


@contextlib.contextmanager
def decode_options(**options) -> Iterator[None]:
    """Defaults for every ``FlexTok.decode`` inside the block (seed, steps, guidance_scale, apg).

    For analyses that call ``tok.decode`` for you (ablation, k-sweeps): with one seed for the whole
    block every decode starts from the same noise, so differences come from the tokens alone.
    Context-local (each app request thread has its own)."""
    unknown = set(options) - {"seed", "steps", "guidance_scale", "apg"}
    if unknown:
        raise TypeError(f"unknown decode option(s): {', '.join(sorted(unknown))}")
    token = _DECODE_OPTIONS.set({**_DECODE_OPTIONS.get(), **{k: v for k, v in options.items()
                                                              if v is not None}})
    try:
        yield
    finally:
        _DECODE_OPTIONS.reset(token)


def decode_settings() -> dict[str, Any]:
    """The sampler settings a ``FlexTok.decode`` with no arguments uses here and now: the
    release's, overridden by any ``decode_options`` in effect."""
    return {**RELEASE_SAMPLING, "seed": DEFAULT_SEED, **_DECODE_OPTIONS.get()}


def noise_from_seed(seed: int, batch: int, shape: tuple[int, int, int], *, per_image: bool = False,
                    device=None, dtype=torch.float32) -> torch.Tensor:
    """Initial VAE-latent noise B×C×h×w from ``seed``.

    Default: one draw shared by every image of the batch, so a batch of variants of one image
    (ablations, prefixes) is decoded from the same noise and any chunking gives the same result.
    ``per_image=True``: one draw per image in batch order from one generator, exactly what the
    official ``MinRFPipeline`` draws with ``generator=torch.Generator().manual_seed(seed)``."""
    gen = torch.Generator().manual_seed(int(seed))
    if per_image:
        noise = torch.cat([torch.randn((1, *shape), generator=gen) for _ in range(batch)])
    else:
        noise = torch.randn((1, *shape), generator=gen).expand(batch, *shape)
    return noise.to(device=device, dtype=dtype)


# --------------------------------------------------------------------------- the tokenizer
class FlexTok(Tokenizer):
    family = "flextok"
    prefix_decodable = True
    stochastic_decode = True  # decode samples from noise: the app shows and varies its seed
    # A faster stand-in for ``sample_latents`` (sampling.flextok_fast.enable_fast_decode); None: off.
    fast_sampler = None
    # config.json's module order is execution order: save it unsorted (loading.save_pretrained).
    config_order_matters = True

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        self.config = {k: v for k, v in config.items() if k != VAE_CONFIG_KEY}
        for key in ("vae", "encoder", "decoder", "regularizer", "pipeline"):
            if not isinstance(config.get(key), dict):
                raise ValueError(f"FlexTok config: no {key!r} object")
        self.vae_options = config["vae"]
        self.vae = nn.Module()  # keys vae.vae.* as the official StableDiffusionVAE wrapper
        self.vae.vae = AutoencoderKL(flextok_vae_config(config))
        self.scaling_factor = float(self.vae_options.get("scaling_factor") or self.vae.vae.scaling_factor)
        self.sample_posterior = bool(self.vae_options.get("sample_posterior", True))
        self.encoder = ModuleSequence(config["encoder"], "encoder")
        self.decoder = ModuleSequence(config["decoder"], "decoder")
        reg = config["regularizer"]
        if _target_name(reg, "regularizer") != "FSQ":
            raise ValueError(f"regularizer {reg['_target_']!r} is not supported (FSQ only)")
        self.fsq = FSQ(list(reg["levels"]))
        self.data_keys = {  # data-dict names that the wrapper, FSQ and pipeline configs define
            "vae_latents": self.vae_options.get("vae_latents_write_key", "vae_latents"),
            "pre_fsq": reg["latents_read_key"], "quants": reg["quants_write_key"],
            "noised": config["pipeline"]["noised_images_read_key"],
            "timesteps": config["pipeline"]["timesteps_read_key"],
            "velocity": config["pipeline"]["reconst_write_key"],
            "cond": config["pipeline"].get("latents_read_key", reg["quants_write_key"]),
        }
        self.data_keys.update(self._decoder_flag_keys())
        registers = [m for m in self.encoder.module_dict.values() if isinstance(m, Registers)]
        patches = [m for m in self.encoder.module_dict.values() if isinstance(m, PatchEmbedder)]
        grids = [m for m in self.encoder.module_dict.values() if isinstance(m, PositionEmbedding)]
        if len(registers) != 1 or len(patches) != 1 or len(grids) != 1:
            raise ValueError("FlexTok encoder: expected one register, patch and position module")
        if grids[0].posembs.dim() != 4 or grids[0].posembs.shape[-2] != grids[0].posembs.shape[-1]:
            raise ValueError("FlexTok encoder: only a square 2D patch grid (max_sizes [n, n]) is supported")
        self.num_tokens = registers[0].n
        self.token_dim = len(self.fsq.levels)
        self.codebook_size = self.fsq.codebook_size
        self.num_codebooks = 1
        self.latent_channels = self.vae.vae.latent_channels
        self.latent_size = grids[0].posembs.shape[-1] * patches[0].p
        self.image_size = self.latent_size * self.vae.vae.downsample_factor
        self.last_decode: dict[str, Any] = {}
        if self.vae.vae.decoder.conv_in.weight.is_meta:  # the loader builds on meta first
            self.check_runs()

    def check_runs(self) -> None:
        """Run encode and one decoder step on meta tensors (no compute): a config whose modules
        read what no earlier module wrote, or get the wrong shapes, fails here, at load time.
        (huggingface_hub's own save_pretrained sorts config keys, which reorders the modules.)"""
        try:
            with torch.device("meta"), torch.no_grad():
                enc = self.encode(torch.zeros(1, 3, self.image_size, self.image_size))
                if tuple(enc.latents.shape) != (1, self.num_tokens, self.token_dim):
                    raise ValueError(f"encoder gives {tuple(enc.latents.shape)} FSQ inputs")
                shape = (1, self.latent_channels, self.latent_size, self.latent_size)
                v = self.velocity(torch.zeros(shape), torch.ones(1), enc.latents[:, :1])
                if tuple(v.shape) != shape:
                    raise ValueError(f"decoder gives {tuple(v.shape)}, expected {shape}")
        except (KeyError, RuntimeError, ValueError, TypeError, IndexError) as err:
            what = f"missing data entry {err}" if isinstance(err, KeyError) else str(err).splitlines()[0]
            raise ValueError("FlexTok config.json does not run in its module order "
                             f"({type(err).__name__}: {what}); the modules must be listed in execution "
                             "order (a config saved with sorted keys is not)") from None

    def _decoder_flag_keys(self) -> dict[str, str]:
        keys = {}
        for m in self.decoder.module_dict.values():
            if isinstance(m, NestedDropout):
                keys["keep_k"] = m.keep_read
            if isinstance(m, NullCondition):
                keys["drop_flag"] = m.flag_read
        if "keep_k" not in keys:
            raise ValueError("FlexTok decoder: no MaskedNestedDropout module (needed for prefixes)")
        return keys

    # ------------------------------------------------------------------ properties
    @property
    def is_discrete(self) -> bool:
        return True

    @property
    def fsq_levels(self) -> list[int]:
        return list(self.fsq.levels)

    @property
    def has_null_condition(self) -> bool:
        return "drop_flag" in self.data_keys

    def describe(self) -> str:
        return (f"flextok · {self.image_size}px · 1..{self.num_tokens} tokens · FSQ {self.fsq.levels} "
                f"({self.codebook_size} codes) · rectified-flow decoder over a "
                f"{self.latent_channels}-channel VAE")

    def _dtype(self) -> torch.dtype:
        return self.vae.vae.decoder.conv_in.weight.dtype

    # ------------------------------------------------------------------ encode
    def vae_encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images → the scaled VAE latents the encoder reads (posterior mode, or a draw from the
        global RNG when the config says ``sample_posterior``, as the official wrapper does)."""
        mean, logvar = self.vae.vae.encode(images.to(self._dtype()))
        z = self.vae.vae.sample(mean, logvar) if self.sample_posterior else mean
        return z * self.scaling_factor

    def encode(self, images: torch.Tensor) -> Encoded:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images B×3×H×W, got {tuple(images.shape)}")
        if images.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"this tokenizer takes {self.image_size}×{self.image_size} images, "
                             f"got {images.shape[-2]}×{images.shape[-1]}")
        latents = self.vae_encode(images)
        data = self.encoder({self.data_keys["vae_latents"]: latents})
        pre = data[self.data_keys["pre_fsq"]]
        values, ids, margin = self.fsq(pre)
        return Encoded(latents=values.to(pre.dtype), indices=ids,
                       extras={"pre_fsq": pre, "fsq_margin": margin, "vae_latents": latents})

    # ------------------------------------------------------------------ decode
    def token_values(self, tokens: torch.Tensor) -> torch.Tensor:
        """FSQ values B×k×d from ids B×k (or values, passed through), checked for shape."""
        if not torch.is_floating_point(tokens):
            if tokens.ndim != 2:
                raise ValueError(f"expected token ids B×k, got {tuple(tokens.shape)}")
            tokens = self.fsq.ids_to_values(tokens)
        if tokens.ndim != 3 or tokens.shape[-1] != self.token_dim:
            raise ValueError(f"expected FSQ values B×k×{self.token_dim}, got {tuple(tokens.shape)}")
        self.check_token_count(tokens.shape[1])
        return tokens

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, values: torch.Tensor,
                 keep_k: Optional[torch.Tensor] = None, uncond: Optional[torch.Tensor] = None,
                 decoder: Optional[nn.Module] = None) -> torch.Tensor:
        """One decoder call: the predicted velocity (≈ noise − clean latents) at x_t, time t (B,).

        ``values``: B×N×d conditioning codes (a prefix shorter than N is padded); ``keep_k`` (B,)
        how many are real (default: all given); ``uncond`` (B,) bool: the null condition.
        ``decoder``: a copy of ``self.decoder`` to run instead (the fast path's bf16 copy)."""
        decoder = self.decoder if decoder is None else decoder
        dtype = next(decoder.parameters()).dtype
        b, k = values.shape[:2]
        if k < self.num_tokens:
            values = torch.cat([values, values.new_zeros(b, self.num_tokens - k, values.shape[-1])], 1)
        if keep_k is None:
            keep_k = torch.full((b,), k, dtype=torch.long, device=values.device)
        data = {self.data_keys["cond"]: values.to(dtype), self.data_keys["keep_k"]: keep_k,
                self.data_keys["noised"]: x_t.to(dtype), self.data_keys["timesteps"]: t}
        if uncond is not None:
            if not self.has_null_condition:
                raise ValueError("this FlexTok has no null condition: guidance is unavailable")
            data[self.data_keys["drop_flag"]] = uncond
        return decoder(data)[self.data_keys["velocity"]]

    def sample_latents(self, values: torch.Tensor, noise: torch.Tensor, steps: int,
                       guidance_scale: float = 1.0, apg: bool = False,
                       progress: Optional[Callable[[int, int], None]] = None) -> torch.Tensor:
        """The official ``MinRFPipeline``: Euler from t = 1 (noise) to 0 on a uniform grid,
        x ← x − v/T; guidance (scale ≠ 1) adds a null-condition pass, combined by CFG or APG."""
        b, k = values.shape[:2]
        keep_k = torch.full((b,), k, dtype=torch.long, device=values.device)
        guided = guidance_scale != 1
        if guided:  # conditional and unconditional halves in one decoder call
            values2, keep2 = torch.cat([values, values]), torch.cat([keep_k, keep_k])
            flags = torch.arange(2 * b, device=values.device) >= b
        x = noise.to(self._dtype())
        momentum = torch.zeros_like(x, dtype=torch.float32)
        for i in range(steps, 0, -1):
            t = torch.full((b,), i / steps, device=x.device)
            if guided:
                v_c, v_u = self.velocity(torch.cat([x, x]), torch.cat([t, t]), values2, keep2,
                                         flags).float().chunk(2)
                if apg:
                    v, momentum = apg_velocity(v_c, v_u, guidance_scale, momentum)
                else:
                    v = v_u + guidance_scale * (v_c - v_u)
            else:
                v = self.velocity(x, t, values, keep_k).float()
            x = (x.float() - (1.0 / steps) * v).to(x.dtype)
            if progress is not None:
                progress(steps - i + 1, steps)
        return x

    def vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.vae.decode(latents.to(self._dtype()) / self.scaling_factor)

    def decode(self, latents: torch.Tensor, noise: Optional[torch.Tensor] = None,
               seed: Optional[int] = None, steps: Optional[int] = None,
               guidance_scale: Optional[float] = None, apg: Optional[bool] = None) -> torch.Tensor:
        """Decode a prefix: FSQ values B×k×d (``encode(...).latents[:, :k]``) or ids B×k → images
        B×3×H×W ≈[-1, 1] (not clamped).

        Sampler settings left as None come from ``decode_options`` if one is in effect, else the
        release's (20 steps, guidance 7.5 with APG). ``guidance_scale=1`` runs no guidance pass.
        ``noise`` (B×C×h×w) is the initial VAE-latent noise; without it the noise is drawn from
        ``seed`` (default 0; see ``noise_from_seed``). What was used is in ``self.last_decode``."""
        values = self.token_values(latents)
        b = values.shape[0]
        opts = decode_settings()
        steps = int_in_range("steps", opts["steps"] if steps is None else steps, 1, 1000)
        scale = float(opts["guidance_scale"] if guidance_scale is None else guidance_scale)
        if not math.isfinite(scale) or abs(scale) > 1e4:
            raise ValueError(f"guidance_scale must be a finite number, got {scale}")
        apg = bool(opts["apg"] if apg is None else apg)
        shape = (self.latent_channels, self.latent_size, self.latent_size)
        if noise is None:
            seed = int_in_range("seed", opts["seed"] if seed is None else seed, 0, 2 ** 63 - 1)
            noise = noise_from_seed(seed, b, shape, device=values.device)
        else:
            seed = None
            if tuple(noise.shape) != (b, *shape):
                raise ValueError(f"noise must be {b}×{'×'.join(map(str, shape))}, got {tuple(noise.shape)}")
        self.last_decode = {"seed": seed, "steps": steps, "guidance_scale": scale,
                            "apg": apg and scale != 1, "tokens": values.shape[1]}
        sampler = self.sample_latents if self.fast_sampler is None else self.fast_sampler.sample_latents
        x = sampler(values, noise.to(values.device), steps, scale, apg)
        return self.vae_decode(x)


def apg_velocity(v_c: torch.Tensor, v_u: torch.Tensor, scale: float, momentum: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive projected guidance (Sadat et al. 2024) as ``normalized_guidance`` does it, per image:
    momentum-averaged difference (momentum −0.5), its norm clipped to 2.5, and only its component
    orthogonal to v_c (projection in float64) added, times (scale − 1). Returns (v, momentum)."""
    momentum = (v_c - v_u) + APG_MOMENTUM * momentum
    dims = tuple(range(1, v_c.dim()))
    norm = momentum.norm(p=2, dim=dims, keepdim=True)
    diff = momentum * torch.minimum(torch.ones_like(norm), APG_NORM_THRESHOLD / norm)
    unit = F.normalize(v_c.double().flatten(1), dim=1).view_as(v_c)
    diff64 = diff.double()
    parallel = (diff64 * unit).sum(dim=dims, keepdim=True) * unit
    orthogonal = (diff64 - parallel).to(v_c.dtype)
    return v_c + (scale - 1) * orthogonal, momentum


# --------------------------------------------------------------------------- config, registry
# Key under which the loader hands over the diffusers config of a VAE named by ``vae.hf_hub_path``
# (read from that repo/folder); never part of ``FlexTok.config``.
VAE_CONFIG_KEY = "_vae_repo_config"


def flextok_vae_config(config: dict[str, Any]) -> dict[str, Any]:
    """The diffusers config of the VAE a FlexTok config describes: the VAE repo's own config when
    ``vae.hf_hub_path`` names one (the loader supplies it), else VAE_BASE_CONFIG with
    ``latent_channels`` and any ``vae_config_overrides``."""
    vae = config["vae"]
    if _target_name(vae, "vae") != "StableDiffusionVAE":
        raise ValueError(f"vae {vae['_target_']!r} is not supported (StableDiffusionVAE only)")
    if vae.get("hf_hub_path"):
        repo_config = config.get(VAE_CONFIG_KEY)
        if not isinstance(repo_config, dict):
            raise ValueError(f"this FlexTok's VAE lives in {vae['hf_hub_path']!r}: load it with "
                             "load_tokenizer, which fetches that VAE's config.json")
        return dict(repo_config)
    out = dict(VAE_BASE_CONFIG)
    out["latent_channels"] = vae.get("latent_channels", 4)
    overrides = vae.get("vae_config_overrides") or {}
    if not isinstance(overrides, dict):
        raise ValueError("vae.vae_config_overrides must be an object")
    out.update(overrides)
    return out


def vae_companion(config: dict[str, Any]) -> Optional[str]:
    """The VAE repo or folder a FlexTok config loads its VAE from (``vae.hf_hub_path``), if any."""
    vae = config.get("vae") or {}
    path = vae.get("hf_hub_path") if isinstance(vae, dict) else None
    return str(path) if path else None


def _is_flextok(config: dict) -> bool:
    enc = config.get("encoder")
    return isinstance(enc, dict) and "module_dict" in enc and "regularizer" in config \
        and "vae" in config


def _validate(config: dict) -> None:
    if config.get("decoder", {}).get("module_dict") is None:
        raise ValueError("FlexTok config: decoder has no module_dict")


def _attach_vae_config(config: dict, vae_config: dict) -> dict:
    if vae_config.get("_class_name") != "AutoencoderKL":
        raise ValueError(f"{config['vae']['hf_hub_path']!r} is not an AutoencoderKL (diffusers layout)")
    return {**config, VAE_CONFIG_KEY: vae_config}


register_family(Family("flextok", "tokenizer", _is_flextok, FlexTok, _validate,
                       companion=Companion(vae_companion, _attach_vae_config, "vae.vae.")))
