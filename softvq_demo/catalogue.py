"""The released models we know, as data (like timm's pretrained configs).

Figures are the ones the official READMEs report (ImageNet 256/512; rFID for tokenizers, gFID for
generators with CFG unless noted). Token counts and dims are for display and pairing hints only:
the loaders always read the real values from each repo's config.json.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

CHECKPOINTS = Path(__file__).resolve().parent.parent / "checkpoints"


@dataclass(frozen=True)
class ModelEntry:
    name: str                       # short name used by the CLI and the app
    kind: str                       # "tokenizer" | "generator"
    family: str                     # "softvq" | "titok" | "sit" | "maskgit"
    repo_id: Optional[str]          # Hugging Face Hub repo, None for embedded-only models
    image_size: int
    num_tokens: int
    token_dim: Optional[int] = None        # continuous latent width (SoftVQ d, TiTok VAE C)
    codebook_size: Optional[int] = None    # discrete vocabulary (TiTok VQ)
    pair: Optional[str] = None             # the tokenizer a generator was trained on
    rfid: Optional[float] = None
    gfid: Optional[float] = None           # with CFG
    gfid_no_cfg: Optional[float] = None
    embedded: Optional[str] = None         # folder under checkpoints/ for our own models
    notes: str = ""

    @property
    def local_path(self) -> Optional[Path]:
        return CHECKPOINTS / self.embedded if self.embedded else None

    def as_row(self) -> dict:
        row = asdict(self)
        row["source"] = str(self.local_path) if self.embedded else self.repo_id
        return row


def _softvq(name, size, tokens, dim, rfid):
    return ModelEntry(name, "tokenizer", "softvq", f"SoftVQVAE/{name}", size, tokens, token_dim=dim,
                      rfid=rfid)


def _sit(tok_name, size, tokens, dim, gfid, gfid_no_cfg):
    return ModelEntry(f"sit-xl_{tok_name}", "generator", "sit", f"SoftVQVAE/sit-xl_{tok_name}", size,
                      tokens, token_dim=dim, pair=tok_name, gfid=gfid, gfid_no_cfg=gfid_no_cfg)


def _titok(name, tokens, rfid=None, codebook=4096, dim=None, notes=""):
    return ModelEntry(f"titok-{name}", "tokenizer", "titok",
                      f"yucornetto/tokenizer_titok_{name}_imagenet", 256, tokens,
                      token_dim=dim, codebook_size=codebook, rfid=rfid, notes=notes)


def _maskgit(name, tokens, gfid=None, codebook=4096, notes=""):
    return ModelEntry(f"maskgit-titok-{name}", "generator", "maskgit",
                      f"yucornetto/generator_titok_{name}_imagenet", 256, tokens,
                      codebook_size=codebook, pair=f"titok-{name}", gfid=gfid, notes=notes)


CATALOGUE: list[ModelEntry] = [
    # --- SoftVQ-VAE tokenizers (Hhhhhhao/continuous_tokenizer README) -------------------------
    _softvq("softvq-l-64", 256, 64, 32, 0.61),
    _softvq("softvq-bl-64", 256, 64, 32, 0.65),
    _softvq("softvq-b-64", 256, 64, 32, 0.88),
    _softvq("softvq-l-32", 256, 32, 64, 0.74),
    _softvq("softvq-bl-32", 256, 32, 64, 0.68),
    _softvq("softvq-b-32", 256, 32, 64, 0.89),
    _softvq("softvq-bl-64-512", 512, 64, 32, 0.71),
    _softvq("softvq-l-32-512", 512, 32, 64, 0.64),
    # --- SiT-XL generators on SoftVQ latents ----------------------------------------------------
    _sit("softvq-l-64", 256, 64, 32, 1.86, 5.35),
    _sit("softvq-bl-64", 256, 64, 32, 1.88, 5.80),
    _sit("softvq-b-64", 256, 64, 32, 1.78, 5.98),
    _sit("softvq-l-32", 256, 32, 64, 2.44, 7.59),
    _sit("softvq-bl-32", 256, 32, 64, 2.44, 7.67),
    _sit("softvq-b-32", 256, 32, 64, 2.51, 7.99),
    _sit("softvq-bl-64-512", 512, 64, 32, 2.21, 7.96),
    _sit("softvq-l-32-512", 512, 32, 64, 4.23, 10.97),
    # --- TiTok tokenizers (bytedance/1d-tokenizer README_TiTok.md) -------------------------------
    _titok("l32", 32, 2.21),
    _titok("b64", 64, 1.70),
    _titok("s128", 128, 1.71),
    _titok("bl64_vq8k", 64, 2.06, codebook=8192),
    _titok("bl128_vq8k", 128, 1.49, codebook=8192),
    _titok("sl256_vq8k", 256, 1.03, codebook=8192),
    _titok("ll32_vae_c16", 32, 1.61, codebook=None, dim=16),
    _titok("bl64_vae_c16", 64, 1.25, codebook=None, dim=16),
    _titok("bl128_vae_c16", 128, 0.84, codebook=None, dim=16),
    # --- MaskGIT generators on TiTok tokens -----------------------------------------------------
    _maskgit("l32", 32, 2.77),
    _maskgit("b64", 64, 2.48),
    _maskgit("s128", 128, 1.97, notes="U-ViT generator (model_type UViT), written from the "
             "official code; no fixture checks its numbers"),
    # --- our embedded models, trained on textscenes (checkpoints/) ------------------------------
    ModelEntry("textscenes-softvq-32", "tokenizer", "softvq", None, 128, 32, token_dim=32,
               embedded="textscenes-softvq-32",
               notes="embedded demo model (3.8M parameters, 128 px, trained on rendered text: textscenes v2); "
                     "official: softvq-l-64"),
    ModelEntry("textscenes-sit", "generator", "sit", None, 128, 32, token_dim=32,
               pair="textscenes-softvq-32", embedded="textscenes-sit",
               notes="embedded demo model (3.9M parameters, 58 word classes of textscenes v2); "
                     "official: sit-xl_softvq-l-64"),
    ModelEntry("textscenes-titok-128", "tokenizer", "titok", None, 128, 128, token_dim=16,
               codebook_size=1024, embedded="textscenes-titok-128",
               notes="embedded demo model (3.8M parameters, 128 px, trained on rendered text: textscenes v2); "
                     "official: titok-l32"),
    ModelEntry("textscenes-maskgit", "generator", "maskgit", None, 128, 128, codebook_size=1024,
               pair="textscenes-titok-128", embedded="textscenes-maskgit",
               notes="embedded demo model (3.1M parameters, 58 word classes of textscenes v2); "
                     "official: maskgit-titok-l32"),
    # --- MAETok (Hhhhhhao/continuous_tokenizer README; arXiv 2502.03444) ------------------------
    ModelEntry("maetok-b-128", "tokenizer", "maetok", "MAETok/maetok-b-128", 256, 128, token_dim=32,
               rfid=0.48, notes="continuous, no codebook; token dim 32 is a fork's value (read from "
               "config.json at load)"),
    ModelEntry("maetok-b-128-512", "tokenizer", "maetok", "MAETok/maetok-b-128-512", 512, 128,
               token_dim=32, rfid=0.62, notes="the id the official demo loads; README links "
               "MAETok/maetok-b-512"),
    ModelEntry("sit-xl_maetok-b-128", "generator", "sit", "MAETok/sit-xl_maetok-b-128", 256, 128,
               token_dim=32, pair="maetok-b-128", gfid=1.67, gfid_no_cfg=2.31,
               notes="sampling settings of the paper not published; SoftVQ's defaults are used"),
    ModelEntry("sit-xl_maetok-b-128-512", "generator", "sit", "MAETok/sit-xl_maetok-b-128-512", 512,
               128, token_dim=32, pair="maetok-b-128-512", gfid=1.69, gfid_no_cfg=2.79,
               notes="sampling settings of the paper not published; SoftVQ's defaults are used"),
    # --- One-D-Piece (turingmotors/One-D-Piece README): pickle releases, converted on first load
    *[ModelEntry(f"one-d-piece-{s}-256", "tokenizer", "onedpiece", f"turing-motors/One-D-Piece-{s.upper()}-256",
                 256, 256, token_dim=12, codebook_size=4096, rfid=rfid,
                 notes="ordered tokens: any prefix decodes; pytorch_model.bin converted to "
                 "safetensors once (python -m softvq_demo convert)")
      for s, rfid in (("s", 1.48), ("b", 1.11), ("l", 1.08))],
    *[ModelEntry(f"maskgit-one-d-piece-{s}-256", "generator", "maskgit",
                 f"turing-motors/MaskGIT_One-D-Piece-{s.upper()}-256", 256, 256, codebook_size=4096,
                 pair=f"one-d-piece-{s}-256", gfid=gfid,
                 notes="TiTok's MaskGIT (ImageBert); pytorch_model.bin converted once")
      for s, gfid in (("s", 2.67), ("b", 2.70), ("l", 2.35))],
]


# --- FlexTok tokenizers (apple/ml-flextok README; EPFL-VILAB on the Hub). 1..256 ordered FSQ tokens
# (levels 8,8,8,5,5,5 = 64 000 codes) decoded by a rectified flow; research-only weights
# (Apple AMLR licence). The VAE's weights are in each checkpoint; a config naming a VAE repo
# (vae.hf_hub_path, e.g. EPFL-VILAB/flextok_vae_c16) makes the loader fetch that repo too.
def _flextok(name, repo, notes=""):
    return ModelEntry(f"flextok-{name}", "tokenizer", "flextok", f"EPFL-VILAB/flextok_{repo}", 256, 256,
                      token_dim=6, codebook_size=64000,
                      notes=("stochastic decoder (seeded); licence: Apple AMLR, research only. "
                             + notes).strip())


CATALOGUE += [
    _flextok("d12-d12", "d12_d12_in1k", "ImageNet-1k"),
    _flextok("d18-d18", "d18_d18_in1k", "ImageNet-1k"),
    _flextok("d18-d28", "d18_d28_in1k", "ImageNet-1k"),
    _flextok("d18-d28-dfn", "d18_d28_dfn", "DFN data"),
]

_BY_NAME = {e.name.lower(): e for e in CATALOGUE}
_BY_REPO = {e.repo_id.lower(): e for e in CATALOGUE if e.repo_id}


def find_entry(name_or_repo: str) -> Optional[ModelEntry]:
    key = str(name_or_repo).strip().lower()
    return _BY_NAME.get(key) or _BY_REPO.get(key)


def entries(kind: Optional[str] = None, family: Optional[str] = None) -> list[ModelEntry]:
    return [e for e in CATALOGUE if (kind is None or e.kind == kind)
            and (family is None or e.family == family)]


def embedded_available(kind: Optional[str] = None) -> list[ModelEntry]:
    """Embedded models whose folders are actually present (a fresh clone has all four)."""
    return [e for e in entries(kind) if e.local_path is not None
            and (e.local_path / "config.json").is_file()]


def default_pair(tokenizer_name: str) -> Optional[ModelEntry]:
    """The generator trained on a given tokenizer, if the catalogue knows one."""
    for e in entries("generator"):
        if e.pair == tokenizer_name:
            return e
    return None
