"""TiTok against the fixtures made by the official code (../shared/reference/titok)."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from softvq_demo import CheckpointError, load_tokenizer
from softvq_demo.loading import build_on_meta
from softvq_demo.models import detect_family
from softvq_demo.loading import load_pixel_decoder
from softvq_demo.models.maskgit_vqgan import PixelDecoder
from softvq_demo.models.titok import TiTok, validate

TOL = 1e-5
TOKENIZER_FIXTURES = ["tiny_legacy", "tiny_pixels", "tiny_vae"]


@pytest.fixture(scope="module")
def titok_ref(reference):
    return reference / "titok"


def ours(t: torch.Tensor) -> torch.Tensor:
    """Official token layout B×C×1×N → our B×N×C."""
    return t.squeeze(2).transpose(1, 2)


def maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


def as_api_images(decoded: torch.Tensor, tok: TiTok) -> torch.Tensor:
    """Official decode output in our API's range: pixels [0,1] → [-1,1]; stage-1 logits as-is."""
    return decoded if tok.outputs_logits else decoded * 2 - 1


@pytest.mark.parametrize("name", TOKENIZER_FIXTURES)
def test_tokenizer_reproduces_official(titok_ref, name):
    tok = load_tokenizer(titok_ref / name, device="cpu")
    io = load_file(str(titok_ref / name / "io.safetensors"))
    assert isinstance(tok, TiTok) and tok.family == "titok"
    assert tok.image_size == 32 and tok.num_tokens == 8 and tok.num_codebooks == 1
    assert tok.token_dim == io["latents"].shape[1]
    with torch.no_grad():
        enc = tok.encode(io["images"] * 2 - 1)  # fixtures are [0,1]; our API takes [-1,1]
        assert maxdiff(enc.extras["pre_quant"], ours(io["pre_quant"])) < TOL
        assert maxdiff(enc.latents, ours(io["latents"])) < TOL
        assert enc.latents.shape == (2, tok.num_tokens, tok.token_dim)
        assert maxdiff(tok.decode(enc.latents), as_api_images(io["decoded"], tok)) < TOL
        if tok.is_vae:
            assert enc.indices is None and tok.codebook_size is None and not tok.is_discrete
        else:
            assert enc.indices.dtype == torch.int64
            assert torch.equal(enc.indices, io["indices"][:, 0])
            expected = as_api_images(io["decoded_from_tokens"], tok)
            assert maxdiff(tok.decode(enc.indices), expected) < TOL
            assert maxdiff(tok.decode(io["indices"]), expected) < TOL  # official B×1×N ids too
            assert tok.codebook_size == 64 and tok.is_discrete
        assert enc.probs is None


def test_variant_flags(titok_ref):
    legacy = load_tokenizer(titok_ref / "tiny_legacy", device="cpu")
    pixels = load_tokenizer(titok_ref / "tiny_pixels", device="cpu")
    vae = load_tokenizer(titok_ref / "tiny_vae", device="cpu")
    assert legacy.outputs_logits and not pixels.outputs_logits and not vae.outputs_logits
    assert vae.is_vae and not legacy.is_vae
    assert legacy.config == json.loads((titok_ref / "tiny_legacy" / "config.json").read_text())
    x = torch.zeros(1, 3, 32, 32)
    assert pixels(x).shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="expects images"):
        pixels.encode(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="0..63"):
        pixels.decode(torch.full((1, 8), 64))


def test_vae_sampling_option(titok_ref):
    vae = load_tokenizer(titok_ref / "tiny_vae", device="cpu")
    x = load_file(str(titok_ref / "tiny_vae" / "io.safetensors"))["images"] * 2 - 1
    with torch.no_grad():
        mean = vae.encode(x)
        a = vae.encode(x, sample=True, generator=torch.Generator().manual_seed(0)).latents
        b = vae.encode(x, sample=True, generator=torch.Generator().manual_seed(0)).latents
    assert torch.equal(a, b) and not torch.equal(a, mean.latents)
    std = torch.exp(0.5 * mean.extras["logvar"])
    assert torch.allclose(mean.extras["mean"], mean.latents)
    assert ((a - mean.latents).abs() <= 6 * std).all()


def test_pixel_decoder_reproduces_official(titok_ref):
    folder = titok_ref / "pixel_decoder_tiny"
    dec = load_pixel_decoder(folder)
    io = load_file(str(folder / "io.safetensors"))
    with torch.no_grad():
        out = dec(io["quantized_states"])
    assert maxdiff(out, io["decoded"]) < TOL


def test_pixel_decoder_loader_is_strict(titok_ref, tmp_path):
    src = titok_ref / "pixel_decoder_tiny"
    shutil.copy(src / "config.json", tmp_path / "config.json")
    state = load_file(str(src / "model.safetensors"))
    del state["conv_out.bias"]
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="conv_out.bias"):
        load_pixel_decoder(tmp_path)


@pytest.mark.slow
def test_two_stage_decode_path(titok_ref):
    """finetune_decoder: softmax over the 1024 logits → expected pixel code → pixel decoder."""
    config = json.loads((titok_ref / "tiny_legacy" / "config.json").read_text())
    config["model"]["vq_model"]["finetune_decoder"] = True
    torch.manual_seed(0)
    two_stage = TiTok(config).eval()
    stage1 = load_tokenizer(titok_ref / "tiny_legacy", device="cpu")
    own = {k: v for k, v in two_stage.state_dict().items() if k.startswith("pixel_")}
    two_stage.load_state_dict({**stage1.state_dict(), **own})
    assert isinstance(two_stage.pixel_decoder, PixelDecoder)
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])
    with torch.no_grad():
        logits = stage1.decode(ids)                                    # 1×1024×4×4
        codes = torch.einsum("bkhw,kd->bdhw", logits.softmax(1),
                             two_stage.pixel_quantize.embedding.weight)
        expected = two_stage.pixel_decoder(codes) * 2 - 1
        images = two_stage.decode(ids)
    assert images.shape == (1, 3, 64, 64)  # 4×4 grid × the VQGAN's ×16
    assert maxdiff(images, expected) < TOL


def _manifests(titok_ref, prefix):
    return sorted((titok_ref / "manifests").glob(f"{prefix}_*.json"))


def test_manifests_exact_keys_and_shapes(titok_ref):
    paths = _manifests(titok_ref, "tokenizer")
    assert len(paths) == 9
    for path in paths:
        manifest = json.loads(path.read_text())
        model = build_on_meta(manifest["config"], "tokenizer")
        assert isinstance(model, TiTok), path.name
        got = {k: [list(v.shape), str(v.dtype).removeprefix("torch.")]
               for k, v in model.state_dict().items()}
        want = {k: [list(shape), dtype] for k, (shape, dtype) in manifest["keys"].items()}
        assert got == want, f"{path.name}: {sorted(set(got) ^ set(want))[:5]}"
        for key in manifest["training_only"]:
            assert key.startswith(model.training_only_prefixes), (path.name, key)
        vq = manifest["config"]["model"]["vq_model"]
        assert model.num_tokens == vq["num_latent_tokens"] and model.token_dim == vq["token_size"]
        assert model.image_size == 256
        assert model.codebook_size == (None if model.is_vae else vq["codebook_size"])


def test_model_sizes_and_arch_override():
    base = {"model": {"vq_model": {
        "codebook_size": 16, "token_size": 4, "use_l2_norm": True, "vit_enc_model_size": "large",
        "vit_dec_model_size": "base", "vit_enc_patch_size": 16, "vit_dec_patch_size": 16,
        "num_latent_tokens": 4, "finetune_decoder": False}},
        "dataset": {"preprocessing": {"crop_size": 32}}}
    model = build_on_meta(base, "tokenizer")
    assert len(model.encoder.transformer) == 24 and model.encoder.width == 1024
    assert model.encoder.transformer[0].attn.heads == 16
    assert len(model.decoder.transformer) == 12 and model.decoder.width == 768
    base["model"]["vq_model"]["vit_dec_arch"] = {"width": 40, "layers": 3, "heads": 5}
    model = build_on_meta(base, "tokenizer")
    assert model.decoder.width == 40 and len(model.decoder.transformer) == 3


@pytest.mark.parametrize("path, value, match", [
    (("model", "vq_model", "num_latent_tokens"), 10 ** 7, "num_latent_tokens"),
    (("model", "vq_model", "vit_enc_arch"), {"width": 10 ** 6, "layers": 2, "heads": 4}, "width"),
    (("model", "vq_model", "vit_dec_arch"), {"width": 64, "layers": 5000, "heads": 4}, "layers"),
    (("model", "vq_model", "vit_enc_arch"), {"width": 64, "layers": 2, "heads": 5}, "divisible"),
    (("model", "vq_model", "codebook_size"), -3, "codebook_size"),
    (("model", "vq_model", "vit_enc_patch_size"), 7, "multiple"),
    (("model", "vq_model", "vit_enc_model_size"), "gigantic", "gigantic"),
    (("model", "vq_model", "quantize_mode"), "fsq", "quantize_mode"),
    (("dataset", "preprocessing", "crop_size"), 10 ** 6, "crop_size"),
])
def test_validate_rejects_absurd_configs(titok_ref, path, value, match):
    config = json.loads((titok_ref / "tiny_legacy" / "config.json").read_text())
    if path[-1] == "vit_enc_model_size":
        del config["model"]["vq_model"]["vit_enc_arch"]
    node = config
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ValueError, match=match):
        validate(config)
    with pytest.raises(CheckpointError):
        build_on_meta(config, "tokenizer")


def test_detect(titok_ref):
    config = json.loads((titok_ref / "tiny_vae" / "config.json").read_text())
    assert detect_family(config, "tokenizer").name == "titok"
    # Official tokenizer configs may also carry the generator section (titok_l32.yaml does).
    manifest = json.loads((titok_ref / "manifests" / "tokenizer_titok_l32.json").read_text())
    assert detect_family(manifest["config"], "tokenizer").name == "titok"
    assert detect_family(manifest["config"], "generator").name == "maskgit"


def test_wrong_codebook_size_names_the_tensor(titok_ref, tmp_path):
    src = titok_ref / "tiny_legacy"
    shutil.copy(src / "config.json", tmp_path / "config.json")
    state = load_file(str(src / "model.safetensors"))
    state["quantize.embedding.weight"] = state["quantize.embedding.weight"][:32].clone()
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"quantize\.embedding\.weight"):
        load_tokenizer(tmp_path, device="cpu")
