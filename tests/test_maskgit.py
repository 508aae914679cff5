"""TiTok's MaskGIT generator and sampler against the fixtures made by the official code."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from softvq_demo import CheckpointError, load_generator, load_tokenizer, sample
from softvq_demo.loading import build_on_meta
from softvq_demo.models.maskgit import MaskGIT, UViTMaskGIT, validate
from softvq_demo.sampling.maskgit import sample_maskgit

TOL = 1e-5
GENERATIONS = [("linear", 4.5, "linear"), ("constant", 2.0, "constant"),
               ("powercos", 3.0, "power-cosine")]


@pytest.fixture(scope="module")
def folder(reference):
    return reference / "titok" / "maskgit_tiny"


@pytest.fixture(scope="module")
def gen(folder):
    return load_generator(folder, device="cpu")


@pytest.fixture(scope="module")
def io(folder):
    return load_file(str(folder / "io.safetensors"))


def test_attributes(gen, folder):
    assert isinstance(gen, MaskGIT) and gen.family == "maskgit"
    assert (gen.num_tokens, gen.num_classes, gen.codebook_size) == (8, 10, 64)
    assert gen.class_names is None and gen.mask_token_id == 64
    assert gen.config == json.loads((folder / "config.json").read_text())
    assert (gen.num_steps, gen.guidance_scale, gen.guidance_decay) == (4, 4.5, "linear")


def test_logits_reproduce_official(gen, io):
    with torch.no_grad():
        cond = gen(io["input_ids"], io["class_labels"])
        uncond = gen(io["input_ids"], io["class_labels"], drop_class=True)
        also_uncond = gen(io["input_ids"], None)
        mixed = gen(io["input_ids"], io["class_labels"], drop_class=torch.tensor([False, True, False]))
    assert cond.shape == (3, 8, 64)
    assert (cond - io["logits"]).abs().max() < TOL
    assert (uncond - io["logits_uncond"]).abs().max() < TOL
    assert (also_uncond - io["logits_uncond"]).abs().max() < TOL
    assert (mixed[1] - io["logits_uncond"][1]).abs().max() < TOL
    assert (mixed[0] - io["logits"][0]).abs().max() < TOL


@pytest.mark.parametrize("name, scale, decay", GENERATIONS)
def test_generations_reproduce_official(gen, io, name, scale, decay):
    labels = io[f"gen_{name}_labels"]
    kwargs = dict(steps=4, guidance_scale=scale, guidance_decay=decay, randomize_temperature=0.0)
    ids = sample_maskgit(gen, labels, **kwargs)
    assert ids.dtype == torch.int64
    assert torch.equal(ids, io[f"gen_{name}_ids"])
    # Through the lead's dispatcher too.
    assert torch.equal(sample(gen, labels.tolist(), seed=0, **kwargs), io[f"gen_{name}_ids"])


def test_cond_and_uncond_in_one_batched_forward(gen, io):
    calls = []
    handle = gen.register_forward_hook(lambda m, args, kw_out: calls.append(args[0].shape[0]))
    try:
        sample_maskgit(gen, [1, 2], steps=4, guidance_scale=4.5, guidance_decay="linear")
    finally:
        handle.remove()
    assert calls == [2, 4, 4, 4]  # linear: no guidance on the first step, then cond+uncond as 2B


def test_seeded_sampling_is_deterministic(gen):
    steps = []
    a = sample_maskgit(gen, [3, 7, 7], seed=123, progress=lambda i, n: steps.append((i, n)))
    b = sample_maskgit(gen, [3, 7, 7], seed=torch.Generator().manual_seed(123))
    c = sample_maskgit(gen, [3, 7, 7], seed=124)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]  # default steps from the config
    assert a.shape == (3, 8) and int(a.min()) >= 0 and int(a.max()) < 64  # no mask id left


def test_generated_ids_decode(gen, reference):
    tok = load_tokenizer(reference / "titok" / "tiny_pixels", device="cpu")
    ids = sample(gen, [0, 1], seed=0)
    with torch.no_grad():
        images = tok.decode(ids)
    assert images.shape == (2, 3, 32, 32)


def test_mismatched_pair_refused(gen, reference):
    from softvq_demo.sampling import check_pair

    tiny = reference / "titok"
    check_pair(load_tokenizer(tiny / "tiny_pixels", device="cpu"), gen)  # 64 codes, 8 tokens: ok
    with pytest.raises(ValueError, match="continuous"):
        check_pair(load_tokenizer(tiny / "tiny_vae", device="cpu"), gen)
    manifest = json.loads((tiny / "manifests" / "tokenizer_titok_l32.json").read_text())
    with pytest.raises(ValueError, match="codebook"):
        check_pair(build_on_meta(manifest["config"], "tokenizer"), gen)


def test_manifests_exact_keys_and_shapes(reference):
    paths = sorted((reference / "titok" / "manifests").glob("generator_*.json"))
    assert len(paths) == 2
    for path in paths:
        manifest = json.loads(path.read_text())
        model = build_on_meta(manifest["config"], "generator")
        assert type(model) is MaskGIT, path.name
        got = {k: [list(v.shape), str(v.dtype).removeprefix("torch.")]
               for k, v in model.state_dict().items()}
        want = {k: [list(shape), dtype] for k, (shape, dtype) in manifest["keys"].items()}
        assert got == want, f"{path.name}: {sorted(set(got) ^ set(want))[:5]}"
        g = manifest["config"]["model"]["generator"]
        assert model.num_tokens == g["image_seq_len"] and model.num_classes == 1000
        assert model.codebook_size == manifest["config"]["model"]["vq_model"]["codebook_size"]


def test_uvit_variant_builds(reference):
    manifest = json.loads((reference / "titok" / "manifests" / "tokenizer_titok_s128.json").read_text())
    model = build_on_meta(manifest["config"], "generator")
    assert isinstance(model, UViTMaskGIT)
    keys = model.state_dict()
    assert keys["pos_embed"].shape == (1, 129, 1024)
    assert keys["embeddings.weight"].shape == (4096 + 1000 + 2, 1024)
    assert "out_blocks.9.skip_linear.weight" in keys and "in_blocks.0.attn.qkv.bias" not in keys
    # A tiny one runs and gives logits over the codebook.
    config = json.loads(json.dumps(manifest["config"]))
    config["model"]["generator"].update(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                        intermediate_size=64, image_seq_len=8)
    config["model"]["vq_model"]["codebook_size"] = 16
    torch.manual_seed(0)
    tiny = UViTMaskGIT(config).eval()
    ids = sample_maskgit(tiny, [1, 2], steps=3, seed=0)
    assert ids.shape == (2, 8) and int(ids.max()) < 16


def test_class_names_from_config(folder):
    config = json.loads((folder / "config.json").read_text())
    config["class_names"] = [f"c{i}" for i in range(10)]
    with torch.device("meta"):
        assert MaskGIT(config).class_names[9] == "c9"


@pytest.mark.parametrize("key, value, match", [
    ("hidden_size", 10 ** 6, "hidden_size"),
    ("num_hidden_layers", 10 ** 4, "num_hidden_layers"),
    ("num_attention_heads", 3, "divisible"),
    ("image_seq_len", 0, "image_seq_len"),
    ("model_type", "Mamba", "model_type"),
    ("guidance_decay", "cubic", "guidance_decay"),
])
def test_validate_rejects_absurd_configs(folder, key, value, match):
    config = json.loads((folder / "config.json").read_text())
    config["model"]["generator"][key] = value
    with pytest.raises(ValueError, match=match):
        validate(config)


def test_wrong_codebook_size_names_the_tensor(folder, tmp_path):
    shutil.copy(folder / "config.json", tmp_path / "config.json")
    state = load_file(str(folder / "model.safetensors"))
    state["model.lm_head.weight"] = state["model.lm_head.weight"][:32].clone()
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model\.lm_head\.weight"):
        load_generator(tmp_path, device="cpu")


def test_sampler_rejects_bad_options(gen):
    with pytest.raises(ValueError, match="guidance_decay"):
        sample_maskgit(gen, [0], guidance_decay="cubic")
    with pytest.raises(ValueError, match="class labels"):
        sample_maskgit(gen, [10])


def test_categorical_draw_has_the_gumbel_max_law():
    """Our inverse-CDF draw has the law of upstream's argmax(logits + τ·Gumbel)."""
    from softvq_demo.sampling.maskgit import sample_categorical

    logits = torch.tensor([2.0, 0.5, -1.0, 1.0, -30.0])
    tau = 1.7
    rng = torch.Generator().manual_seed(0)
    draws = sample_categorical(logits.expand(20000, 5), tau, rng)
    freq = torch.bincount(draws, minlength=5).float() / draws.numel()
    assert (freq - torch.softmax(logits / tau, dim=0)).abs().max() < 0.015
    assert torch.equal(sample_categorical(logits[None], 0.0, rng), torch.tensor([0]))
