"""Train a SoftVQ-VAE or a TiTok (VQ) tokenizer on textscenes v2 (open vocabulary).

SoftVQ: every token is softmax(ẑ·c / τ)-weighted codewords (l2-normalised), trained end to end
with text-weighted L1 + L2 (+ L1 on image gradients) and the SoftVQ entropy term (per-token
entropy down, codebook-average entropy up). The paper's alignment to a pretrained image encoder
is left out (none is available offline), and so is any classifier on the tokens: the text is
open-vocabulary, so the tokens can only learn how letters look, through the pixels.

TiTok: nearest l2-normalised codeword with the straight-through estimator, codebook + commitment
losses, dead codewords restarted from recent encoder outputs, non-legacy direct pixel head.
"""
from __future__ import annotations

import argparse
import copy
import math
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import nn

from ..data.textscenes2 import TextScenes2
from ..loading import load_tokenizer, save_pretrained
from ..models import build_model
from .common import Dist, all_reduce_mean, autocast, broadcast_flag
from .losses import reconstruction_loss, soft_vq_entropy_loss, vq_losses
from .loop import Trainer, fit

# Architecture presets: (enc width, enc depth, dec width, dec depth, heads), patch, tokens, d, V.
PRESETS: dict[str, dict[str, Any]] = {
    # The embedded models: ~3.8M parameters (14.6 MiB fp32), ~20 ms encode+decode on 2 CPU cores.
    "default": dict(width=192, depth=4, dec_width=192, dec_depth=4, heads=3, patch_size=8,
                    image_size=128, tokens=32, softvq_dim=32, titok_dim=16, codebook_size=1024),
    # For tests: a few thousand parameters at 32 px.
    "tiny": dict(width=32, depth=1, dec_width=32, dec_depth=1, heads=2, patch_size=8, image_size=32,
                 tokens=8, softvq_dim=8, titok_dim=8, codebook_size=64),
}
DINO_NAME = "vit_small_patch14_dinov2.lvd142m"  # the timm family the official SoftVQ models use


def _arch(args: argparse.Namespace) -> dict[str, Any]:
    a = dict(PRESETS[args.preset])
    for key in ("width", "depth", "dec_width", "dec_depth", "heads", "patch_size", "image_size", "tokens",
                "codebook_size"):
        v = getattr(args, key, None)
        if v is not None:
            a[key] = v
    if getattr(args, "token_dim", None):
        a["softvq_dim"] = a["titok_dim"] = args.token_dim
    return a


def softvq_config(args: argparse.Namespace) -> dict[str, Any]:
    """A SoftVQModel config.json with the official field names (plus enc/dec_model_kwargs)."""
    a = _arch(args)
    # LayerScale starts at 0.1 instead of DINOv2's 1e-5: these ViTs are shallow and trained briefly.
    enc = dict(embed_dim=a["width"], depth=a["depth"], num_heads=a["heads"], init_values=0.1)
    dec = dict(embed_dim=a["dec_width"], depth=a["dec_depth"], num_heads=a["heads"], init_values=0.1)
    return {
        "base_image_size": a["image_size"], "image_size": a["image_size"],
        "codebook_embed_dim": a["softvq_dim"], "codebook_l2_norm": True, "codebook_show_usage": False,
        "codebook_size": a["codebook_size"], "num_codebooks": 1, "num_latent_tokens": a["tokens"],
        "commit_loss_beta": 0.25, "tau": args.tau, "entropy_loss_ratio": args.entropy_weight,
        "vq_loss_ratio": 1.0, "kl_loss_weight": 0.0, "vq_mean": 0.0, "vq_std": 1.0,
        "enc_type": "vit", "encoder_model": DINO_NAME, "enc_patch_size": a["patch_size"],
        "enc_model_kwargs": enc, "enc_pretrained": False, "enc_tuning_method": "full",
        "enc_drop_path_rate": 0.0, "enc_token_drop": 0.0, "enc_token_drop_max": 0.6,
        "dec_type": "vit", "decoder_model": DINO_NAME, "dec_patch_size": a["patch_size"],
        "dec_model_kwargs": dec, "dec_pretrained": False, "dec_tuning_method": "full",
        "dec_drop_path_rate": 0.0, "dec_cls_token": True, "to_pixel": "linear",
        "encoder_ch_mult": [1, 1, 2, 2, 4], "decoder_ch_mult": [1, 1, 2, 2, 4], "z_channels": 256,
        "dropout_p": 0.0, "use_ape": True, "use_rope": False, "rope_mixed": False, "rope_theta": 10.0,
        "repa": False, "repa_align": "global", "repa_loss_weight": 0.0, "repa_model": "none",
        "repa_patch_size": 16, "repa_proj_dim": 0,
    }


def titok_config(args: argparse.Namespace) -> dict[str, Any]:
    """A TiTok config.json in the official nested layout (``vit_*_arch`` sizes the ViTs)."""
    a = _arch(args)
    return {
        "experiment": {"name": Path(args.out).name, "project": "softvq-demo textscenes"},
        "model": {"vq_model": {
            "quantize_mode": "vq", "codebook_size": a["codebook_size"], "token_size": a["titok_dim"],
            "use_l2_norm": True, "commitment_cost": args.commit, "num_latent_tokens": a["tokens"],
            "vit_enc_model_size": "small", "vit_dec_model_size": "small",
            "vit_enc_patch_size": a["patch_size"], "vit_dec_patch_size": a["patch_size"],
            "vit_enc_arch": {"width": a["width"], "layers": a["depth"], "heads": a["heads"]},
            "vit_dec_arch": {"width": a["dec_width"], "layers": a["dec_depth"], "heads": a["heads"]},
            "finetune_decoder": False, "is_legacy": False,
        }},
        "losses": {"quantizer_weight": args.vq_weight, "reconstruction_loss": "l1+l2",
                   "text_weight": args.text_weight},
        "dataset": {"preprocessing": {"crop_size": a["image_size"]}},
    }


def _to_images(u8: torch.Tensor) -> torch.Tensor:
    return u8.float().div(127.5).sub(1.0)


# --------------------------------------------------------------------------- trainers
class SoftVQTrainer(Trainer):
    compile_targets = ("encoder", "decoder")

    def __init__(self, model: nn.Module, args: argparse.Namespace):
        super().__init__(model, args)
        # The decoder ViT's patch embedding exists (official layout) but is never used.
        model.decoder.model.patch_embed.requires_grad_(False)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        m, a = self.model, self.args
        x = _to_images(batch["image"])
        z = m.quant_conv(self.fast("encoder")(x))
        q = m.quantize
        with torch.autocast(x.device.type, enabled=False):  # posteriors in fp32, not bf16
            probs = torch.softmax(q.logits(z.float()) / q.tau, dim=-1)
            zq = q.mix(probs)
        recon = self.fast("decoder")(m.post_quant_conv(zq), (m.image_size, m.image_size))
        out = reconstruction_loss(recon, x, batch["mask"], text_weight=a.text_weight,
                                  l2_weight=a.l2_weight, grad_weight=a.grad_weight)
        out.update(soft_vq_entropy_loss(probs, m.num_codebooks))
        loss = out["rec"] + a.entropy_weight * out["entropy"]
        with torch.no_grad():
            out["max_prob"] = probs.max(dim=-1).values.mean()
        out["loss"] = loss
        return out


class TiTokTrainer(Trainer):
    compile_targets = ("encoder", "decoder")

    def __init__(self, model: nn.Module, args: argparse.Namespace):
        super().__init__(model, args)
        v = model.codebook_size
        self.register_buffer("usage", torch.zeros(v), persistent=False)
        self.recent: Optional[torch.Tensor] = None

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        m, a = self.model, self.args
        x = _to_images(batch["image"])
        z = self.fast("encoder")((x + 1) / 2, m.latent_tokens)  # B×C×1×N, official layout
        z = z.squeeze(2).transpose(1, 2).float()               # B×N×C
        with torch.autocast(x.device.type, enabled=False):  # distances in fp32, as upstream
            zn = F.normalize(z, dim=-1) if m.quantize.use_l2_norm else z
            codebook = m.quantize.codebook()                   # V×C (normalised), fp32
            flat = zn.reshape(-1, zn.shape[-1])
            with torch.no_grad():
                dist = flat.pow(2).sum(1, keepdim=True) + codebook.pow(2).sum(1) - 2 * flat @ codebook.t()
                idx = dist.argmin(dim=1)
            codes = codebook[idx].view_as(zn)
            out = vq_losses(zn, codes, a.commit)
            z_st = zn + (codes - zn).detach()
        recon = self.fast("decoder")(z_st.to(m.decoder.decoder_embed.weight.dtype)).float() * 2 - 1
        out.update(reconstruction_loss(recon, x, batch["mask"], text_weight=a.text_weight,
                                       l2_weight=a.l2_weight, grad_weight=a.grad_weight))
        loss = out["rec"] + a.vq_weight * out["vq"]
        with torch.no_grad():
            counts = torch.bincount(idx, minlength=m.codebook_size).float()
            self.usage += counts
            p = counts / counts.sum()
            out["perplexity"] = torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())
            self.recent = flat.detach()[torch.randperm(flat.shape[0], device=flat.device)[:4096]]
        out["loss"] = loss
        return out

    @torch.no_grad()
    def after_step(self, step: int, progress: float, d: Dist) -> dict:
        """Every ``restart_every`` steps (until 80% of training), codewords unused since the last
        check are moved onto recent encoder outputs, so the whole codebook stays alive."""
        every = self.args.restart_every
        if not every or step % every or self.recent is None:
            return {}
        usage = all_reduce_mean(self.usage, d)
        used = float((usage > 0).float().mean())
        dead = (usage == 0).nonzero().flatten()
        restarted = 0
        if broadcast_flag(progress < 0.8 and dead.numel() > 0, d):
            weight = self.model.quantize.embedding.weight
            pick = torch.randint(0, self.recent.shape[0], (dead.numel(),), device=weight.device)
            new = self.recent[pick] + 0.01 * torch.randn_like(self.recent[pick])
            weight.data[dead] = new.to(weight.dtype)
            if d.enabled:
                torch_dist.broadcast(weight.data, 0)
            restarted = int(dead.numel())
        self.usage.zero_()
        return dict(code_usage=round(used, 4), restarted=restarted)


# --------------------------------------------------------------------------- evaluation / export
@torch.no_grad()
def heldout_psnr(model: nn.Module, n: int, device: torch.device, image_size: int) -> dict[str, float]:
    """PSNR (whole image and inside the text mask) on the first ``n`` held-out textscenes images."""
    ds = TextScenes2("heldout", image_size=image_size)
    model.eval()
    mse_all, mse_text, total = 0.0, 0.0, 0
    for start in range(0, n, 64):
        items = [ds[i] for i in range(start, min(n, start + 64))]
        x = torch.stack([it["image"] for it in items]).to(device)
        mask = torch.stack([it["mask"] for it in items]).to(device)[:, None].float()
        with autocast(device):
            y = model.decode(model.encode(x).latents)
        err = (y.float().clamp(-1, 1) - x).pow(2)
        per = err.mean(dim=(1, 2, 3))
        mse_all += float((10 * torch.log10(4.0 / per.clamp_min(1e-10))).sum())
        text = (err * mask).sum(dim=(1, 2, 3)) / (mask.sum(dim=(1, 2, 3)) * 3).clamp_min(1)
        mse_text += float((10 * torch.log10(4.0 / text.clamp_min(1e-10))).sum())
        total += x.shape[0]
    return dict(psnr=mse_all / total, text_psnr=mse_text / total)


@torch.no_grad()
def latent_stats(model: nn.Module, images_u8: torch.Tensor, device: torch.device) -> tuple[float, float]:
    """Scalar mean/std of the quantized latents (vq_mean / vq_std for the generator)."""
    model.eval()
    s, s2, n = 0.0, 0.0, 0
    for start in range(0, images_u8.shape[0], 256):
        x = _to_images(images_u8[start:start + 256].to(device))
        with autocast(device):
            z = model.encode(x).latents.float()
        s += float(z.sum())
        s2 += float(z.pow(2).sum())
        n += z.numel()
    mean = s / n
    return mean, math.sqrt(max(s2 / n - mean * mean, 1e-12))


def make_export(args: argparse.Namespace, d: Dist):
    out = Path(args.out)

    def export(raw: nn.Module, ema: Optional[nn.Module], info: dict) -> dict:
        device = d.device
        raw_mode = raw.training
        result: dict[str, Any] = {}
        if info["final"] and ema is not None and args.eval_n > 0:
            # Keep whichever reconstructs held-out images better (EMA almost always).
            scores = {name: heldout_psnr(m, args.eval_n, device, m.image_size)
                      for name, m in (("raw", raw), ("ema", ema))}
            choice = max(scores, key=lambda k: scores[k]["psnr"])
            result.update(heldout=scores, exported=choice)
            model = ema if choice == "ema" else raw
        else:
            model = ema if ema is not None else raw
        model = copy.deepcopy(model).eval()
        if model.family == "softvq":
            images = info["replay"].data["image"][:min(info["replay"].count, args.stats_n)]
            mean, std = latent_stats(model, images, device)
            model.config["vq_mean"], model.config["vq_std"] = mean, std
            model.latent_mean, model.latent_std = mean, std
            result.update(vq_mean=mean, vq_std=std)
        if info["final"] and args.eval_n > 0 and "heldout" not in result:
            result["heldout"] = {"model": heldout_psnr(model, args.eval_n, device, model.image_size)}
        if getattr(args, "export_dtype", "fp32") == "fp16":
            model = model.half()  # half the file; loaders copy it into fp32 models
        save_pretrained(model, out)
        raw.train(raw_mode)
        return result

    return export


def build_tokenizer(args: argparse.Namespace) -> nn.Module:
    config = softvq_config(args) if args.family == "softvq" else titok_config(args)
    model = build_model(config, "tokenizer")
    if args.init_from:
        src = load_tokenizer(args.init_from, device="cpu")
        model.load_state_dict(init_state(model, src), strict=True)
    return model


def init_state(model: nn.Module, src: nn.Module, noise: float = 0.02) -> dict[str, torch.Tensor]:
    """``model``'s state dict filled from ``src`` (a trained tokenizer of the same family): equal
    shapes are copied; tensors that differ only along a token axis (``src.num_tokens`` →
    ``model.num_tokens``: latent tokens and their position embeddings) are tiled along it, with
    a little noise so that the copies do not stay identical; anything else keeps its fresh init."""
    own, theirs = model.state_dict(), src.state_dict()
    n_old, n_new = int(src.num_tokens), int(model.num_tokens)
    gen = torch.Generator().manual_seed(0)
    out = {}
    for k, v in own.items():
        w = theirs.get(k)
        if w is not None and w.shape == v.shape:
            out[k] = w.to(v.dtype)
            continue
        if w is not None and w.ndim == v.ndim:
            diff = [i for i, (a, b) in enumerate(zip(w.shape, v.shape)) if a != b]
            if len(diff) == 1 and w.shape[diff[0]] == n_old and v.shape[diff[0]] == n_new:
                reps = [1] * v.ndim
                reps[diff[0]] = -(-n_new // n_old)
                tiled = w.float().repeat(*reps).narrow(diff[0], 0, n_new)
                out[k] = (tiled + noise * tiled.std() * torch.randn(tiled.shape, generator=gen)).to(v.dtype)
                continue
        out[k] = v
    return out


def train_tokenizer(args: argparse.Namespace, d: Dist) -> dict:
    model = build_tokenizer(args)
    if d.is_main:
        n = sum(t.numel() for t in model.state_dict().values())
        print(f"{args.family} tokenizer: {n / 1e6:.2f}M parameters ({n * 4 / 2**20:.1f} MiB fp32), "
              f"{model.num_tokens} tokens × {model.token_dim}, codebook {model.codebook_size}", flush=True)
    trainer = (SoftVQTrainer if args.family == "softvq" else TiTokTrainer)(model, args)
    s = model.image_size
    fields = {"image": ((3, s, s), torch.uint8), "mask": ((s, s), torch.bool), "label": ((), torch.long)}

    def process(batch):
        return dict(image=batch[0], mask=batch[1], label=batch[2])

    return fit(trainer, args, d, image_size=s, replay_fields=fields, process=process,
               export=make_export(args, d), desc=f"train {args.family}")
