"""One-D-Piece against the fixtures made by the official code (../shared/reference/onedpiece),
prefix decoding through the public API, the release manifests, and ``${...}`` config references."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from softvq_demo import CheckpointError, check_pair, load_generator, load_tokenizer
from softvq_demo.catalogue import default_pair, entries, find_entry
from softvq_demo.convert import RELEASES, find_release, release_config
from softvq_demo.loading import build_on_meta
from softvq_demo.models.onedpiece import OneDPiece

TOL = 1e-5
# FIXTURES.md: compare pixels with a tolerance (an independent float32 re-statement matched them
# to <= 2e-5; straight-through rounding alone moves them by <= 3e-5; random weights put pixels in
# about [-3.8, 3.4]). Ours: <= 2.5e-5 (1 or 2 threads; logits <= 5.3e-6), so 5e-5 leaves a margin for
# other BLAS builds while a wrong path (a prefix decoded as all tokens) is off by 2.8 or more.
PIXEL_TOL = 5e-5
PREFIXES = (1, 4, 8)
SIZES = ("s", "b", "l")


def ours(t: torch.Tensor) -> torch.Tensor:
    """Official token layout B×C×1×N → our B×N×C."""
    return t.squeeze(2).transpose(1, 2)


def pixels(images: torch.Tensor) -> torch.Tensor:
    """Our API's [-1, 1] images in the official [0, 1] units."""
    return (images + 1) / 2


def maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


@pytest.fixture(scope="module")
def odp(reference):
    folder = reference / "onedpiece" / "tiny"
    return load_tokenizer(folder, device="cpu"), load_file(str(folder / "io.safetensors"))


def test_reproduces_official(odp):
    tok, io = odp
    assert isinstance(tok, OneDPiece) and tok.family == "onedpiece"
    assert tok.prefix_decodable and tok.is_discrete and tok.codebook_size == 64
    assert (tok.num_tokens, tok.token_dim, tok.image_size) == (16, 8, 64)
    with torch.no_grad():
        enc = tok.encode(io["images"] * 2 - 1)  # fixtures are [0, 1]; our API takes [-1, 1]
        assert maxdiff(enc.extras["pre_quant"], ours(io["pre_quant"])) < TOL
        assert maxdiff(enc.latents, ours(io["latents"])) < TOL
        assert torch.equal(enc.indices, io["indices"][:, 0])
        assert maxdiff(tok.decoder(enc.latents), io["logits"]) < TOL
        assert maxdiff(pixels(tok.decode(enc.latents)), io["decoded"]) < PIXEL_TOL
        assert maxdiff(pixels(tok.decode(enc.indices)), io["decoded_from_tokens"]) < PIXEL_TOL
        assert maxdiff(pixels(tok.decode(io["indices"])), io["decoded_from_tokens"]) < PIXEL_TOL


@pytest.mark.parametrize("k", PREFIXES)
def test_prefix_decodes_as_official(odp, k):
    tok, io = odp
    with torch.no_grad():
        enc = tok.encode(io["images"] * 2 - 1)
        # decode_tokens(indices[:, :, :k]) of scripts/inference_tokenizer.py
        assert maxdiff(pixels(tok.decode(enc.indices[:, :k])), io[f"decoded_prefix_{k}"]) < PIXEL_TOL
        assert maxdiff(tok.decoder(tok.tokens_from_indices(enc.indices[:, :k])),
                       io[f"logits_prefix_{k}"]) < TOL
        # model(images, length=k): the straight-through latents sliced
        assert maxdiff(pixels(tok.decode(enc.latents[:, :k])), io[f"decoded_length_{k}"]) < PIXEL_TOL
        # a prefix is not the full decode: decoding all tokens where k are asked would fail here
        assert maxdiff(pixels(tok.decode(enc.latents[:, :k])), io["decoded"]) > 0.5


def test_prefix_bounds(odp, reference):
    tok, _ = odp
    ids = torch.zeros(1, tok.num_tokens, dtype=torch.long)
    with pytest.raises(ValueError, match="1..16"):
        tok.decode(ids[:, :0])
    with pytest.raises(ValueError, match="B×16×8"):
        tok.decode(torch.zeros(1, 17, tok.token_dim))
    # TiTok and SoftVQ were not trained on prefixes: they refuse, saying so
    for family, folder in (("titok", "tiny_pixels"), ("softvq", "tiny")):
        other = load_tokenizer(reference / family / folder, device="cpu")
        assert not other.prefix_decodable
        lat = torch.zeros(1, other.num_tokens, other.token_dim)
        with pytest.raises(ValueError, match="cannot decode fewer tokens than it was built for"):
            other.decode(lat[:, :other.num_tokens // 2])
        with pytest.raises(ValueError, match="cannot decode fewer tokens"):
            other.decode(torch.zeros(1, other.num_tokens // 2, dtype=torch.long))


@pytest.mark.parametrize("size", SIZES)
def test_released_configs_match_manifests(reference, size):
    for kind, name in (("tokenizer", f"tokenizer_one-d-piece_{size}256"),
                       ("generator", f"generator_maskgit_one-d-piece_{size}256")):
        m = json.loads((reference / "onedpiece" / "manifests" / f"{name}.json").read_text())
        expected = {k: tuple(v[0]) for k, v in m["keys"].items()}
        for config in (m["config"], release_config(m["config"], kind)):  # as released, as converted
            model = build_on_meta(config, kind)
            assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected
        if kind == "tokenizer":
            assert isinstance(model, OneDPiece) and model.num_tokens == 256
        else:
            assert model.family == "maskgit" and model.num_tokens == 256 and model.codebook_size == 4096


def test_catalogue_and_pairs(odp, reference):
    tokenizers = entries("tokenizer", "onedpiece")
    assert [e.name for e in tokenizers] == [f"one-d-piece-{s}-256" for s in SIZES]
    for e in tokenizers:
        gen = default_pair(e.name)
        assert gen.family == "maskgit" and gen.codebook_size == e.codebook_size == 4096
        assert gen.num_tokens == e.num_tokens == 256 and e.rfid and gen.gfid
        for entry in (e, gen):  # every pickle release is known to the converter under its name
            assert find_release(entry.repo_id).name == entry.name == find_release(entry.name).name
    assert len(RELEASES) == 6 and find_entry("turing-motors/One-D-Piece-B-256").rfid == 1.11
    tok, _ = odp
    maskgit = load_generator(reference / "titok" / "maskgit_tiny", device="cpu")  # 8 tokens
    with pytest.raises(ValueError, match="token count mismatch"):
        check_pair(tok, maskgit)
    sit = load_generator(reference / "softvq" / "sit_tiny", device="cpu")
    with pytest.raises(ValueError, match="discrete"):
        check_pair(tok, sit)


# ----------------------------------------------------------------- ${dotted.path} references
def generator_folder(reference, tmp_path, edit):
    src = reference / "titok" / "maskgit_tiny"
    dst = tmp_path / "gen"
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    edit(config)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_config_references_resolve(reference, tmp_path):
    def edit(c):  # what the official save_pretrained writes from the release YAML
        c["model"]["generator"]["image_seq_len"] = "${model.vq_model.num_latent_tokens}"
        c["model"]["generator"]["condition_num_classes"] = "${.num_classes_here}"
        c["model"]["generator"]["num_classes_here"] = 10
        c["experiment"]["name"] = "maskgit_${model.generator.model_type}_\\${literal}"

    gen = load_generator(generator_folder(reference, tmp_path, edit), device="cpu")
    assert gen.num_tokens == 8 and gen.num_classes == 10
    assert gen.config["model"]["generator"]["image_seq_len"] == 8  # an int, not a string
    assert gen.config["experiment"]["name"] == "maskgit_ViT_${literal}"


@pytest.mark.parametrize("value,message", [
    ("${model.vq_model.num_tokens}", "model.generator.image_seq_len refers to"),
    ("${oc.env:HOME}", "model.generator.image_seq_len: resolver"),
    ("${model.generator.image_seq_len}", "circular reference"),
    ("${model.${x}}", "model.generator.image_seq_len: unsupported reference"),
])
def test_config_references_refused(reference, tmp_path, value, message):
    def edit(c):
        c["model"]["generator"]["image_seq_len"] = value

    with pytest.raises(CheckpointError, match=message.replace(".", r"\.").replace("$", r"\$")):
        load_generator(generator_folder(reference, tmp_path, edit), device="cpu")
