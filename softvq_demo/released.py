"""The released SoftVQ-VAE and TiTok model configurations, as data beside the catalogue.

``SOFTVQ_L64`` is the SoftVQ-L 64-token release's config.json; ``softvq_config("B" | "BL" | "L")``
its B / BL / L encoder-decoder variants. ``TITOK`` holds the TiTok-L-32 / B-64 / S-128 releases
(tokenizer and MaskGIT generator, in the official YAML's layout). ``tiny=True`` shrinks any of them
to a few layers at 64 px with the same structure, for tests and benchmarks that must run quickly.
"""
from __future__ import annotations

import copy

SOFTVQ_L64 = {
    "image_size": 256, "codebook_size": 8192, "codebook_embed_dim": 32, "codebook_l2_norm": True,
    "codebook_show_usage": True, "tau": 0.07, "num_codebooks": 4, "enc_type": "vit",
    "dec_type": "vit", "encoder_model": "vit_large_patch14_dinov2.lvd142m",
    "decoder_model": "vit_large_patch14_dinov2.lvd142m", "num_latent_tokens": 64,
    "to_pixel": "linear", "enc_patch_size": 16, "dec_patch_size": 16, "enc_drop_path_rate": 0.0,
    "dec_drop_path_rate": 0.0, "dec_cls_token": True, "use_rope": False, "vq_mean": 0.0, "vq_std": 1.0,
}
_VIT_B = "vit_base_patch14_dinov2.lvd142m"


def softvq_config(size: str, tiny: bool = False) -> dict:
    cfg = dict(SOFTVQ_L64)
    if size in ("B", "BL"):
        cfg["encoder_model"] = _VIT_B
    if size == "B":
        cfg["decoder_model"] = _VIT_B
    if tiny:
        small = {"embed_dim": 64, "depth": 2, "num_heads": 4}
        cfg.update(image_size=64, enc_model_kwargs=small, dec_model_kwargs=small, codebook_size=64,
                   num_latent_tokens=16, codebook_embed_dim=4, num_codebooks=2)
    return cfg


def _titok(size: str, tokens: int, gen: dict) -> dict:
    return {"model": {"vq_model": {"codebook_size": 4096, "token_size": 12, "use_l2_norm": True,
                                   "vit_enc_model_size": size, "vit_dec_model_size": size,
                                   "vit_enc_patch_size": 16, "vit_dec_patch_size": 16,
                                   "num_latent_tokens": tokens, "finetune_decoder": True},
                      "generator": gen},
            "dataset": {"preprocessing": {"crop_size": 256}}}


_BERT = {"model_type": "ViT", "hidden_size": 768, "num_hidden_layers": 24, "num_attention_heads": 16,
         "intermediate_size": 3072, "dropout": 0.1, "attn_drop": 0.1, "num_steps": 8,
         "class_label_dropout": 0.1, "condition_num_classes": 1000}
TITOK = {
    "TiTok-L-32": _titok("large", 32, dict(_BERT, image_seq_len=32, randomize_temperature=9.5,
                                           guidance_scale=4.5, guidance_decay="linear")),
    "TiTok-B-64": _titok("base", 64, dict(_BERT, image_seq_len=64, randomize_temperature=11.0,
                                          guidance_scale=3.0, guidance_decay="linear")),
    "TiTok-S-128": _titok("small", 128, dict(_BERT, model_type="UViT", hidden_size=1024,
                                             num_hidden_layers=20, intermediate_size=4096,
                                             num_steps=64, image_seq_len=128,
                                             randomize_temperature=2.8, guidance_scale=6.9,
                                             guidance_decay="power-cosine")),
}


def titok_config(name: str, tiny: bool = False) -> dict:
    cfg = copy.deepcopy(TITOK[name])
    if tiny:
        vq = cfg["model"]["vq_model"]
        arch = {"width": 64, "layers": 2, "heads": 4}
        vq.update(vit_enc_arch=arch, vit_dec_arch=arch, finetune_decoder=False, is_legacy=False,
                  codebook_size=64, num_latent_tokens=vq["num_latent_tokens"] // 4)
        cfg["dataset"]["preprocessing"]["crop_size"] = 64
        cfg["model"]["generator"].update(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=128,
                                         image_seq_len=vq["num_latent_tokens"],
                                         num_steps=min(cfg["model"]["generator"]["num_steps"], 8))
    return cfg
