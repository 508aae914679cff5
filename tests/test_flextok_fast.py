"""FlexTok's fast decoder steps (sampling.flextok_fast): arithmetic, bf16 agreement, the decode
hook and the policy. On the CPU everything runs eagerly; the CUDA test (compile + graphs) runs
only where a GPU is (its speed: ``python -m softvq_demo.bench.flextok``, docs/benchmarks.md)."""
from __future__ import annotations

import json
import warnings

import pytest
import torch
from safetensors.torch import load_file

from softvq_demo import load_tokenizer
from softvq_demo.loading import build_on_meta
from softvq_demo.models.flextok import noise_from_seed
from softvq_demo.sampling import flextok_fast, policy
from softvq_demo.sampling.flextok_fast import FlexTokFast, enable_fast_decode, run_options

STEPS = 4  # the fixtures' sampler runs
MODES = {"nocfg": (1.0, False), "cfg3": (3.0, False), "apg7.5": (7.5, True)}
PIXEL_TOL = 1e-4


def bf16_tolerance(scale: float) -> float:
    """Relative error ‖fast − fp32‖ / ‖fp32‖ allowed for bf16 decoder steps: 5e-3 unguided (bf16
    operands land at 1e-3..1e-2), times 1 + |scale − 1| since guidance multiplies the difference
    of the two halves, and with it their rounding (measured on the tiny fixture, CPU: 3.0e-3,
    8.0e-3, 1.6e-2 for no guidance, CFG 3, APG 7.5)."""
    return 5e-3 * (1 + abs(scale - 1))


@pytest.fixture(scope="module")
def ref(reference):
    return reference / "flextok"


@pytest.fixture(scope="module")
def io(ref):
    return load_file(str(ref / "tiny" / "io.safetensors"))


@pytest.fixture()
def tok(ref):
    return load_tokenizer(ref / "tiny", device="cpu")  # a fresh copy: tests patch and warm it


def maxdiff(a, b) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.double() - b.double()).abs().max().item()


def rel(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def fixture_name(k: int) -> str:
    return "all" if k == 8 else str(k)


@torch.no_grad()
def test_sampler_arithmetic_matches_reference_on_cpu(tok, io):
    """Model dtype, eager: the padded-prefix buffers and the tensor-valued scale compute what
    ``FlexTok.sample_latents`` does. k = 8 first, so a stale prefix in the reused buffer shows."""
    fast = FlexTokFast(tok)
    assert not fast.compiled and not fast.graphs and fast.dtype == torch.float32
    for k in (8, 1, 4):
        values = tok.fsq.ids_to_values(io["ids"][:, :k])
        for mode, (scale, apg) in MODES.items():
            out = fast.sample_latents(values, io["noise"], STEPS, scale, apg)
            assert maxdiff(out, tok.sample_latents(values, io["noise"], STEPS, scale, apg)) < 1e-6
            assert maxdiff(out, io[f"latents_k{fixture_name(k)}_{mode}"]) < 1e-5
    enable_fast_decode(tok)
    images = tok.decode(io["ids"][:, :4], noise=io["noise"], steps=STEPS, guidance_scale=7.5)
    assert tok.last_decode["fast"] and maxdiff(images, io["decoded_k4_apg7.5"]) < PIXEL_TOL


@torch.no_grad()
def test_bf16_steps_agree_with_fp32(tok, io):
    """The fast path's precision without compile or graphs: a bf16 decoder copy under CPU
    autocast, against the official fp32 fixtures and against the fp32 reference on fresh draws."""
    fast = FlexTokFast(tok, dtype=torch.bfloat16)
    assert fast.decoder is not tok.decoder and not fast.compiled
    assert fast.decoder.module_dict["dec_transformer"].blocks[0].attn.wq.weight.dtype == torch.bfloat16
    gen = torch.Generator().manual_seed(11)
    ids = torch.randint(0, tok.codebook_size, (3, 8), generator=gen)
    noise = noise_from_seed(12, 3, (4, 8, 8), per_image=True)
    for mode, (scale, apg) in MODES.items():
        for k in (1, 4, 8):
            expected = io[f"latents_k{fixture_name(k)}_{mode}"]
            out = fast.sample_latents(tok.fsq.ids_to_values(io["ids"][:, :k]), io["noise"], STEPS,
                                      scale, apg)
            assert rel(out, expected) < bf16_tolerance(scale), (mode, k)
            assert maxdiff(out, expected) > 1e-4  # bf16 really ran (fp32 agrees to ~1e-6)
        values = tok.fsq.ids_to_values(ids[:, :5])
        expected = tok.sample_latents(values, noise, STEPS, scale, apg)
        assert rel(fast.sample_latents(values, noise, STEPS, scale, apg), expected) < bf16_tolerance(scale)


@torch.no_grad()
def test_decode_hook_follows_the_policy(tok, io, monkeypatch):
    monkeypatch.setenv("SOFTVQ_FAST_BACKGROUND", "0")
    ids, noise = io["ids"][:, :2], io["noise"]
    expected = tok.decode(ids, noise=noise, steps=STEPS, guidance_scale=3.0, apg=False)
    assert tok.last_decode["fast"] is False  # the CPU: never the fast path on its own
    asked = []

    def choose(model, device, fast, batch, options, **kwargs):
        asked.append((model, batch, options))
        return True

    monkeypatch.setattr(policy, "choose", choose)
    images = tok.decode(ids, noise=noise, steps=STEPS, guidance_scale=3.0, apg=False)
    assert asked == [(tok, 2, {"steps": STEPS, "guided": True, "apg": False})]
    assert tok.last_decode["fast"] and maxdiff(images, expected) < 1e-6  # same noise, same steps
    assert policy.is_warm(tok, policy.run_key(tok, 2, run_options(STEPS, 3.0, False)))
    assert flextok_fast.flextok_fast(tok) is flextok_fast.flextok_fast(tok)  # cached per model

    def broken(self, *args):
        raise RuntimeError("compiler failure")

    monkeypatch.setattr(FlexTokFast, "sample_latents", broken)
    with pytest.warns(UserWarning, match="FlexTok fast decode failed"):
        images = tok.decode(ids, noise=noise, steps=STEPS, guidance_scale=3.0, apg=False)
    assert maxdiff(images, expected) == 0  # fell back to the reference sampler
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tok.decode(ids, noise=noise, steps=STEPS, guidance_scale=3.0, apg=False)
    assert tok.last_decode["fast"] is False  # and stays there for this tokenizer


def test_policy_warm_up_marks_the_shape_warm(tok, monkeypatch):
    monkeypatch.delenv("SOFTVQ_FAST", raising=False)
    options = run_options(STEPS, 7.5, True)
    cuda = torch.device("cuda")  # choose() only reads the device's type
    assert not policy.is_warm(tok, policy.run_key(tok, 3, options))
    policy.warm_up(tok, None, 3, options)
    assert policy.choose(tok, cuda, None, 3, options)
    assert not policy.choose(tok, cuda, None, 3, run_options(STEPS, 1.0, False))  # another shape


def test_policy_estimate_for_the_released_decoders(ref, monkeypatch):
    """The estimate counts the decoder's matmul FLOPs (checked against PyTorch's FLOP counter on
    the meta device), and keeps a one-shot release-setting decode on the reference path."""
    from torch.utils.flop_counter import FlopCounterMode

    monkeypatch.delenv("SOFTVQ_FAST", raising=False)
    monkeypatch.setenv("SOFTVQ_FAST_BACKGROUND", "0")
    manifest = json.loads((ref / "manifests" / "flextok_d18_d28.json").read_text())
    model = build_on_meta(manifest["config"], "tokenizer")
    shape = (1, model.latent_channels, model.latent_size, model.latent_size)
    with torch.device("meta"), torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.velocity(torch.zeros(shape), torch.ones(1), torch.zeros(1, model.num_tokens, 6))
    counted = counter.get_total_flops()
    estimate = flextok_fast.row_flops(model)
    assert 0.9 * counted < estimate <= counted  # what it leaves out: attention's own products
    release = run_options(20, 7.5, True)
    one = policy.reference_seconds(model, 1, release)
    assert policy.reference_seconds(model, 4, release) > 3 * one
    assert policy.reference_seconds(model, 4, run_options(20, 1.0, False)) < \
        0.6 * policy.reference_seconds(model, 4, release)
    cuda = torch.device("cuda")
    assert not policy.choose(model, cuda, None, 1, release)    # the app's one click
    assert policy.choose(model, cuda, None, 1024, release)     # a reconstruction-set job


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@torch.no_grad()
def test_fast_decode_on_cuda(ref, io, monkeypatch):
    """bf16 + compiled blocks + one CUDA graph per shape, through the public decode: every prefix
    and scale replays the same graph, within the bf16 tolerance of the official fp32 numbers."""
    monkeypatch.setenv("SOFTVQ_FAST_BACKGROUND", "0")
    monkeypatch.delenv("SOFTVQ_FAST", raising=False)
    tok = load_tokenizer(ref / "tiny", device="cuda")
    noise = io["noise"].cuda()
    tok.decode(io["ids"][:, :2].cuda(), noise=noise, steps=STEPS, guidance_scale=7.5)
    assert tok.last_decode["fast"] is False  # one-shot: the reference sampler
    monkeypatch.setenv("SOFTVQ_FAST", "always")
    fast = flextok_fast.flextok_fast(tok)
    assert fast.graphs and fast.dtype == torch.bfloat16
    for mode, (scale, apg) in MODES.items():
        for k in (8, 1, 4):
            ids = io["ids"][:, :k].cuda()
            out = fast.sample_latents(tok.fsq.ids_to_values(ids), noise, STEPS, scale, apg)
            expected = io[f"latents_k{fixture_name(k)}_{mode}"].cuda()
            assert rel(out, expected) < bf16_tolerance(scale), (mode, k)
            again = fast.sample_latents(tok.fsq.ids_to_values(ids), noise, STEPS, scale, apg)
            assert torch.equal(out, again)
            images = tok.decode(ids, noise=noise, steps=STEPS, guidance_scale=scale, apg=apg)
            assert tok.last_decode["fast"]
            assert rel(images, io[f"decoded_k{fixture_name(k)}_{mode}"].cuda()) < 3 * bf16_tolerance(scale)  # the VAE: ~2x
    assert fast.compiled == flextok_fast.compile_enabled(torch.device("cuda"))
    assert len(fast._graphs.graphs) == 3  # one per (batch, steps, guided, APG): k and scale are data
    monkeypatch.delenv("SOFTVQ_FAST")
    tok.decode(io["ids"][:, :2].cuda(), noise=noise, steps=STEPS, guidance_scale=7.5)
    assert tok.last_decode["fast"]  # that shape is warm now: the policy keeps it on the fast path
