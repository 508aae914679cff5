"""Library tests for the explorer's analyses (ablation, codebook, latent map, text tokens).

Real models: the tiny SoftVQ fixture made by the official code. A toy tokenizer whose tokens each
paint one block of the image checks the logic with known answers.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from softvq_demo.analysis import ablation as A
from softvq_demo.analysis import codec, pictures
from softvq_demo.analysis import codebook as C
from softvq_demo.analysis import latent_map as L
from softvq_demo.analysis import text_tokens as T
from softvq_demo.models.base import Encoded, Tokenizer


# --------------------------------------------------------------------------- toy tokenizer
class BlockTokenizer(Tokenizer):
    """16 tokens × 3 dims on a 16×16 image: token i is the mean colour of block i (4×4 grid of
    4×4 blocks) and decoding paints each block with its token. Ablating token i changes only
    block i, so every analysis has a known answer."""

    family = "toy"

    def __init__(self):
        super().__init__()
        self.config = {}
        self.image_size, self.num_tokens, self.token_dim = 16, 16, 3
        self.scale = torch.nn.Parameter(torch.ones(()), requires_grad=False)

    def encode(self, images):
        b = images.shape[0]
        blocks = images.reshape(b, 3, 4, 4, 4, 4).mean((3, 5))      # B×3×4×4
        return Encoded(latents=blocks.flatten(2).transpose(1, 2) * self.scale)

    def decode(self, latents):
        b = latents.shape[0]
        grid = latents.transpose(1, 2).reshape(b, 3, 4, 4)
        return grid.repeat_interleave(4, 2).repeat_interleave(4, 3)


@pytest.fixture(scope="module")
def toy():
    return BlockTokenizer().eval()


@pytest.fixture(scope="module")
def tiny(reference):
    from softvq_demo import load_tokenizer
    return load_tokenizer(reference / "softvq" / "tiny", device="cpu")


def images(n, size, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


# --------------------------------------------------------------------------- ablation
def test_ablated_latents_change_only_that_token():
    lat = torch.randn(8, 5)
    repl = torch.randn(8, 5)
    batch = A.ablated_latents(lat, repl)
    assert batch.shape == (8, 8, 5)
    for i in range(8):
        changed = (batch[i] != lat).any(1)
        assert changed.nonzero().flatten().tolist() == [i]
        assert torch.equal(batch[i, i], repl[i])


def test_ablation_of_block_tokenizer_touches_only_its_block(toy):
    x = images(1, 16)
    lat = codec.encode(toy, x).latents[0]
    res = A.ablate_tokens(toy, lat, "zero")
    assert res.maps.shape == (16, 16, 16) and res.effect.shape == (16,)
    for i in range(16):
        r, c = divmod(i, 4)
        outside = res.maps[i].clone()
        outside[4 * r:4 * r + 4, 4 * c:4 * c + 4] = 0
        assert float(outside.abs().max()) == 0
    # the effect equals the token's own contribution: |token| averaged over channels / 2, ÷ 16 blocks
    expected = lat.abs().mean(1) / 2 / 16
    assert torch.allclose(res.effect, expected, atol=1e-6)


def test_batched_ablation_matches_one_by_one(tiny):
    x = images(1, 64)
    lat = codec.encode(tiny, x).latents[0]
    res = A.ablate_tokens(tiny, lat, "noise", seed=3, batch_size=5)
    for i in (0, 7, 15):
        one = codec.decode(tiny, A.replace_tokens(lat, res.replacement, [i]))[0]
        assert torch.allclose(one, res.ablated[i], atol=1e-4)
    assert torch.allclose(res.base, codec.decode(tiny, lat)[0], atol=1e-4)
    assert res.ranking()[0] == int(res.effect.argmax())


def test_replacements(tiny):
    x = images(3, 64)
    enc = codec.encode(tiny, x)
    lat = enc.latents[0]
    mean = A.mean_latents(tiny, x)
    assert torch.allclose(mean, enc.latents.mean(0))
    assert torch.equal(A.replacement_tokens(lat, "zero"), torch.zeros_like(lat))
    assert torch.equal(A.replacement_tokens(lat, "mean", mean=mean), mean)
    assert torch.equal(A.replacement_tokens(lat, "other", other=enc.latents[1]), enc.latents[1])
    n1 = A.replacement_tokens(lat, "noise", seed=1)
    assert torch.equal(n1, A.replacement_tokens(lat, "noise", seed=1))
    assert not torch.equal(n1, A.replacement_tokens(lat, "noise", seed=2))
    with pytest.raises(ValueError, match="unknown replacement"):
        A.replacement_tokens(lat, "bogus")
    with pytest.raises(ValueError, match="needs"):
        A.replacement_tokens(lat, "mean")
    with pytest.raises(ValueError, match="shape"):
        A.replacement_tokens(lat, "other", other=torch.zeros(3, 2))


def test_swap_all_tokens_reproduces_b(tiny):
    x = images(2, 64, seed=1)
    enc = codec.encode(tiny, x)
    la, lb = enc.latents
    swapped = A.swap_tokens(la, lb, list(range(tiny.num_tokens)))
    assert torch.equal(swapped, lb)
    rec_b = codec.decode(tiny, lb)[0]
    assert torch.allclose(codec.decode(tiny, swapped)[0], rec_b)
    none = A.swap_tokens(la, lb, [])
    assert torch.equal(none, la)
    part = A.swap_tokens(la, lb, [2, 5])
    assert torch.equal(part[[2, 5]], lb[[2, 5]]) and torch.equal(part[0], la[0])
    with pytest.raises(ValueError, match="out of range"):
        A.swap_tokens(la, lb, [16])


def test_subsets_and_sweep(toy):
    x = images(1, 16, seed=2)
    lat = codec.encode(toy, x).latents[0]
    repl = torch.zeros_like(lat)
    full = A.reconstruct_subset(toy, lat, repl, list(range(16)))
    assert torch.allclose(full, codec.decode(toy, lat)[0])
    empty = A.reconstruct_subset(toy, lat, repl, [])
    assert float(empty.abs().max()) == 0
    res = A.ablate_tokens(toy, lat, "zero")
    top = A.top_k_tokens(res.effect, 4)
    assert set(top) == set(res.ranking()[:4])
    assert A.first_k_tokens(16, 3) == [0, 1, 2]
    sweep = A.k_sweep(toy, lat, repl, res.ranking(), [0, 4, 8, 16])
    mae = sweep["mae"]
    assert mae[-1] == pytest.approx(0, abs=1e-7) and all(a >= b for a, b in zip(mae, mae[1:]))
    # the top-k order is never worse than token order on the block tokenizer
    first = A.k_sweep(toy, lat, repl, list(range(16)), [4, 8])["mae"]
    assert mae[1] <= first[0] + 1e-7 and mae[2] <= first[1] + 1e-7
    with pytest.raises(ValueError):
        A.top_k_tokens(res.effect, 17)


def test_interpolation_endpoints(tiny):
    x = images(2, 64, seed=4)
    la, lb = codec.encode(tiny, x).latents
    for method in ("linear", "slerp"):
        lat, ts = A.interpolate_latents(la, lb, 5, method)
        assert lat.shape == (5,) + tuple(la.shape) and ts[0] == 0 and ts[-1] == 1
        assert torch.allclose(lat[0], la, atol=1e-5) and torch.allclose(lat[-1], lb, atol=1e-5)
    with pytest.raises(ValueError):
        A.interpolate_latents(la, lb, 1)


def test_pictures_and_figures(tiny):
    x = images(1, 64)
    rec, enc, times = codec.reconstruct(tiny, x)
    assert rec.shape == x.shape and times["total_s"] > 0
    ratio, how = codec.compression_ratio(tiny)
    assert ratio == pytest.approx(64 * 64 * 3 * 8 / (16 * 8 * 16)) and "bits" in how
    heat = pictures.colorize(torch.rand(5, 7))
    assert heat.shape == (5, 7, 3) and heat.dtype == np.uint8
    res = A.ablate_tokens(tiny, enc.latents[0], "zero")
    grid = pictures.map_grid(res.maps)
    assert grid.shape == (4 * 66 + 2, 4 * 66 + 2, 3)
    fig = A.effect_bar_figure(res.effect, selected=3)
    assert len(fig.data[0].y) == 16


# --------------------------------------------------------------------------- codebook
def test_entropy_and_effective_codewords():
    v = 8
    onehot = torch.eye(v)[:3]
    uniform = torch.full((2, v), 1 / v)
    assert torch.allclose(C.entropy(onehot, 2), torch.zeros(3), atol=1e-5)
    assert torch.allclose(C.entropy(uniform, 2), torch.full((2,), 3.0))
    assert torch.allclose(C.effective_codewords(uniform), torch.full((2,), 8.0))
    assert torch.allclose(C.effective_codewords(onehot), torch.ones(3), atol=1e-4)
    half = torch.tensor([[0.5, 0.5, 0, 0]])
    assert float(C.effective_codewords(half)) == pytest.approx(2.0)


def test_codebook_on_softvq_fixture(tiny):
    x = images(4, 64)
    enc = codec.encode(tiny, x)
    assert C.group_of_tokens(16, 2) == [0] * 8 + [1] * 8
    stats = C.token_stats(enc.probs[0])
    assert torch.equal(stats.top_index, enc.indices[0])
    assert (stats.effective >= 1 - 1e-4).all() and (stats.effective <= 64 + 1e-3).all()
    u = C.codebook_usage(enc.indices, 64, 2, enc.probs)
    assert u.hard.shape == (2, 64) and int(u.hard.sum()) == 4 * 16
    assert torch.allclose(u.soft.sum(1), torch.full((2,), 4 * 8.0), atol=1e-3)
    summary = u.summary()
    assert summary[0]["used"] == int((u.hard[0] > 0).sum())
    fig = C.posterior_figure(enc.probs[0], 2, top=5)
    assert len(fig.data) == 2 and np.asarray(fig.data[0].z).shape == (8, 5)
    tops = C.top_codewords(enc.probs[0], C.group_of_tokens(16, 2), 5)
    assert fig.data[0].x == tuple(f"c{c}" for c in tops[0])
    C.entropy_figure(enc.probs[0])
    C.usage_figure(u)
    C.indices_figure(enc.indices[0], C.codebook_usage(enc.indices[:, :8], 64, 1))
    with pytest.raises(ValueError):
        C.group_of_tokens(15, 2)


# --------------------------------------------------------------------------- latent map
@pytest.mark.slow
def test_latent_map_views_and_projections(tiny):
    x = images(12, 64)
    lat = L.encode_set(tiny, x, batch_size=5)
    assert lat.shape == (12, 16, 8)
    X, img, tok = L.features(lat, "token")
    assert X.shape == (12 * 16, 8) and img[17] == 1 and tok[17] == 1
    X, img, tok = L.features(lat, "image")
    assert X.shape == (12, 128) and (tok == -1).all()
    lm = L.latent_map(lat, "image", "pca", labels=["a", "b"] * 6)
    assert lm.coords.shape == (12, 2)
    # PCA's first axis carries the most variance
    assert lm.coords[:, 0].var() >= lm.coords[:, 1].var() - 1e-6
    fig = L.scatter_figure(lm, "class")
    assert len(fig.data) == 2
    assert int(fig.data[0].customdata[0][0]) in range(12)
    lm2 = L.latent_map(lat, "token", "umap")
    assert lm2.coords.shape == (12 * 16, 2) and np.isfinite(lm2.coords).all()
    L.scatter_figure(lm2, "token")
    with pytest.raises(ValueError):
        L.latent_map(lat, "pixels", "pca")


def test_cache():
    c = L.LRUCache(2)
    calls = []
    for key in ("a", "b", "a", "c", "b"):
        c.get_or_compute(key, lambda: calls.append(1) or len(calls))
    assert len(calls) == 4 and len(c) == 2  # "b" was evicted by "c", then recomputed
    t = torch.randn(5, 3)
    assert L.tensor_key(t) == L.tensor_key(t.clone()) != L.tensor_key(t + 1)


# --------------------------------------------------------------------------- text tokens
def test_boxes_and_masks():
    boxes = T.parse_boxes("1,2,5,6; (8 8 4 4)\n")
    assert boxes == [(1, 2, 5, 6), (4, 4, 8, 8)]
    m = T.boxes_to_mask(boxes, 10, 10)
    assert m[2:6, 1:5].all() and m[4:8, 4:8].all() and not m[0, 0]
    assert int(T.boxes_to_mask([(-5, -5, 2, 2)], 4, 4).sum()) == 4
    with pytest.raises(ValueError):
        T.parse_boxes("1,2,3")
    with pytest.raises(ValueError):
        T.parse_boxes("a,b,c,d")
    assert T.format_boxes(boxes).startswith("1,2,5,6")
    assert T.scale_boxes([(1, 1, 2, 2)], 2, 2) == [(2, 2, 4, 4)]


def block_ocr(text_blocks):
    """A fake OCR that reads one character per text block: the block's token is 'readable' when
    its colour is close to the original's."""
    def make(reference_image):
        ref = reference_image.astype(np.float32)

        def read(image):
            chars = []
            for k, i in enumerate(text_blocks):
                r, c = divmod(i, 4)
                a = image[4 * r:4 * r + 4, 4 * c:4 * c + 4].astype(np.float32)
                b = ref[4 * r:4 * r + 4, 4 * c:4 * c + 4]
                chars.append("ABCDEFGH"[k] if np.abs(a - b).mean() < 10 else "?")
            return "".join(chars)
        return read
    return make


def test_text_token_ranking_finds_the_tokens_that_break_ocr(toy):
    # "text" lives in blocks 5 and 6 (row 1, columns 1-2): pixels 4..12 × 4..8
    x = images(1, 16, seed=5)
    lat = codec.encode(toy, x).latents[0]
    rec = pictures.to_uint8(codec.decode(toy, lat)[0])
    read = block_ocr([5, 6])(rec)
    mask = T.boxes_to_mask([(4, 4, 12, 8)], 16, 16)
    from softvq_demo.analysis.ocr import tned
    res = T.analyze_text_tokens(toy, lat, mask, mode="zero", read_text=read, similarity=tned)
    assert res.base_text == "AB" and res.base_similarity == 1.0
    assert sorted(res.ranking()[:2]) == [5, 6]
    assert res.text_tokens() == [5, 6]
    assert float(res.ocr_damage[5]) == pytest.approx(0.5) and float(res.ocr_damage[0]) == 0
    assert float(res.effect_out[5]) == 0 and float(res.effect_in[5]) > 0
    assert float(res.concentration[5]) == pytest.approx(1 / mask.float().mean())
    rows = res.rows()
    assert {rows[0]["token"], rows[1]["token"]} == {5, 6} and "T-NED drop" in rows[0]
    keep, drop = T.keep_and_drop(toy, lat, res.ablation.replacement, res.text_tokens())
    assert read(pictures.to_uint8(keep)) == "AB" and read(pictures.to_uint8(drop)) == "??"
    T.text_effect_figure(res)
    # without OCR the pixel ranking alone finds them too
    res2 = T.analyze_text_tokens(toy, lat, mask, mode="zero")
    assert sorted(res2.ranking()[:2]) == [5, 6]


def test_text_profile_over_a_dataset(toy):
    x = images(4, 16, seed=6)
    masks = torch.zeros(4, 16, 16, dtype=torch.bool)
    masks[:, 0:4, 8:16] = True          # text always in blocks 2 and 3
    masks[3] = False                    # an image without text is skipped
    prof = T.text_profile(toy, x, masks, mode="zero")
    assert prof.num_images == 3
    assert set(prof.ranking()[:2]) == {2, 3}
    freq = prof.text_rank_frequency(top=2)
    assert float(freq[2]) == 1.0 and float(freq[3]) == 1.0
    T.profile_figure({"toy": prof})
    with pytest.raises(ValueError, match="empty"):
        T.region_effects(torch.rand(2, 4, 4), torch.zeros(4, 4, dtype=torch.bool))
