"""One-D-Piece (turingmotors/One-D-Piece): TiTok trained with tail-token drop.

The official ``OneDPiece`` subclasses a TiTok snapshot without adding parameters: the same keys,
the legacy VQ path, the MaskGIT-VQGAN pixel decoder. Training decodes a random prefix of the
256 tokens, so the tokens come out ordered by importance and any prefix of k tokens decodes: the
decoder is simply given the shorter sequence (the first k tokens with the first k latent position
embeddings; nothing is padded or masked). Inference is TiTok's, with ``decode`` accepting
1 ≤ k ≤ N tokens, so this file only declares that.

Configs are TiTok's nested tree with ``model.type: one_d_piece``. The release is a pickled
``pytorch_model.bin`` without config.json; ``softvq_demo.convert`` turns it into our layout.
"""
from __future__ import annotations

from typing import Any, Collection, Optional

from .registry import Family, register_family
from .titok import TiTok, detect, validate


class OneDPiece(TiTok):
    family = "onedpiece"
    prefix_decodable = True

    @property
    def is_discrete(self) -> bool:
        return self.codebook_size is not None


def claims(config: dict[str, Any], tensor_names: Optional[Collection[str]] = None) -> bool:
    """``model.type`` is how the official code picks the class (``create_model``)."""
    model = config.get("model")
    return isinstance(model, dict) and model.get("type") == "one_d_piece"


def validate_onedpiece(config: dict[str, Any]) -> None:
    validate(config)
    vq = config["model"]["vq_model"]
    if vq.get("quantize_mode", "vq") != "vq" or not vq.get("finetune_decoder", True) \
            or not vq.get("is_legacy", True):
        raise ValueError("One-D-Piece is a legacy VQ TiTok with the pixel decoder (quantize_mode vq, "
                         "is_legacy and finetune_decoder true)")


register_family(Family("onedpiece", "tokenizer", lambda c: detect(c) and claims(c), OneDPiece,
                       validate_onedpiece, claims=claims))

__all__ = ["OneDPiece"]
