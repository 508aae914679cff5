"""The four embedded textscenes checkpoints: they load offline, are small, reconstruct held-out
images better than trivial blurred copies, and the generators make images their tokenizers decode.

Baselines (PSNR in dB on held-out textscenes v2: unseen fonts and words; see the model cards): a
k× box-downsampled, bilinearly upsampled copy. Inside the text's mask every model must beat the
mild 4× blur (a 32×32 thumbnail: small text is unreadable there) by 1 dB; on the whole image
SoftVQ must beat the 8× blur (16×16 thumbnail) and TiTok the 16× blur (8×8) -- both lose to the
4× blur on backgrounds, which their cards say.
"""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from softvq_demo import check_pair, generate, load_generator, load_tokenizer
from softvq_demo.catalogue import entries, find_entry
from softvq_demo.data.textscenes2 import CLASS_WORDS, TextScenes2

NAMES = ["textscenes-softvq-32", "textscenes-titok-128", "textscenes-sit", "textscenes-maskgit"]
TOKENS = {"textscenes-softvq-32": 32, "textscenes-titok-128": 128, "textscenes-sit": 32, "textscenes-maskgit": 128}
WHOLE_IMAGE_BLUR = {"textscenes-softvq-32": 8, "textscenes-titok-128": 16}


def _entry(name):
    entry = find_entry(name)
    assert entry is not None and entry.embedded and entry.repo_id is None
    if not (entry.local_path / "config.json").is_file():
        pytest.fail(f"embedded checkpoint {name} missing at {entry.local_path}")
    return entry


@pytest.fixture(scope="module")
def heldout():
    ds = TextScenes2("heldout")
    items = [ds[i] for i in range(12)]
    x = torch.stack([it["image"] for it in items])
    mask = torch.stack([it["mask"] for it in items])[:, None].float()
    return x, mask


def _psnr(a: torch.Tensor, b: torch.Tensor, weight=None) -> float:
    err = (a - b).pow(2)
    if weight is None:
        mse = err.mean(dim=(1, 2, 3))
    else:
        mse = (err * weight).sum(dim=(1, 2, 3)) / (weight.sum(dim=(1, 2, 3)) * 3)
    return float((10 * torch.log10(4.0 / mse.clamp_min(1e-10))).mean())


def _blurred(x: torch.Tensor, k: int) -> torch.Tensor:
    return F.interpolate(F.avg_pool2d(x, k), scale_factor=k, mode="bilinear", align_corners=False)


@pytest.mark.parametrize("name", NAMES)
def test_embedded_checkpoint_is_complete_and_small(name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    entry = _entry(name)
    folder = entry.local_path
    assert (folder / "model.safetensors").stat().st_size <= 10 * 2**20  # the Hub's limit outside LFS
    assert (folder / "README.md").is_file() and "textscenes" in (folder / "README.md").read_text()
    assert not any(p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl") for p in folder.iterdir())
    loader = load_tokenizer if entry.kind == "tokenizer" else load_generator
    model = loader(name, device="cpu")  # by catalogue name, from checkpoints/, no network
    assert model.family == entry.family and model.num_tokens == entry.num_tokens == TOKENS[name]
    if entry.token_dim is not None and entry.family in ("softvq", "titok", "sit"):
        assert model.token_dim == entry.token_dim
    if entry.codebook_size is not None:
        assert model.codebook_size == entry.codebook_size
    if entry.kind == "generator":
        assert model.class_names == list(CLASS_WORDS) and model.num_classes == len(CLASS_WORDS)
        cfg = json.loads((folder / "config.json").read_text())
        assert cfg["class_names"] == list(CLASS_WORDS)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["textscenes-softvq-32", "textscenes-titok-128"])
def test_tokenizer_beats_blurred_copies(name, heldout):
    _entry(name)
    x, mask = heldout
    tok = load_tokenizer(name, device="cpu")
    assert tok.image_size == 128
    with torch.no_grad():
        enc = tok.encode(x)
        recon = tok.decode(enc.latents).clamp(-1, 1)
    assert recon.shape == x.shape and torch.isfinite(recon).all()
    assert enc.indices.shape == (x.shape[0], TOKENS[name])
    assert _psnr(recon, x, mask) > _psnr(_blurred(x, 4), x, mask) + 1.0  # the word survives
    assert _psnr(recon, x) > _psnr(_blurred(x, WHOLE_IMAGE_BLUR[name]), x)


def test_softvq_latent_statistics_normalise(heldout):
    _entry("textscenes-softvq-32")
    tok = load_tokenizer("textscenes-softvq-32", device="cpu")
    assert tok.latent_std != 1.0  # vq_mean / vq_std were measured at export
    with torch.no_grad():
        z = tok.normalize(tok.encode(heldout[0]).latents)
    assert abs(float(z.mean())) < 0.2 and 0.7 < float(z.std()) < 1.3


@pytest.mark.parametrize("gen_name,opts", [("textscenes-sit", dict(steps=10)),
                                           ("textscenes-maskgit", dict(steps=8))])
@pytest.mark.slow
def test_generator_images_decode_with_their_tokenizer(gen_name, opts):
    gen_entry = _entry(gen_name)
    tok_entry = _entry(gen_entry.pair)
    gen = load_generator(gen_name, device="cpu")
    tok = load_tokenizer(tok_entry.name, device="cpu")
    check_pair(tok, gen)
    res = generate(gen, tok, [CLASS_WORDS.index("sun"), CLASS_WORDS.index("zebra")], seed=0, **opts)
    assert res.images.shape == (2, 3, 128, 128) and torch.isfinite(res.images).all()
    assert float(res.images.std()) > 0.05  # not a blank image
    again = generate(gen, tok, [CLASS_WORDS.index("sun"), CLASS_WORDS.index("zebra")], seed=0, **opts)
    assert torch.allclose(res.images, again.images, atol=1e-5)  # seeded


def test_catalogue_pairs_the_embedded_models():
    embedded = {e.name: e for e in entries() if e.embedded}
    assert set(embedded) == set(NAMES)
    assert embedded["textscenes-sit"].pair == "textscenes-softvq-32"
    assert embedded["textscenes-maskgit"].pair == "textscenes-titok-128"


@pytest.mark.slow
def test_sit_sampling_defaults_come_from_its_config():
    from softvq_demo.sampling import SIT_DEFAULTS, sit_defaults

    _entry("textscenes-sit")
    gen = load_generator("textscenes-sit", device="cpu")
    tok = load_tokenizer("textscenes-softvq-32", device="cpu")
    d = sit_defaults(gen)
    assert set(d) == set(SIT_DEFAULTS)
    assert d["cfg_scale"] == gen.config["sampling"]["cfg_scale"] != SIT_DEFAULTS["cfg_scale"]
    implicit = generate(gen, tok, [1], seed=0, steps=4)
    explicit = generate(gen, tok, [1], seed=0, steps=4, cfg_scale=d["cfg_scale"])
    assert torch.equal(implicit.images, explicit.images)
    assert implicit.timings["network_evals"] == explicit.timings["network_evals"]
