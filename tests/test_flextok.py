"""FlexTok against the fixtures made by the official code (../shared/reference/flextok)."""
from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from softvq_demo import CheckpointError, load_tokenizer
from softvq_demo.analysis.fsq import level_histogram, level_indices
from softvq_demo.loading import build_on_meta, load_folder, save_pretrained
from softvq_demo.models.flextok import FlexTok, decode_options, noise_from_seed
from softvq_demo.models.flextok_vae import AutoencoderKL

# FIXTURES.md / issue 18: ids exactly; FSQ values, velocities, sampled latents 1e-5; pixels 1e-4.
TOL = 1e-5
PIXEL_TOL = 1e-4
STEPS = 4  # the fixtures' sampler runs
MODES = {"nocfg": (1.0, False), "cfg3": (3.0, False), "apg7.5": (7.5, True)}


@pytest.fixture(scope="module")
def ref(reference):
    return reference / "flextok"


@pytest.fixture(scope="module")
def tok(ref):
    return load_tokenizer(ref / "tiny", device="cpu")


@pytest.fixture(scope="module")
def io(ref):
    return load_file(str(ref / "tiny" / "io.safetensors"))


def maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.double() - b.double()).abs().max().item()


def test_loads_with_the_released_structure(tok):
    assert isinstance(tok, FlexTok) and tok.family == "flextok"
    assert (tok.image_size, tok.num_tokens, tok.token_dim, tok.codebook_size) == (64, 8, 6, 64000)
    assert tok.prefix_decodable and tok.fsq_levels == [8, 8, 8, 5, 5, 5]
    assert tok.scaling_factor == 0.75 and tok.latent_channels == 4 and tok.latent_size == 8


@torch.no_grad()
def test_encode_reproduces_official(tok, io):
    enc = tok.encode(io["images"])
    assert maxdiff(enc.extras["vae_latents"], io["vae_latents"]) < TOL
    assert maxdiff(enc.extras["pre_fsq"], io["registers_pre_fsq"]) < TOL
    assert maxdiff(enc.latents, io["registers_fsq"]) < TOL
    assert enc.indices.dtype == torch.int64 and torch.equal(enc.indices, io["ids"])
    assert enc.probs is None and enc.latents.shape == (2, 8, 6)
    assert float(enc.extras["fsq_margin"].min()) > 0  # every value rounded away from a boundary
    assert torch.equal(tok.fsq.ids_to_values(io["ids"]), io["quants_from_ids"])
    assert maxdiff(tok.vae_decode(io["vae_latents"]), io["vae_reconst"]) < PIXEL_TOL


@torch.no_grad()
def test_decoder_velocity_reproduces_official(tok, io):
    q, x_t, t = io["quants_from_ids"], io["dec_x_t"], io["dec_t"]
    assert maxdiff(tok.velocity(x_t, t, q), io["dec_v_all"]) < TOL
    assert maxdiff(tok.velocity(x_t, t, q[:, :2]), io["dec_v_k2"]) < TOL  # mask token at ≥ 2
    uncond = torch.ones(2, dtype=torch.bool)
    assert maxdiff(tok.velocity(x_t, t, q, uncond=uncond), io["dec_v_uncond"]) < TOL


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("k", [1, 2, 4, "all"])
@torch.no_grad()
def test_prefix_decode_reproduces_official(tok, io, k, mode):
    n = tok.num_tokens if k == "all" else k
    scale, apg = MODES[mode]
    ids, noise = io["ids"][:, :n], io["noise"]
    latents = tok.sample_latents(tok.fsq.ids_to_values(ids), noise, STEPS, scale, apg)
    assert maxdiff(latents, io[f"latents_k{k}_{mode}"]) < TOL
    # the public API, from ids and from encode's FSQ values
    expected = io[f"decoded_k{k}_{mode}"]
    images = tok.decode(ids, noise=noise, steps=STEPS, guidance_scale=scale, apg=apg)
    assert maxdiff(images, expected) < PIXEL_TOL
    values = tok.encode(io["images"]).latents[:, :n]
    images = tok.decode(values, noise=noise, steps=STEPS, guidance_scale=scale, apg=apg)
    assert maxdiff(images, expected) < PIXEL_TOL
    assert tok.last_decode["tokens"] == n and tok.last_decode["seed"] is None


def test_seeded_noise_and_options(tok, io):
    # per_image reproduces the official MinRFPipeline draws (the fixture noise is seed 3)
    assert torch.equal(noise_from_seed(3, 2, (4, 8, 8), per_image=True), io["noise"])
    shared = noise_from_seed(3, 2, (4, 8, 8))
    assert torch.equal(shared[0], shared[1]) and torch.equal(shared[0], io["noise"][0])
    ids = io["ids"][:1, :2]
    with torch.no_grad():
        a = tok.decode(ids, seed=5, steps=2, guidance_scale=1)
        assert tok.last_decode == {"seed": 5, "steps": 2, "guidance_scale": 1.0, "apg": False,
                                   "tokens": 2, "fast": False}  # the CPU: reference sampler
        b = tok.decode(ids, seed=5, steps=2, guidance_scale=1)
        c = tok.decode(ids, seed=6, steps=2, guidance_scale=1)
        with decode_options(seed=6, steps=2, guidance_scale=1):
            d = tok.decode(ids)
        assert tok.last_decode["seed"] == 6
        tok.decode(ids, steps=1)  # release defaults otherwise: seed 0, guidance 7.5 with APG
        assert tok.last_decode == {"seed": 0, "steps": 1, "guidance_scale": 7.5, "apg": True,
                                   "tokens": 2, "fast": False}
    assert torch.equal(a, b) and torch.equal(c, d) and maxdiff(a, c) > 1e-3


def test_guidance_scale_one_runs_no_guidance_pass(tok, io, monkeypatch):
    batches = []
    original = FlexTok.velocity

    def counting(self, x_t, *args, **kwargs):
        batches.append(x_t.shape[0])
        return original(self, x_t, *args, **kwargs)

    monkeypatch.setattr(FlexTok, "velocity", counting)
    with torch.no_grad():
        tok.decode(io["ids"], seed=0, steps=3, guidance_scale=1)
        assert batches == [2, 2, 2]
        batches.clear()
        tok.decode(io["ids"], seed=0, steps=3, guidance_scale=2)
        assert batches == [4, 4, 4]  # conditional + null-condition halves in one call


def test_decode_refuses_bad_inputs(tok, io):
    with pytest.raises(ValueError, match="prefix of 1..8"):
        tok.decode(io["ids"][:, :0])
    with pytest.raises(ValueError, match="prefix of 1..8"):
        tok.decode(torch.zeros(1, 9, 6))
    with pytest.raises(ValueError, match="FSQ ids"):
        tok.decode(torch.full((1, 2), 64000))
    with pytest.raises(ValueError, match="noise must be"):
        tok.decode(io["ids"], noise=torch.zeros(2, 4, 4, 4))
    with pytest.raises(ValueError, match="guidance_scale"):
        tok.decode(io["ids"], guidance_scale=float("nan"))
    with pytest.raises(ValueError, match="steps"):
        tok.decode(io["ids"], steps=0)


def test_vae_alone_in_diffusers_layout(ref):
    vae = load_folder(ref / "tiny_vae", "autoencoder", device="cpu")
    vio = load_file(str(ref / "tiny_vae" / "io.safetensors"))
    assert isinstance(vae, AutoencoderKL) and vae.scaling_factor == 0.75
    with torch.no_grad():
        mean, logvar = vae.encode(vio["images"])
        assert maxdiff(mean, vio["posterior_mean"]) < TOL
        assert maxdiff(logvar, vio["posterior_logvar"]) < TOL
        draw = vae.sample(mean, logvar, torch.Generator().manual_seed(4))
        assert maxdiff(draw, vio["posterior_sample"]) < TOL
        assert maxdiff(vae.decode(vio["posterior_mean"]), vio["decoded_mean"]) < PIXEL_TOL
        assert maxdiff(vae.decode(vio["posterior_sample"]), vio["decoded_sample"]) < PIXEL_TOL


def _without_vae(ref, tmp_path, hub_path):
    folder = tmp_path / "flextok"
    folder.mkdir()
    config = json.loads((ref / "tiny" / "config.json").read_text())
    config["vae"]["hf_hub_path"] = hub_path
    del config["vae"]["vae_config_overrides"]  # the VAE repo's config decides the architecture
    (folder / "config.json").write_text(json.dumps(config))
    state = load_file(str(ref / "tiny" / "model.safetensors"))
    save_file({k: v for k, v in state.items() if not k.startswith("vae.")},
              str(folder / "model.safetensors"))
    return folder


def test_vae_from_its_own_folder(ref, io, tmp_path):
    folder = _without_vae(ref, tmp_path, str(ref / "tiny_vae"))
    tok = load_tokenizer(folder, device="cpu")
    with torch.no_grad():
        assert torch.equal(tok.encode(io["images"]).indices, io["ids"])
        images = tok.decode(io["ids"][:, :2], noise=io["noise"], steps=STEPS, guidance_scale=3.0,
                            apg=False)
    assert maxdiff(images, io["decoded_k2_cfg3"]) < PIXEL_TOL
    assert "vae_repo" not in json.dumps(tok.config)  # the loader's hand-over stays internal
    with pytest.raises(CheckpointError, match="local paths are not allowed"):
        load_folder(folder, "tokenizer", allow_local=False)
    (tmp_path / "b").mkdir()
    missing = _without_vae(ref, tmp_path / "b", str(tmp_path / "nowhere"))
    with pytest.raises(CheckpointError, match="not a Hub repo id"):
        load_tokenizer(missing)


def test_save_keeps_module_order_and_reloads(tok, io, tmp_path):
    save_pretrained(tok, tmp_path / "saved")
    written = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert list(written["decoder"]["module_dict"]) == list(tok.config["decoder"]["module_dict"])
    again = load_tokenizer(tmp_path / "saved", device="cpu")
    with torch.no_grad():
        assert torch.equal(again.encode(io["images"]).indices, io["ids"])


@pytest.mark.parametrize("part", ["encoder", "decoder"])
def test_sorted_module_order_is_refused(ref, tmp_path, part):
    folder = tmp_path / "sorted"
    shutil.copytree(ref / "tiny", folder)
    (folder / "config.json").chmod(0o644)
    config = json.loads((folder / "config.json").read_text())
    config[part]["module_dict"] = dict(sorted(config[part]["module_dict"].items()))
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="module order"):
        load_tokenizer(folder)


def test_unknown_module_target_is_refused(ref, tmp_path):
    folder = tmp_path / "evil"
    shutil.copytree(ref / "tiny", folder)
    (folder / "config.json").chmod(0o644)
    config = json.loads((folder / "config.json").read_text())
    config["encoder"]["module_dict"]["enc_patch_emb"]["_target_"] = "os.system"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="not supported"):
        load_tokenizer(folder)


@pytest.mark.parametrize("name", ["flextok_d12_d12", "flextok_d18_d18", "flextok_d18_d28",
                                  "flextok_vae_c4", "flextok_vae_c8", "flextok_vae_c16"])
def test_released_configs_match_manifests(ref, name):
    manifest = json.loads((ref / "manifests" / f"{name}.json").read_text())
    kind = "autoencoder" if name.startswith("flextok_vae") else "tokenizer"
    model = build_on_meta(manifest["config"], kind)
    ours = {k: [list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in model.state_dict().items()}
    expected = {k: [list(shape), dtype] for k, (shape, dtype) in manifest["keys"].items()}
    assert ours == expected
    total = manifest["param_counts"]["total"] if kind == "tokenizer" else manifest["param_count"]
    assert sum(v.numel() for v in model.state_dict().values()) == total


def test_fsq_level_histogram(io):
    levels = [8, 8, 8, 5, 5, 5]
    codes = level_indices(io["ids"], levels)
    values = torch.tensor([[c / (L // 2) - 1 for c, L in zip(row, levels)]
                           for row in codes.reshape(-1, 6).tolist()])
    assert torch.allclose(values.reshape(2, 8, 6), io["quants_from_ids"])
    hist = level_histogram(io["ids"], levels)
    assert hist.num_tokens == 16 and all(int(c.sum()) == 16 for c in hist.counts)
    assert [len(c) for c in hist.counts] == levels
    for j, row in enumerate(hist.summary()):
        lo, hi = hist.entropy_ci[j]
        assert 0 <= lo <= hi <= row["max (uniform)"] + 1e-9
        assert row["levels used"] == len(set(codes[..., j].flatten().tolist()))
    uniform = level_histogram(torch.arange(64000), levels, bootstrap=20)
    assert all(abs(uniform.entropy_bits(j) - math.log2(L)) < 1e-9
               for j, L in enumerate(levels))
