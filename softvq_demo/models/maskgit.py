"""TiTok's MaskGIT generator (``ImageBert`` in bytedance/1d-tokenizer ``modeling/maskgit.py``).

A bidirectional transformer predicts every masked image token of a class-conditional sequence.
The official model is a Hugging Face ``BertModel`` (absolute positions, exact GELU, post-norm
LayerNorm with eps 1e-12, no pooler) plus ``model.lm_head``. We write the same blocks in plain
PyTorch, with exactly BERT's parameter names (``model.embeddings.*``, ``model.encoder.layer.i.*``,
``model.lm_head.*``), so released checkpoints load unchanged and ``transformers`` is not needed.

Token space (V = codebook size, K = classes):
    0..V-1 image tokens · V mask · V+1..V+K class c ↦ V+1+c · V+1+K "no class" (for CFG).

TiTok-S-128's released generator is a U-ViT (``model_type: UViT``, upstream ``UViTBert``): same
token space and interface, long skip connections instead of BERT. It is built by ``UViTMaskGIT``.
"""
from __future__ import annotations

import copy
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from .base import Generator, int_in_range
from .registry import Family, register_family

LAYER_NORM_EPS = 1e-12  # BERT's


# --------------------------------------------------------------------------- BERT, by its names
class BertEmbeddings(nn.Module):
    def __init__(self, vocab: int, hidden: int, max_positions: int, dropout: float):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, hidden)
        self.position_embeddings = nn.Embedding(max_positions, hidden)
        # BERT's segment embeddings; the generator always uses segment 0 but the row is trained.
        self.token_type_embeddings = nn.Embedding(2, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=LAYER_NORM_EPS)
        self.dropout = nn.Dropout(dropout)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.word_embeddings(ids) + self.token_type_embeddings.weight[0]
        x = x + self.position_embeddings(positions)
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.dropout_p = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, h = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:  # B×N×H → B×heads×N×head_dim
            return t.view(b, n, self.heads, h // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.query(x)), split(self.key(x)),
                                             split(self.value(x)),
                                             dropout_p=self.dropout_p if self.training else 0.0)
        return out.transpose(1, 2).reshape(b, n, h)


class BertSelfOutput(nn.Module):
    def __init__(self, hidden: int, dropout: float):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=LAYER_NORM_EPS)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)  # post-norm, as BERT


class BertAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, dropout: float, attn_dropout: float):
        super().__init__()
        self.self = BertSelfAttention(hidden, heads, attn_dropout)  # "self" is BERT's key name
        self.output = BertSelfOutput(hidden, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x), x)


class BertIntermediate(nn.Module):
    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.dense = nn.Linear(hidden, intermediate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))  # exact (erf) GELU: BERT's "gelu"


class BertOutput(BertSelfOutput):
    def __init__(self, hidden: int, intermediate: int, dropout: float):
        super().__init__(hidden, dropout)
        self.dense = nn.Linear(intermediate, hidden)


class BertLayer(nn.Module):
    def __init__(self, hidden: int, heads: int, intermediate: int, dropout: float, attn_dropout: float):
        super().__init__()
        self.attention = BertAttention(hidden, heads, dropout, attn_dropout)
        self.intermediate = BertIntermediate(hidden, intermediate)
        self.output = BertOutput(hidden, intermediate, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attention(x)
        return self.output(self.intermediate(x), x)


class BertEncoder(nn.Module):
    def __init__(self, layers: int, **block):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(**block) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x)
        return x


class ImageBertBody(nn.Module):
    """What upstream keeps in ``self.model``: BertModel without pooler, plus ``lm_head``."""

    def __init__(self, vocab: int, codebook_size: int, seq_len: int, g: dict[str, Any]):
        super().__init__()
        hidden = int(g["hidden_size"])
        self.embeddings = BertEmbeddings(vocab, hidden, seq_len + 1, float(g.get("dropout", 0.1)))
        self.encoder = BertEncoder(int(g["num_hidden_layers"]), hidden=hidden,
                                   heads=int(g["num_attention_heads"]),
                                   intermediate=int(g["intermediate_size"]),
                                   dropout=float(g.get("dropout", 0.1)),
                                   attn_dropout=float(g.get("attn_drop", 0.1)))
        self.lm_head = nn.Linear(hidden, codebook_size)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.encoder(self.embeddings(ids))[:, 1:])  # drop the class position


# --------------------------------------------------------------------------- the generator
class MaskGIT(Generator):
    """``gen(input_ids, class_labels)`` → conditional logits B×N×V over image tokens.

    ``input_ids`` B×N hold image ids and ``mask_token_id`` (= V) for unknown positions.
    ``drop_class=True`` (or ``class_labels=None``) gives the unconditional logits; a bool tensor
    of shape B drops the class per sample, so the sampler runs cond and uncond in one batch."""

    family = "maskgit"
    # Written by old transformers versions (before 4.31 made it non-persistent); we count positions.
    training_only_prefixes = ("model.embeddings.position_ids",)

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        self.config = copy.deepcopy(config)
        g = generator_config(config)
        self.codebook_size = int(config["model"]["vq_model"]["codebook_size"])
        self.num_classes = int(g["condition_num_classes"])
        self.num_tokens = int(g["image_seq_len"])
        self.mask_token_id = self.codebook_size
        self.no_class_id = self.codebook_size + 1 + self.num_classes
        self.vocab_size = self.codebook_size + self.num_classes + 2
        names = config.get("class_names", g.get("class_names"))
        self.class_names = list(names) if names else None
        # Sampling defaults of the release (sampling/maskgit.py reads them).
        self.num_steps = int(g.get("num_steps", 8))
        self.guidance_scale = float(g.get("guidance_scale", 3.0))
        self.guidance_decay = str(g.get("guidance_decay", "constant"))
        self.randomize_temperature = float(g.get("randomize_temperature", 4.5))
        self._build_body(g)

    def _build_body(self, g: dict[str, Any]) -> None:
        self.model = ImageBertBody(self.vocab_size, self.codebook_size, self.num_tokens, g)

    def class_tokens(self, class_labels: Optional[torch.Tensor], batch: int, device: torch.device,
                     drop_class: Union[bool, torch.Tensor] = False) -> torch.Tensor:
        """Class ids → their token ids (B), "no class" where dropped."""
        no_class = torch.full((batch,), self.no_class_id, dtype=torch.long, device=device)
        if class_labels is None:
            return no_class
        labels = torch.as_tensor(class_labels, device=device).long().reshape(-1)
        if labels.shape[0] != batch:
            raise ValueError(f"{labels.shape[0]} class labels for {batch} sequences")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"class labels must be in 0..{self.num_classes - 1}")
        tokens = labels + self.codebook_size + 1
        drop = torch.as_tensor(drop_class, device=device).bool().expand(batch)
        return torch.where(drop, no_class, tokens)

    def forward(self, input_ids: torch.Tensor, class_labels: Optional[torch.Tensor] = None,
                drop_class: Union[bool, torch.Tensor] = False) -> torch.Tensor:
        ids = input_ids.reshape(input_ids.shape[0], -1).long()
        if ids.shape[1] != self.num_tokens:
            raise ValueError(f"expected {self.num_tokens} tokens per sequence, got {ids.shape[1]}")
        cls = self.class_tokens(class_labels, ids.shape[0], ids.device, drop_class)
        return self.body(torch.cat([cls[:, None], ids], dim=1))

    def body(self, ids: torch.Tensor) -> torch.Tensor:
        """Full sequences (class token first) → logits of the N image positions."""
        return self.model(ids)


# --------------------------------------------------------------------------- U-ViT variant
class UViTAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))


class UViTMlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class UViTBlock(nn.Module):
    """Pre-norm block; blocks of the second half first fuse a long skip: Linear(2D → D)."""

    def __init__(self, dim: int, heads: int, mlp_hidden: int, skip: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = UViTAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = UViTMlp(dim, mlp_hidden)
        self.skip_linear = nn.Linear(2 * dim, dim) if skip else None

    def forward(self, x: torch.Tensor, skip: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.skip_linear is not None:
            x = self.skip_linear(torch.cat([x, skip], dim=-1))
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class UViTMaskGIT(MaskGIT):
    """Upstream ``UViTBert`` (TiTok-S-128's generator): top-level keys ``embeddings``,
    ``pos_embed``, ``in_blocks``, ``mid_block``, ``out_blocks``, ``norm``, ``lm_head``.
    Not covered by our fixtures: built from a reading of the official code."""

    training_only_prefixes = ()

    def _build_body(self, g: dict[str, Any]) -> None:
        dim, heads = int(g["hidden_size"]), int(g["num_attention_heads"])
        mlp_hidden = int(dim * (int(g["intermediate_size"]) / dim))
        half = int(g["num_hidden_layers"]) // 2
        self.embeddings = nn.Embedding(self.vocab_size, dim)
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, self.num_tokens + 1, dim))
        self.in_blocks = nn.ModuleList(UViTBlock(dim, heads, mlp_hidden) for _ in range(half))
        self.mid_block = UViTBlock(dim, heads, mlp_hidden)
        self.out_blocks = nn.ModuleList(UViTBlock(dim, heads, mlp_hidden, skip=True)
                                        for _ in range(half))
        self.norm = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, self.codebook_size)

    def body(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(ids) + self.pos_embed[:, :ids.shape[1]]
        skips = []
        for blk in self.in_blocks:
            x = blk(x)
            skips.append(x)
        x = self.mid_block(x)
        for blk in self.out_blocks:
            x = blk(x, skips.pop())
        return self.lm_head(self.norm(x)[:, 1:])


# --------------------------------------------------------------------------- registry
GUIDANCE_DECAYS = ("constant", "linear", "power-cosine")


def generator_config(config: dict[str, Any]) -> dict[str, Any]:
    return config["model"]["generator"]


def detect(config: dict[str, Any]) -> bool:
    model = config.get("model") if isinstance(config, dict) else None
    return isinstance(model, dict) and isinstance(model.get("generator"), dict) \
        and isinstance(model.get("vq_model"), dict)


def validate(config: dict[str, Any]) -> None:
    try:
        g = generator_config(config)
        codebook = config["model"]["vq_model"]["codebook_size"]
    except (KeyError, TypeError) as err:
        raise ValueError(f"MaskGIT config lacks {err} (needs model.generator and "
                         "model.vq_model.codebook_size)") from err
    kind = g.get("model_type", "ViT")
    if kind not in ("ViT", "UViT"):
        raise ValueError(f"model.generator.model_type {kind!r}: expected 'ViT' or 'UViT'")
    int_in_range("model.vq_model.codebook_size", codebook, 2, 1 << 20)
    hidden = int_in_range("model.generator.hidden_size", g.get("hidden_size"), 8, 8192)
    heads = int_in_range("model.generator.num_attention_heads", g.get("num_attention_heads"), 1, 256)
    if hidden % heads:
        raise ValueError(f"hidden_size {hidden} is not divisible by num_attention_heads {heads}")
    int_in_range("model.generator.num_hidden_layers", g.get("num_hidden_layers"), 1, 128)
    int_in_range("model.generator.intermediate_size", g.get("intermediate_size"), 1, 65536)
    int_in_range("model.generator.image_seq_len", g.get("image_seq_len"), 1, 4096)
    int_in_range("model.generator.condition_num_classes", g.get("condition_num_classes"), 1, 100_000)
    int_in_range("model.generator.num_steps", g.get("num_steps", 8), 1, 1024)
    if g.get("guidance_decay", "constant") not in GUIDANCE_DECAYS:
        raise ValueError(f"model.generator.guidance_decay {g.get('guidance_decay')!r}: expected one "
                         f"of {GUIDANCE_DECAYS}")


def build(config: dict[str, Any]) -> MaskGIT:
    cls = UViTMaskGIT if generator_config(config).get("model_type", "ViT") == "UViT" else MaskGIT
    return cls(config)


register_family(Family(name="maskgit", kind="generator", detect=detect, build=build,
                       validate=validate))

__all__ = ["MaskGIT", "UViTMaskGIT", "GUIDANCE_DECAYS"]
