"""Train a class-conditional generator on the tokens of a frozen tokenizer.

- SiT on a SoftVQ tokenizer's normalised latents ((z − vq_mean) / vq_std): flow matching on the
  linear path, velocity prediction, labels dropped to the null class (id = num_classes) with
  probability 0.1 for classifier-free guidance.
- MaskGIT (TiTok's ImageBert) on a TiTok VQ tokenizer's ids: masked-token cross-entropy (label
  smoothing 0.1) with MaskGIT's cosine mask schedule, class token dropped with probability 0.1.

Rendered images are encoded on the fly by the frozen tokenizer (bf16 on CUDA) as they arrive and
kept in a device-side buffer of tokens, so the generator's steps never wait on rendering.
"""
from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from ..data.textscenes2 import CLASS_WORDS
from ..loading import load_generator, load_tokenizer, save_pretrained
from ..models import build_model
from .common import Dist, autocast
from .losses import flow_matching_loss, masked_token_loss
from .loop import Trainer, fit

PRESETS: dict[str, dict[str, Any]] = {
    # SiT: ~3.5M parameters (13 MiB); MaskGIT: ~3.1M (12 MiB). Both far under the CPU budget.
    "default": dict(sit_width=192, sit_depth=5, maskgit_width=192, maskgit_depth=6, heads=3),
    "tiny": dict(sit_width=32, sit_depth=1, maskgit_width=32, maskgit_depth=1, heads=2),
}


def _arch(args: argparse.Namespace) -> dict[str, int]:
    a = dict(PRESETS[args.preset])
    fam = args.family
    if args.width:
        a[f"{fam}_width"] = args.width
    if args.depth:
        a[f"{fam}_depth"] = args.depth
    if args.heads:
        a["heads"] = args.heads
    return dict(width=a[f"{fam}_width"], depth=a[f"{fam}_depth"], heads=a["heads"])


def sit_config(args: argparse.Namespace, tok: nn.Module, class_names: list[str]) -> dict[str, Any]:
    a = _arch(args)
    return dict(input_size=tok.num_tokens, in_channels=tok.token_dim, num_classes=len(class_names),
                patch_size=1, vae_1d=True, mlp_ratio=4.0, class_dropout_prob=args.label_dropout,
                learn_sigma=False, use_cfg=True, path_type="linear", depth=a["depth"],
                hidden_size=a["width"], num_heads=a["heads"], fused_attn=True, qk_norm=False,
                class_names=list(class_names), tokenizer=Path(args.tokenizer).name,
                tags=["SiT", "textscenes", f"{tok.num_tokens} tokens"])


def maskgit_config(args: argparse.Namespace, tok: nn.Module, class_names: list[str]) -> dict[str, Any]:
    a = _arch(args)
    return {
        "experiment": {"name": Path(args.out).name, "tokenizer": Path(args.tokenizer).name},
        "model": {
            "vq_model": {"codebook_size": tok.codebook_size, "num_latent_tokens": tok.num_tokens,
                         "token_size": tok.token_dim},
            "generator": {
                "model_type": "ViT", "hidden_size": a["width"], "num_hidden_layers": a["depth"],
                "num_attention_heads": a["heads"], "intermediate_size": 4 * a["width"],
                "dropout": args.dropout, "attn_drop": args.dropout, "class_label_dropout": args.label_dropout,
                "image_seq_len": tok.num_tokens, "condition_num_classes": len(class_names),
                "num_steps": args.num_steps, "guidance_scale": args.guidance_scale,
                "guidance_decay": args.guidance_decay, "randomize_temperature": args.temperature,
            },
        },
        "losses": {"label_smoothing": args.label_smoothing, "mask_schedule": "cosine"},
        "dataset": {"preprocessing": {"crop_size": tok.image_size}},
        "class_names": list(class_names),
    }


def bert_init(module: nn.Module) -> None:
    """BERT's initialisation (normal 0.02, zero biases, unit LayerNorms), as ImageBert uses."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class SiTTrainer(Trainer):
    compile_targets = ("",)
    data_mode = "class"

    def __init__(self, model: nn.Module, args: argparse.Namespace):
        super().__init__(model, args)
        model.pos_embed.requires_grad_(False)  # frozen sin-cos table, as in SiT

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return flow_matching_loss(self.fast(), batch["tokens"], batch["label"],
                                  num_classes=self.model.num_classes, label_dropout=self.args.label_dropout)


class MaskGITTrainer(Trainer):
    compile_targets = ("",)
    data_mode = "class"

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return masked_token_loss(self.fast(), batch["tokens"], batch["label"], mask_id=self.model.mask_token_id,
                                 label_dropout=self.args.label_dropout,
                                 label_smoothing=self.args.label_smoothing)


def make_export(args: argparse.Namespace, d: Dist):
    out = Path(args.out)

    def export(raw: nn.Module, ema: Optional[nn.Module], info: dict) -> dict:
        model = copy.deepcopy(ema if ema is not None else raw).eval()
        if getattr(args, "export_dtype", "fp32") == "fp16":
            model = model.half()
        save_pretrained(model, out)
        return {}

    return export


def build_generator(args: argparse.Namespace, tok: nn.Module, class_names: list[str]) -> nn.Module:
    if args.family == "sit":
        if tok.family != "softvq" and not getattr(tok, "is_vae", False):
            raise SystemExit("SiT needs a continuous tokenizer (SoftVQ)")
        model = build_model(sit_config(args, tok, class_names), "generator")
    else:
        if not tok.is_discrete:
            raise SystemExit("MaskGIT needs a discrete (VQ) tokenizer (TiTok)")
        model = build_model(maskgit_config(args, tok, class_names), "generator")
        bert_init(model)
    if args.init_from:
        src = load_generator(args.init_from, device="cpu")
        model.load_state_dict(src.state_dict())
    return model


def train_generator(args: argparse.Namespace, d: Dist) -> dict:
    tok = load_tokenizer(args.tokenizer, device=d.device)
    class_names = list(CLASS_WORDS)
    model = build_generator(args, tok, class_names)
    if d.is_main:
        n = sum(t.numel() for t in model.state_dict().values())
        print(f"{args.family} generator on {args.tokenizer}: {n / 1e6:.2f}M parameters "
              f"({n * 4 / 2**20:.1f} MiB fp32), {model.num_tokens} tokens, {model.num_classes} classes",
              flush=True)
    if args.family == "sit":
        trainer: Trainer = SiTTrainer(model, args)
        fields = {"tokens": ((tok.num_tokens, tok.token_dim), torch.float32), "label": ((), torch.long)}
    else:
        trainer = MaskGITTrainer(model, args)
        fields = {"tokens": ((tok.num_tokens,), torch.long), "label": ((), torch.long)}

    @torch.no_grad()
    def process(batch):
        x = batch[0].to(d.device, non_blocking=True).float().div(127.5).sub(1.0)
        with autocast(d.device):
            enc = tok.encode(x)
        tokens = tok.normalize(enc.latents.float()) if args.family == "sit" else enc.indices.long()
        return dict(tokens=tokens, label=batch[2])

    return fit(trainer, args, d, image_size=tok.image_size, replay_fields=fields, process=process,
               export=make_export(args, d), desc=f"train {args.family}")
