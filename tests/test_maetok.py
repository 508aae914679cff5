"""MAETok against the fixtures made by the official code (../shared/reference/maetok)."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from softvq_demo import check_pair, generate, load_generator, load_tokenizer
from softvq_demo.analysis.codebook import codebook_usage
from softvq_demo.catalogue import default_pair, find_entry
from softvq_demo.loading import build_on_meta, read_header
from softvq_demo.models import detect_family
from softvq_demo.models.maetok import MAETok
from softvq_demo.models.sit import sit_config

TOL = 1e-5
FIXTURES = ["tiny", "tiny_cls_p8", "tiny_ape"]


def maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


@pytest.fixture(scope="module")
def maetok_ref(reference):
    return reference / "maetok"


@pytest.mark.parametrize("name", FIXTURES)
def test_reproduces_official(maetok_ref, name):
    folder = maetok_ref / name
    tok = load_tokenizer(folder, device="cpu")
    io = load_file(str(folder / "io.safetensors"))
    config = json.loads((folder / "config.json").read_text())
    assert isinstance(tok, MAETok) and tok.family == "maetok"
    assert (tok.num_tokens, tok.token_dim) == tuple(io["latents"].shape[1:])
    assert tok.codebook_size is None and not tok.is_discrete and not tok.prefix_decodable
    assert (tok.latent_mean, tok.latent_std) == (config["vq_mean"], config["vq_std"])
    with torch.no_grad():
        enc = tok.encode(io["images"])  # the official code takes [-1, 1] too
        assert enc.indices is None and enc.probs is None
        assert maxdiff(enc.extras["encoder_out"], io["encoder_out"]) < TOL
        assert maxdiff(enc.latents, io["latents"]) < TOL
        assert maxdiff(tok.normalize(enc.latents), io["latents_norm"]) < TOL
        assert maxdiff(tok.denormalize(io["latents_norm"]), io["latents"]) < TOL
        assert maxdiff(tok.decode(enc.latents), io["decoded"]) < TOL
        assert maxdiff(tok.decode(io["latents"]), io["decoded"]) < TOL
        assert maxdiff(tok(io["images"]), io["decoded"]) < TOL


def test_family_comes_from_config_or_weights(maetok_ref, reference):
    # RoPE / MoVQ decoder: MAETok from the config alone
    rope = json.loads((maetok_ref / "tiny" / "config.json").read_text())
    assert detect_family(rope, "tokenizer").name == "maetok"
    # tiny_ape has SoftVQ's exact config layout: only its quantizer-free weights tell
    ape = json.loads((maetok_ref / "tiny_ape" / "config.json").read_text())
    names = read_header(maetok_ref / "tiny_ape" / "model.safetensors").keys()
    assert detect_family(ape, "tokenizer", names).name == "maetok"
    softvq = json.loads((reference / "softvq" / "tiny" / "config.json").read_text())
    soft_names = read_header(reference / "softvq" / "tiny" / "model.safetensors").keys()
    assert detect_family(softvq, "tokenizer", soft_names).name == "softvq"
    assert load_tokenizer(reference / "softvq" / "tiny", device="cpu").family == "softvq"


def test_refusals(maetok_ref):
    tok = load_tokenizer(maetok_ref / "tiny", device="cpu")
    lat = torch.zeros(1, tok.num_tokens, tok.token_dim)
    with pytest.raises(ValueError, match="cannot decode fewer tokens than it was built for"):
        tok.decode(lat[:, :4])
    with pytest.raises(ValueError, match="no codebook"):
        tok.decode(torch.zeros(1, tok.num_tokens, dtype=torch.long))
    with pytest.raises(ValueError, match="expected latents"):
        tok.decode(torch.zeros(1, tok.num_tokens + 1, tok.token_dim))
    with pytest.raises(ValueError, match="64×64"):
        tok.encode(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="no codebook"):  # what the Codebook tab shows
        codebook_usage(None, tok.codebook_size)
    bad = json.loads((maetok_ref / "tiny" / "config.json").read_text())
    bad["rope_mixed"] = False
    with pytest.raises(ValueError, match="rope_mixed"):
        build_on_meta(bad, "tokenizer")


def test_released_config_matches_manifest(maetok_ref):
    m = json.loads((maetok_ref / "manifests" / "maetok-b-128.json").read_text())
    model = build_on_meta(m["config"], "tokenizer")
    skip = set(m["training_only"])
    expected = {k: tuple(v[0]) for k, v in m["keys"].items() if k not in skip}
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected
    assert len(skip) == 349 and all(k.startswith(model.training_only_prefixes) for k in skip)


def test_sit_xl_on_maetok_matches_manifest(maetok_ref):
    m = json.loads((maetok_ref / "manifests" / "sit-xl_maetok-b-128.json").read_text())
    model = build_on_meta(sit_config("SiT-XL/1", 128, 32), "generator")
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == \
        {k: tuple(v[0]) for k, v in m["keys"].items()}


def test_catalogue_pairs():
    for tok_name in ("maetok-b-128", "maetok-b-128-512"):
        tok, gen = find_entry(tok_name), default_pair(tok_name)
        assert tok.family == "maetok" and tok.codebook_size is None and tok.rfid is not None
        assert gen.family == "sit" and gen.pair == tok_name and gen.image_size == tok.image_size
        assert gen.num_tokens == tok.num_tokens and gen.gfid < gen.gfid_no_cfg


def test_generators_pair_by_kind(maetok_ref, reference):
    tok = load_tokenizer(maetok_ref / "tiny", device="cpu")
    maskgit = load_generator(reference / "titok" / "maskgit_tiny", device="cpu")
    with pytest.raises(ValueError, match="continuous tokens"):
        check_pair(tok, maskgit)
    # a SiT over 16×8 tokens fits MAETok tiny's latents: samples are denormalised, then decoded
    sit = load_generator(reference / "softvq" / "sit_tiny", device="cpu")
    out = generate(sit, tok, [1, 2], seed=0, steps=2, fast=False)
    assert out.images.shape == (2, 3, 64, 64) and torch.isfinite(out.images).all()
