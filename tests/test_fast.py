"""The inference fast path (``softvq_demo.sampling.fast``) computes the reference's function.

CPU only, seconds: on the CPU the fast path runs eagerly (no compile, no CUDA graphs), so these
tests check its arithmetic -- the functional SiT forward, the precomputed adaLN table, the closed
form of the Euler/SDE updates, the float32 sampler state, the CFG batching, MaskGIT's schedule
and random draws, the bf16 module copies -- against the reference implementations. The GPU
side (compile, graphs) is checked by ``python -m softvq_demo.bench`` on every run.
"""
from __future__ import annotations

import json

import pytest
import torch

from softvq_demo import load_generator, load_tokenizer, sample
from softvq_demo.models.sit import SiT, sit_config
from softvq_demo.sampling import fast
from softvq_demo.sampling.fast import kernels, runtime, tokenizers
from softvq_demo.sampling.fast import sit as fast_sit
from softvq_demo.sampling.flow import sample_flow
from softvq_demo.sampling.maskgit import sample_maskgit

BF16_TOL = 1e-2


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.fixture(scope="module")
def tiny_sit():
    torch.manual_seed(0)
    gen = SiT(sit_config("SiT-S/1", 8, 4, num_classes=10, depth=2, hidden_size=64, num_heads=4))
    with torch.no_grad():
        for p in gen.parameters():  # DiT's init makes the network zero; make it a real function
            p.normal_(0.0, 0.2)
    return gen.eval().requires_grad_(False)


@pytest.mark.parametrize("method,steps", [("euler", 10), ("sde", 12), ("heun", 5)])
@pytest.mark.parametrize("path", ["linear", "cosine"])
def test_sit_fast_matches_reference(tiny_sit, method, steps, path):
    noise = torch.randn(3, 8, 4, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([1, 3, 5])
    opts = dict(steps=steps, method=method, cfg_scale=1.75, guidance_low=0.0, guidance_high=0.7,
                path=path, null_class=10)
    ref = sample_flow(tiny_sit, noise, y, rng=torch.Generator().manual_seed(2), **opts)
    for precompute in (True, False):
        out = fast.sample_sit_fast(tiny_sit, noise, y, rng=torch.Generator().manual_seed(2),
                                   precompute=precompute, **opts)
        assert out.dtype == torch.float32 and out.shape == noise.shape
        assert rel(out, ref) < 1e-5, (precompute, rel(out, ref))


def test_sit_fast_unguided_and_reuse(tiny_sit):
    """No CFG; then a second call reusing the cached runner must not see the first call's state."""
    y = torch.tensor([0, 9])
    for seed in (3, 4):
        noise = torch.randn(2, 8, 4, generator=torch.Generator().manual_seed(seed))
        opts = dict(steps=6, method="euler", cfg_scale=1.0, null_class=10)
        ref = sample_flow(tiny_sit, noise, y, **opts)
        out = fast.sample_sit_fast(tiny_sit, noise, y, **opts)
        assert rel(out, ref) < 1e-5
    out_again = fast.sample_sit_fast(tiny_sit, noise, y, **opts)
    assert torch.equal(out, out_again)  # results are copies, not the runner's static buffer


def test_fast_velocity_is_a_drop_in_model(tiny_sit):
    x, t, y = torch.randn(4, 8, 4), torch.rand(4), torch.tensor([0, 1, 10, 10])
    v = fast.fast_velocity(tiny_sit)(x, t, y)
    assert rel(v, tiny_sit(x, t, y)) < 1e-5


def test_bf16_fast_path_within_tolerance(reference):
    """bf16 weights (what CUDA runs): final tokens and decoded images within 1e-2 of float32."""
    gen = load_generator(reference / "softvq" / "sit_tiny", device="cpu")
    tok = load_tokenizer(reference / "softvq" / "tiny", device="cpu")
    assert (gen.num_tokens, gen.token_dim) == (tok.num_tokens, tok.token_dim)
    noise = torch.randn(2, gen.num_tokens, gen.token_dim, generator=torch.Generator().manual_seed(5))
    y = torch.tensor([3, 7])
    opts = dict(steps=25, method="sde", cfg_scale=1.75, guidance_high=0.7, null_class=gen.null_class)
    ref = sample_flow(gen, noise, y, rng=torch.Generator().manual_seed(6), **opts)
    out = fast.sample_sit_fast(gen, noise, y, rng=torch.Generator().manual_seed(6),
                               dtype=torch.bfloat16, **opts)
    assert rel(out, ref) < BF16_TOL
    copy = fast.low_precision_copy(tok, torch.bfloat16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        images_fast = copy.decode(out)
    with torch.no_grad():
        images_ref = tok.decode(ref.float())
    assert rel(images_fast.float(), images_ref) < BF16_TOL


def test_low_precision_copy(reference):
    tok = load_tokenizer(reference / "softvq" / "tiny", device="cpu")
    copy = fast.low_precision_copy(tok, torch.bfloat16)
    assert all(p.dtype == torch.float32 for p in tok.parameters())        # original untouched
    assert all(p.dtype == torch.float32 for p in copy.quantize.parameters())  # tau 0.07: fp32
    assert copy.encoder.latent_tokens.dtype == torch.float32       # residual stream stays fp32
    assert copy.quant_conv.weight.dtype == torch.bfloat16          # matmul weights in bf16
    images = torch.rand(2, 3, tok.image_size, tok.image_size) * 2 - 1
    with torch.no_grad():
        ref = tok.encode(images)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            enc = copy.encode(images)
    assert enc.latents.dtype == torch.float32
    assert rel(enc.latents, ref.latents) < 2e-2


@pytest.mark.parametrize("name", ["softvq/tiny", "titok/tiny_pixels", "titok/tiny_vae"])
def test_fast_tokenizer_on_cpu_is_the_model(reference, name):
    tok = load_tokenizer(reference / name, device="cpu")
    ftok = fast.fast_tokenizer(tok)
    assert ftok.num_tokens == tok.num_tokens and ftok.family == tok.family
    images = torch.rand(2, 3, tok.image_size, tok.image_size) * 2 - 1
    with torch.no_grad():
        enc, enc_fast = tok.encode(images), ftok.encode(images)
        assert torch.equal(enc.latents, enc_fast.latents)
        assert torch.equal(tok.decode(enc.latents), ftok.decode(enc.latents))
        if enc.indices is not None:
            assert torch.equal(tok.decode(enc.indices), ftok.decode(enc.indices))


@pytest.mark.parametrize("decay", ["linear", "constant", "power-cosine"])
@pytest.mark.parametrize("temperature", [0.0, 2.0])
def test_maskgit_fast_same_draws_same_ids(reference, decay, temperature):
    gen = load_generator(reference / "titok" / "maskgit_tiny", device="cpu")
    kw = dict(seed=3, guidance_decay=decay, randomize_temperature=temperature, steps=6)
    assert torch.equal(sample_maskgit(gen, [1, 2, 3, 4], **kw),
                       fast.sample_maskgit_fast(gen, [1, 2, 3, 4], **kw))


def test_maskgit_fast_uvit(reference):
    from softvq_demo.models.maskgit import UViTMaskGIT

    manifest = json.loads((reference / "titok" / "manifests" / "tokenizer_titok_s128.json").read_text())
    config = manifest["config"]
    config["model"]["generator"].update(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                        intermediate_size=64, image_seq_len=128)
    torch.manual_seed(0)
    gen = UViTMaskGIT(config).eval()
    assert torch.equal(sample_maskgit(gen, [1, 2], seed=3, steps=4),
                       fast.sample_maskgit_fast(gen, [1, 2], seed=3, steps=4))


def test_sample_fast_flag_on_cpu_falls_back(reference):
    gen = load_generator(reference / "softvq" / "sit_tiny", device="cpu")
    assert not fast.fast_enabled(torch.device("cpu"), True)
    a = sample(gen, [1, 2], seed=0, steps=4, fast=True)
    b = sample(gen, [1, 2], seed=0, steps=4, fast=False)
    assert torch.equal(a, b)


def test_switches(monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setenv("SOFTVQ_FAST", "0")
    assert not fast.fast_enabled(cuda)
    assert fast.fast_enabled(cuda, True)
    monkeypatch.setenv("SOFTVQ_FAST", "1")
    assert fast.fast_enabled(cuda) and not fast.fast_enabled(torch.device("cpu"))
    monkeypatch.setenv("SOFTVQ_COMPILE", "0")
    assert not fast.compile_enabled(cuda)
    assert not fast.compile_enabled(torch.device("cpu"))


@pytest.mark.slow
def test_bench_harness_tiny_cpu(tmp_path):
    """``python -m softvq_demo.bench --device cpu --tiny --mode core`` runs and checks itself."""
    from softvq_demo.bench.gpu import main

    main(["--device", "cpu", "--tiny", "--mode", "core", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["checks"] and all(c["ok"] for c in data["checks"])
    assert {r["config"] for r in data["sit"]} >= {"fast", "official"}
    assert not [n for n in data["notes"] if n.startswith("ERROR")]
    assert (tmp_path / "bench.md").read_text().startswith("# softvq-demo GPU benchmark")


class _ReplayByRerun:
    """Stands in for a captured CUDA graph on the CPU: a replay re-runs the captured step, which
    reads the step index and every table from the runner's static buffers, as a graph does."""

    def __init__(self, fn):
        self.fn = fn

    def replay(self):
        self.fn()


@pytest.fixture
def cpu_graphs(monkeypatch):
    def init(self, device, enabled):
        self.device, self.enabled, self.pool, self.graphs, self.failed = device, enabled, None, {}, None

    def capture(self, fn, reset):
        self._warm_up(fn, reset)  # the real warm-up protocol
        return _ReplayByRerun(fn)

    monkeypatch.setattr(runtime._Graphs, "__init__", init)
    monkeypatch.setattr(runtime._Graphs, "_capture", capture)
    monkeypatch.setattr(fast_sit, "graphs_enabled", lambda device, graphs=None: True)


@pytest.mark.parametrize("precompute", [True, False])
def test_graph_runner_reused_for_a_new_kind_of_step(tiny_sit, cpu_graphs, precompute):
    """Regression (seen on the H100): an unguided-only run leaves the step counter at the end of
    the table; a later guided run on the same runner captures its guided graph then, and its
    warm-up step must start from a reset counter, not index past the table."""
    fast.release(tiny_sit)
    y = torch.tensor([2, 4])
    for cfg in (1.0, 1.75, 1.0, 1.75):
        noise = torch.randn(2, 8, 4)
        opts = dict(steps=6, method="euler", cfg_scale=cfg, guidance_low=0.0, guidance_high=1.0,
                    null_class=10)
        ref = sample_flow(tiny_sit, noise, y, **opts)
        out = fast.sample_sit_fast(tiny_sit, noise, y, precompute=precompute, **opts)
        assert rel(out, ref) < 1e-5
    runner = next(iter(fast.sit_fast(tiny_sit).runners.values()))
    assert set(runner.graphs.graphs) == {False, True}  # one runner, both graphs
    fast.release(tiny_sit)


def test_shifted_layernorm_blocks_equal_the_previous_layout(tiny_sit):
    """Each block now ends with the next block's modulated LayerNorm; the previous layout
    (LayerNorm at the start of each block, kept in bench/legacy.py for the A/B) computes the same."""
    from softvq_demo.bench.legacy import previous_blocks

    noise = torch.randn(2, 8, 4, generator=torch.Generator().manual_seed(5))
    y = torch.tensor([1, 7])
    opts = dict(steps=8, method="sde", cfg_scale=1.75, guidance_low=0.0, guidance_high=0.7, null_class=10)
    new = fast.sample_sit_fast(tiny_sit, noise, y, rng=torch.Generator().manual_seed(3), **opts)
    fast.release(tiny_sit)
    with previous_blocks(fast.sit_fast(tiny_sit)) as legacy:
        old = fast.sample_sit_fast(tiny_sit, noise, y, rng=torch.Generator().manual_seed(3), **opts)
        vel = legacy.velocity(noise, torch.full((2,), 0.3), y)
    assert rel(new, old) < 1e-6
    assert rel(fast.sit_fast(tiny_sit).velocity(noise, torch.full((2,), 0.3), y), vel) < 1e-6
    assert rel(vel, tiny_sit(noise, torch.full((2,), 0.3), y)[:, :, :4]) < 1e-5
    fast.release(tiny_sit)


def test_attention_pick_and_table_limit_on_cpu(tiny_sit, monkeypatch):
    cpu = torch.device("cpu")
    assert fast.pick_attention(cpu, 64, 16, 72, torch.float32) is None  # PyTorch's own SDPA
    assert fast.sit_fast(tiny_sit).attn is None
    assert fast_sit.table_limit(cpu) == fast_sit.MOD_TABLE_BYTES
    q, k, v = torch.randn(3, 2, 4, 8, 16).unbind(0)
    assert torch.allclose(runtime._attention(q, k, v, None),
                          torch.nn.functional.scaled_dot_product_attention(q, k, v))


@pytest.mark.parametrize("name,dtype", [("softvq/tiny", torch.bfloat16),
                                        ("titok/tiny_pixels", torch.float16),
                                        ("titok/tiny_vae", torch.float16)])
def test_fast_tokenizer_precision_on_cuda(reference, monkeypatch, name, dtype):
    """On CUDA: SoftVQ's copy in bf16; TiTok's in float16 (bf16 put its images 2-3e-2 off float32).
    Checked by telling the fast path it is on CUDA (graphs off) and watching what it builds."""
    tok = load_tokenizer(reference / name, device="cpu")
    built = []
    monkeypatch.setattr(tokenizers, "module_device", lambda m: torch.device("cuda"))
    monkeypatch.setattr(tokenizers, "low_precision_copy", lambda m, dt, **kw: built.append(dt) or m)
    ftok = fast.FastTokenizer(tok, compile=False, graphs=False)
    assert ftok.dtype == dtype and built == [dtype]


def test_titok_float16_copy_tracks_float32(reference):
    """The float16 copy of a TiTok decodes within 1e-2 of float32 (CPU float16 autocast)."""
    tok = load_tokenizer(reference / "titok" / "tiny_pixels", device="cpu")
    copy = fast.low_precision_copy(tok, torch.float16)
    ids = torch.randint(0, tok.codebook_size, (2, tok.num_tokens), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = tok.decode(ids)
        with torch.autocast("cpu", dtype=torch.float16):
            out = copy.decode(ids)
    assert rel(out.float(), ref) < 1e-2


@pytest.mark.parametrize("res_dtype", [torch.float32, torch.bfloat16])
def test_fused_norm_block_equals_the_unfused_block(tiny_sit, res_dtype):
    """The block with its two residual + LayerNorm passes through ``kernels.residual_norm_op``
    (on the CPU its PyTorch reference, which defines the Triton kernel's contract: the gate,
    shift and scale offsets inside the block's modulation) computes what the unfused block does,
    for a float32 and a bf16-stored residual stream."""
    f = fast.sit_fast(tiny_sit)
    g = torch.Generator().manual_seed(0)
    r, n, hidden = 3, 8, f.hidden
    h = torch.randn(r, n, hidden, generator=g).to(res_dtype)
    a = torch.randn(r, n, hidden, generator=g)
    mod = torch.randn(r, 6 * hidden, generator=g)
    mod_next = torch.randn(r, 2 * hidden, generator=g)
    plain = fast_sit._sit_block(h, a, mod, mod_next, *f.blocks[0], f.heads, None, None, False)
    fused = fast_sit._sit_block(h, a, mod, mod_next, *f.blocks[0], f.heads, None, None, True)
    assert plain[0].dtype == fused[0].dtype == res_dtype
    for x, y in zip(plain, fused):
        assert rel(x, y) < 1e-6


def test_split_k_block_equals_the_fused_block(tiny_sit, monkeypatch):
    """proj and fc2 as split-K partial sums (``kernels.split_product``), summed with the bias by
    the norm pass that consumes them: the block computes what the fused block does, for every
    split of either product (each split really taken); the partials alone sum to the plain
    product."""
    f = fast.sit_fast(tiny_sit)
    g = torch.Generator().manual_seed(1)
    r, n, hidden = 2, 8, f.hidden
    mlp = f.blocks[0][4].shape[0]
    h = torch.randn(r, n, hidden, generator=g)
    a = torch.randn(r, n, hidden, generator=g)
    mod = torch.randn(r, 6 * hidden, generator=g)
    mod_next = torch.randn(r, 2 * hidden, generator=g)
    x, w = torch.randn(r * n, mlp, generator=g), f.blocks[0][6]
    parts = kernels.split_product(x, w, 4)
    assert parts.shape == (4, r * n, hidden) and rel(parts.sum(0), x @ w.t()) < 1e-6
    fused = fast_sit._sit_block(h, a, mod, mod_next, *f.blocks[0], f.heads, None, None, True)
    assert hidden % 4 == 0 and mlp % 8 == 0
    taken: list = []
    product = kernels.split_product

    def counted(x, w, parts):
        taken.append(parts)
        return product(x, w, parts)

    monkeypatch.setattr(kernels, "split_product", counted)
    for split in [(p, q) for p in (0, 2, 4) for q in (0, 2, 8)]:
        taken.clear()
        out = fast_sit._sit_block(h, a, mod, mod_next, *f.blocks[0], f.heads, None, None, True, split)
        assert taken == [p for p in split if p], split
        for got, want in zip(out, fused):
            assert rel(got, want) < 1e-5, split


def test_split_k_is_picked_only_on_cuda_few_rows():
    """No probe, and a plain product, off CUDA or past the row limit."""
    cpu = torch.device("cpu")
    assert kernels.pick_split(128, 64, 1152, 4608, cpu, torch.bfloat16, torch.bfloat16) == 0
    cuda = torch.device("cuda")
    assert kernels.pick_split(kernels.SPLIT_MAX_ROWS * 2, 64, 1152, 4608, cuda, torch.bfloat16,
                              torch.bfloat16) == 0
    assert kernels.split_candidates(4608) == [2, 3, 4, 6, 8] and kernels.split_candidates(72) == [3]


def test_bf16_residual_stream_within_tolerance(tiny_sit, monkeypatch):
    """SOFTVQ_RESIDUAL=bf16 stores the residual stream in bf16 (adds and LayerNorms stay float32):
    a different result from the float32 stream, still within the bf16 tolerance of the reference."""
    noise = torch.randn(2, 8, 4, generator=torch.Generator().manual_seed(6))
    y = torch.tensor([3, 8])
    opts = dict(steps=10, method="sde", cfg_scale=1.75, guidance_low=0.0, guidance_high=0.7, null_class=10)
    ref = sample_flow(tiny_sit, noise, y, rng=torch.Generator().manual_seed(4), **opts)
    fast.release(tiny_sit)
    monkeypatch.setenv("SOFTVQ_RESIDUAL", "bf16")
    assert fast.sit_fast(tiny_sit).residual == torch.bfloat16
    out = fast.sample_sit_fast(tiny_sit, noise, y, rng=torch.Generator().manual_seed(4), **opts)
    fast.release(tiny_sit)
    assert 1e-6 < rel(out, ref) < BF16_TOL


_INTERPRETED = r"""
import torch
from softvq_demo.sampling.fast import kernels as K
torch.manual_seed(0)
out = {}
def rel(a, b):
    return float((a - b).norm() / b.norm())
# every launch variant: N not a power of two (40), head dims 24 (16 + 16, 8 masked) and 72
# (64 + 16); 8 (row, head) pairs span several rows
for r, n, h, d in ((4, 40, 2, 24), (2, 32, 2, 72)):
    qkv = torch.randn(r, n, 3 * h * d)
    q, k, v = qkv.view(r, n, 3, h, d).permute(2, 0, 3, 1, 4)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(r, n, h * d)
    for name, launch in K.ATTN_VARIANTS.items():
        e = rel(K._short_attention_impl(qkv, h, launch), ref)
        out["attention/" + name] = max(out.get("attention/" + name, 0.0), e)
    out["attention/default"] = max(out.get("attention/default", 0.0), rel(K._short_attention_impl(qkv, h), ref))
# rows 40 (8 rows per program divide it) and 6 (rows per program cut to 2); rows 72 = 64 + 8,
# 100 = 64 + 64 with 28 masked, and the padded blocks 128
for r, n, hid in ((3, 40, 72), (2, 6, 100)):
    hs, o = torch.randn(r, n, hid), torch.randn(r, n, hid)
    mod = torch.randn(r, 7 * hid)
    gate, ss = mod[:, hid:2 * hid], mod[:, 4 * hid:6 * hid]
    ref_h, ref_m = K.residual_norm_reference(hs, o, gate, ss)
    for name, launch in list(K.NORM_VARIANTS.items()) + [("default", None)]:
        got_h, got_m = K._residual_norm_impl(hs, o, gate, ss, launch)
        for key, e in (("norm_h/" + name, rel(got_h, ref_h)), ("norm_m/" + name, rel(got_m, ref_m))):
            out[key] = max(out.get(key, 0.0), e)
    # a split-K product's float32 partial sums plus its bias, summed by the norm pass
    parts, bias = torch.randn(3, r, n, hid), torch.randn(hid)
    ref_h, ref_m = K.residual_norm_reference(hs, parts, gate, ss, bias=bias)
    for name, launch in (("base", K.NORM_VARIANTS["base"]), ("r4 split early", K.NORM_VARIANTS["r4 split early"]),
                         ("default", None)):
        got_h, got_m = K._residual_norm_impl(hs, parts, gate, ss, launch, bias=bias)
        for key, e in (("parts_h/" + name, rel(got_h, ref_h)), ("parts_m/" + name, rel(got_m, ref_m))):
            out[key] = max(out.get(key, 0.0), e)
a, w, b = torch.randn(24, 256), torch.randn(64, 256) / 16, torch.randn(64)
ref = torch.nn.functional.gelu(a @ w.t() + b, approximate="tanh")
out["linear"] = max(float((K._skinny_impl(a, w, b, 1, *cfg) - ref).norm() / ref.norm())
                    for cfg in ((32, 1, 64), (32, 2, 64), (64, 4, 64)))
print(out)
"""


def test_triton_kernels_interpreted():
    """The Triton kernels (short attention, fused residual + LayerNorm -- each in every launch
    variant the benchmark times, and the default --, skinny linear) against their PyTorch
    definitions, run by Triton's CPU interpreter in a subprocess (float32 data:
    the interpreter's bf16 rounding differs from the GPU's; on CUDA each kernel is checked
    against float32 again before use)."""
    pytest.importorskip("triton")
    import ast
    import os
    import subprocess
    import sys

    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-c", _INTERPRETED], env=env, capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    errs = ast.literal_eval(res.stdout.strip().splitlines()[-1])
    from softvq_demo.sampling.fast import kernels

    names = list(kernels.NORM_VARIANTS) + ["default"]
    assert set(errs) == ({"linear"} | {f"attention/{n}" for n in list(kernels.ATTN_VARIANTS) + ["default"]}
                         | {f"norm_{x}/{n}" for n in names for x in "hm"}
                         | {f"parts_{x}/{n}" for n in ("base", "r4 split early", "default") for x in "hm"})
    assert all(e < 1e-5 for e in errs.values()), errs


def test_no_collection_around_captures():
    """Captures run with the collector off (a graph destroyed by it mid-capture fails the
    capture); nested or concurrent blocks restore it only after the last one, and never turn on
    a collector that was off before."""
    import gc
    import threading

    from softvq_demo.sampling.fast.capture import no_collection

    assert gc.isenabled()
    inside, release = threading.Event(), threading.Event()

    def other():
        with no_collection():
            inside.set()
            release.wait(10)

    t = threading.Thread(target=other)
    with no_collection():
        assert not gc.isenabled()
        t.start()
        assert inside.wait(10)
    assert not gc.isenabled()          # the other thread's capture is still running
    release.set()
    t.join(10)
    assert gc.isenabled()
    gc.disable()
    try:
        with no_collection():
            pass
        assert not gc.isenabled()      # it was off before: stays off
    finally:
        gc.enable()
