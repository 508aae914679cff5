"""FlexTok's building blocks: the transformer and the small modules of its encoder and decoder.

The official ``SequentialModuleDictWrapper`` runs an ordered dict of such modules over a shared
``data`` dict; ``ModuleSequence`` does the same here, mapping each config ``_target_`` to one of
these classes by name (no hydra). ``flextok.py`` holds the tokenizer that wires them together.
Reference: ../shared/reference/flextok/SPEC.md.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .base import int_in_range

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
