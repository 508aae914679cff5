"""The GPU path's rules, checked on the CPU: inputs follow the model's device, the fast path is
taken only where it pays (sampling.policy), compile caches persist. CUDA-only checks at the end."""
from __future__ import annotations

import torch
import pytest
from safetensors.torch import load_file

from softvq_demo import load_generator, load_tokenizer
from softvq_demo.models.base import Tokenizer
from softvq_demo.sampling import compile_cache, generate, policy

CUDA = torch.device("cuda")  # a device object only: the policy reads its type, nothing runs there


class Probe(Tokenizer):
    """A tokenizer whose only buffer lives on the meta device: it reports where inputs arrive."""

    family = "probe"

    def __init__(self):
        super().__init__()
        self.register_buffer("anchor", torch.empty(1, device="meta"))

    def encode(self, images):
        return images.device

    def decode(self, latents, scale=None):
        return latents.device, None if scale is None else scale.device


def test_inputs_move_to_the_models_device():
    p = Probe()
    assert p.encode(torch.zeros(2)) == torch.device("meta")
    assert p.decode(torch.zeros(2), scale=torch.ones(1)) == (torch.device("meta"), torch.device("meta"))
    assert p.decode(torch.zeros(2)) == (torch.device("meta"), None)


def test_real_models_are_wrapped(reference):
    tok = load_tokenizer(reference / "softvq" / "tiny", device="cpu")
    gen = load_generator(reference / "softvq" / "sit_tiny", device="cpu")
    assert type(tok).encode._on_model_device and type(tok).decode._on_model_device
    assert type(gen).forward._on_model_device


@pytest.fixture()
def sit(reference):
    return load_generator(reference / "softvq" / "sit_tiny", device="cpu")


@pytest.fixture()
def clean_policy(monkeypatch):
    for name in ("SOFTVQ_FAST", "SOFTVQ_FAST_MIN_SECONDS", "SOFTVQ_FAST_BACKGROUND"):
        monkeypatch.delenv(name, raising=False)
    for d in (policy._warm, policy._busy, policy._seen):
        d.clear()
    yield


def test_one_shot_stays_on_reference_then_warms_in_background(sit, clean_policy, monkeypatch):
    opts = dict(steps=4, method="euler")
    assert policy.reference_seconds(sit, 3, opts) < policy.MIN_SECONDS
    started = []
    real = policy.warm_in_background
    monkeypatch.setattr(policy, "warm_in_background", lambda *a, **k: started.append(real(*a, **k)))
    assert not policy.choose(sit, CUDA, None, 3, opts)          # first call: no compile for it
    assert not started and not policy.is_warm(sit, policy.run_key(sit, 3, opts))
    assert not policy.choose(sit, CUDA, None, 3, opts)          # repeated: warm-up starts, call stays
    assert len(started) == 1 and started[0] is not None
    started[0].join(60)
    assert policy.is_warm(sit, policy.run_key(sit, 3, opts))
    assert policy.choose(sit, CUDA, None, 3, opts)              # warm: the fast path now pays
    assert not policy.choose(sit, CUDA, None, 5, opts)          # another batch is another shape


def test_big_jobs_and_switches(sit, clean_policy, monkeypatch):
    opts = dict(steps=4, method="euler")
    runs = int(policy.MIN_SECONDS / policy.reference_seconds(sit, 8, opts)) + 1
    assert policy.choose(sit, CUDA, None, 8, opts, runs=runs)   # many chunks: the compile pays
    assert not policy.choose(sit, CUDA, False, 8, opts, runs=runs)
    assert not policy.choose(sit, torch.device("cpu"), True, 8, opts)
    assert policy.choose(sit, CUDA, True, 1, opts)
    monkeypatch.setenv("SOFTVQ_FAST", "0")
    assert not policy.choose(sit, CUDA, None, 8, opts, runs=runs)
    monkeypatch.setenv("SOFTVQ_FAST", "always")
    assert policy.choose(sit, CUDA, None, 1, opts)
    monkeypatch.setenv("SOFTVQ_FAST", "auto")
    monkeypatch.setenv("SOFTVQ_FAST_MIN_SECONDS", "0")
    assert policy.choose(sit, CUDA, None, 1, opts)


def test_reference_estimate_grows_with_the_job(sit):
    small = policy.reference_seconds(sit, 1, dict(steps=10, method="euler", cfg_scale=1.0))
    guided = policy.reference_seconds(sit, 1, dict(steps=10, method="euler", cfg_scale=4.0,
                                                   guidance_low=0.0, guidance_high=1.0))
    assert guided >= small > 0
    assert policy.row_evaluations(sit, 4, dict(steps=10, method="euler", cfg_scale=4.0, guidance_low=0.0,
                                               guidance_high=1.0)) == 4 * 20


def test_compile_cache_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("SOFTVQ_COMPILE_CACHE", str(tmp_path / "cc"))
    assert compile_cache.configure() == tmp_path / "cc" and (tmp_path / "cc").is_dir()
    import os
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "cc")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    monkeypatch.delenv("SOFTVQ_COMPILE_CACHE")
    assert compile_cache.configure() == tmp_path / "mine"        # the user's choice wins
    monkeypatch.setenv("SOFTVQ_COMPILE_CACHE", "0")
    assert compile_cache.configure() is None


def test_generate_reports_its_path(reference):
    gen = load_generator(reference / "softvq" / "sit_tiny", device="cpu")
    tok = load_tokenizer(reference / "softvq" / "tiny", device="cpu")
    out = generate(gen, tok, [1, 2], seed=0, steps=2, noise=torch.zeros(2, gen.num_tokens, gen.token_dim))
    assert out.timings["fast"] is False and out.images.device.type == "cpu"


# --------------------------------------------------------------------------- on a GPU only
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda_only
def test_cpu_inputs_to_cuda_models(reference):
    folder = reference / "softvq" / "tiny"
    io = load_file(str(folder / "io.safetensors"))
    tok = load_tokenizer(folder, device="cuda")
    with torch.no_grad():
        enc = tok.encode(io["images"])            # CPU tensors in
        decoded = tok.decode(io["latents"])
    assert enc.latents.device.type == "cuda" and decoded.device.type == "cuda"
    # cuDNN may run the convolutions in TF32 (PyTorch's default): close, not bitwise
    assert (decoded.cpu() - io["decoded"]).abs().max() < 2e-2


@cuda_only
def test_one_shot_generate_on_cuda_takes_reference_path(reference, clean_policy):
    gen = load_generator(reference / "softvq" / "sit_tiny", device="cuda")
    tok = load_tokenizer(reference / "softvq" / "tiny", device="cuda")
    out = generate(gen, tok, [1, 2, 3], seed=0, steps=10)
    assert out.timings["fast"] is False and out.images.device.type == "cuda"


@cuda_only
def test_split_k_block_on_cuda_matches_plain_products():
    """On CUDA, proj and fc2 as split-K float32 partials (a batched cuBLAS call) summed with the
    bias by the Triton norm pass: the block agrees with the plain-product block to bf16
    rounding, for a bf16 and a float32 residual stream, and the probe picks a valid split."""
    from softvq_demo.models.sit import SiT, sit_config
    from softvq_demo.sampling.fast import kernels, sit as fast_sit

    if not kernels.AVAILABLE:
        pytest.skip("needs Triton")
    torch.manual_seed(0)
    gen = SiT(sit_config("SiT-S/1", 32, 32, num_classes=10, depth=1)).cuda().eval()
    for res in (torch.bfloat16, torch.float32):
        f = fast_sit.SiTFast(gen, residual=res)
        if not f.fused_norm:
            pytest.skip("the fused norm kernel is off on this GPU")
        r, n, hid = 2, gen.num_tokens, f.hidden
        g = torch.Generator(device="cuda").manual_seed(0)
        h = torch.randn(r, n, hid, device="cuda", generator=g).to(res)
        a = torch.randn(r, n, hid, device="cuda", generator=g).bfloat16()
        mod = 0.1 * torch.randn(r, 6 * hid, device="cuda", generator=g).bfloat16()
        mod_next = 0.1 * torch.randn(r, 2 * hid, device="cuda", generator=g).bfloat16()
        plain = fast_sit._sit_block(h, a, mod, mod_next, *f.blocks[0], f.heads, f.attn, None, True)
        for split in ((2, 4), (4, 0), (0, 8)):
            out = fast_sit._sit_block(h, a, mod, mod_next, *f.blocks[0], f.heads, f.attn, None, True, split)
            for got, want in zip(out, plain):
                err = float((got.float() - want.float()).norm() / want.float().norm())
                assert err < 1e-2, (split, res, err)
        picks = f.split_picks(r * n)
        assert picks is None or all(p in [0] + kernels.split_candidates(k)
                                    for p, k in zip(picks, (hid, f.blocks[0][4].shape[0])))
