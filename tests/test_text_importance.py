"""Issue 13's analyses: the one ablation baseline, TokBench's protocol, the share pick rule,
dataset-level importance (beats random on held-out images), deletion curves (top-k above random-k),
the prefix strip, and the codebook / latent-map figure fixes.

Known answers come from a toy tokenizer whose token i paints block i of the image and from
constructed recognisers; the end-to-end checks run the embedded SoftVQ model with real OCR."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from softvq_demo.analysis import ablation as A
from softvq_demo.analysis import baseline as B
from softvq_demo.analysis import codebook as C
from softvq_demo.analysis import deletion as D
from softvq_demo.analysis import importance as I
from softvq_demo.analysis import latent_map as L
from softvq_demo.analysis import prefix as P
from softvq_demo.analysis import text_tokens as T
from softvq_demo.analysis import tokbench as TB
from softvq_demo.analysis.codec import decode, encode
from softvq_demo.analysis.pictures import to_uint8

from test_analysis import BlockTokenizer, block_ocr, images

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def toy():
    return BlockTokenizer().eval()


class BlockScorer:
    """A 'recogniser' for the toy: T-NED 1 when blocks 5 and 6 are intact, 0.5 with one of them
    broken, 0 with both (each block one character of a two-letter word); the reference is the
    toy's plain reconstruction of each image."""

    name = "toy protocol"

    def __init__(self, toy, originals):
        self.ref = [to_uint8(r) for r in decode(toy, encode(toy, originals).latents)]

    def __len__(self):
        return len(self.ref)

    def score(self, j, imgs):
        out = []
        for im in imgs:
            a = to_uint8(im).astype(int)
            ok = [np.abs(a[4:8, 4 * b:4 * b + 4] - self.ref[j][4:8, 4 * b:4 * b + 4]).mean() < 10
                  for b in (1, 2)]
            out.append(sum(ok) / 2)
        return np.array(out)


# --------------------------------------------------------------------------- baseline
def test_baseline_is_recorded_and_the_default_is_the_per_position_mean(toy, monkeypatch):
    x = images(6, 16, seed=1)
    lat = encode(toy, x).latents
    base = B.baseline_from_latents(lat, "six random images")
    assert torch.allclose(base.tokens, lat.mean(0)) and base.num_images == 6
    assert base.baseline_norm < base.token_norm          # the mean of many tokens is shorter
    assert "six random images" in base.label
    res = A.ablate_tokens(toy, lat[0], "mean", mean=base)
    assert res.baseline_label == base.label
    assert torch.allclose(res.replacement, base.tokens)
    assert A.ablate_tokens(toy, lat[0], "zero").baseline_label == "baseline: zero vector"
    assert B.DEFAULT_BASELINE == "mean"
    # with no mean given, ablation uses the library default (stand-in: a fixed Baseline)
    monkeypatch.setattr(A, "default_baseline", lambda tok: base)
    assert A.ablate_tokens(toy, lat[0]).baseline_label == base.label
    with pytest.raises(ValueError, match="shape"):
        B.resolve(toy, torch.zeros(3, 3))


# --------------------------------------------------------------------------- TokBench
def test_tokbench_protocol_on_a_constructed_case():
    # one 256×128 image (longer side 256) with four boxes of heights 4, 6, 9 and 20 px:
    # ratios 0.0156 (below TokBench's first edge: not counted), 0.0234, 0.0352, 0.078
    img = np.zeros((128, 256, 3), np.uint8)
    boxes = [(0, 0, 30, 4), (0, 10, 30, 16), (0, 20, 30, 29), (0, 40, 60, 60)]
    for v, (x0, y0, x1, y1) in enumerate(boxes, 1):
        img[y0:y1, x0:x1] = 10 * v                     # the crop's value says which box it is
    reads = {10: "tiny", 20: "cat", 30: "Dog", 40: "HOUSE"}   # what the recogniser "reads"
    gts = ["tiny", "Cat", "Dog", "house"]

    def recognize(crop):
        assert crop.shape[0] in (4, 6, 9, 20)         # a ground-truth box crop, nothing else
        return reads[int(crop[0, 0, 0])]

    res = TB.tokbench_text([img], [boxes], [gts], recognize=recognize, setting=256)
    ratios = [r["ratio"] for r in res.instances]
    assert ratios == pytest.approx([4 / 256, 6 / 256, 9 / 256, 20 / 256])
    assert [r["bucket"] for r in res.instances] == [None, 0, 1, 2]
    assert res.uncounted == 1
    # case-sensitive: "cat" vs "Cat" is wrong (NED 1 − 1/3), "HOUSE" vs "house" all wrong
    accs = [r["t_acc"] for r in res.instances]
    neds = [r["t_ned"] for r in res.instances]
    assert accs == [1.0, 0.0, 1.0, 0.0]
    assert neds == pytest.approx([1.0, 2 / 3, 1.0, 0.0])
    assert [b["n"] for b in res.buckets] == [1, 1, 1]
    assert res.t_acc == pytest.approx(np.mean([0.0, 1.0, 0.0]))          # mean of bucket means
    assert res.t_ned == pytest.approx(np.mean([2 / 3, 1.0, 0.0]))
    # the 512 setting's edges put the 4 px box in (0.01, 0.02]: now counted
    res512 = TB.tokbench_text([img], [boxes], [gts], recognize=recognize, setting=512)
    assert [r["bucket"] for r in res512.instances] == [0, 1, 2, 2] and res512.uncounted == 0
    assert "TokBench" in res.protocol and "TokBench" not in TB.ORIGINAL_OCR_NAME.split("(")[0]
    with pytest.raises(ValueError, match="setting"):
        TB.bucket_edges(300)


def test_tokbench_with_the_real_recogniser_is_case_sensitive():
    pytest.importorskip("rapidocr_onnxruntime")
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(str(ROOT / "assets" / "fonts" / "DejaVuSans-Bold.ttf"), 40)
    im = Image.new("RGB", (256, 128), "white")
    ImageDraw.Draw(im).text((20, 30), "OPEN", font=font, fill="black")
    box = im.convert("L").point(lambda v: v < 128).getbbox()
    box = (box[0] - 4, box[1] - 4, box[2] + 4, box[3] + 4)
    res = TB.tokbench_text([np.asarray(im)], [[box, box]], [["OPEN", "Open"]])
    assert [r["pred"] for r in res.instances] == ["OPEN", "OPEN"]
    assert [r["t_acc"] for r in res.instances] == [1.0, 0.0]
    assert res.instances[1]["t_ned"] == pytest.approx(0.25)


# --------------------------------------------------------------------------- pick rule
def test_pick_by_share_states_its_rule():
    pick = T.pick_by_share([0.5, 0.0, 0.3, 0.1, 0.1, -0.2], 0.8, "T-NED drop")
    assert pick.tokens == [0, 2] and pick.reached == pytest.approx(0.8)
    assert "80%" in pick.rule and "T-NED drop" in pick.rule and "2 tokens" in pick.rule
    assert T.pick_by_share([0.5, 0.0, 0.3, 0.1, 0.1], 0.81).tokens == [0, 2, 3]
    none = T.pick_by_share([0.0, -1.0], 0.8, "T-NED drop")
    assert none.tokens == [] and "none is picked" in none.rule


def test_per_image_pick_uses_ocr_damage_then_pixels(toy):
    from softvq_demo.analysis.ocr import tned

    x = images(1, 16, seed=5)
    lat = encode(toy, x).latents[0]
    mask = T.boxes_to_mask([(4, 4, 12, 8)], 16, 16)
    read = block_ocr([5, 6])(to_uint8(decode(toy, lat)[0]))
    res = T.analyze_text_tokens(toy, lat, mask, mode="zero", read_text=read, similarity=tned)
    pick = res.pick(0.8)
    assert pick.tokens == [5, 6] and "T-NED drop" in pick.rule and res.text_tokens() == [5, 6]
    assert res.pick(0.5).tokens in ([5], [6])
    res2 = T.analyze_text_tokens(toy, lat, mask, mode="zero")      # no OCR: in-text |Δ|
    pick2 = res2.pick(0.8)
    assert set(pick2.tokens) <= {5, 6} and "no OCR" in pick2.rule


# --------------------------------------------------------------------------- importance + deletion (toy)
def test_importance_and_deletion_curves_on_the_toy(toy):
    x = images(5, 16, seed=7)
    masks = T.boxes_to_mask([(4, 4, 12, 8)], 16, 16).expand(5, 16, 16).clone()
    black = B.Baseline("mean", torch.full((16, 3), -1.0), "black blocks")   # far from every block
    imp = I.text_importance(toy, x, masks, scorer=BlockScorer(toy, x), baseline=black)
    assert sorted(imp.ranking()[:2]) == [5, 6]
    assert imp.mean("t_ned_drop")[5] == pytest.approx(0.5) and imp.se("t_ned_drop")[5] == pytest.approx(0)
    assert imp.mean("t_ned_drop")[0] == 0 and imp.mean("inbox_error")[0] == pytest.approx(0)
    lo, hi = imp.ci("inbox_error")
    assert (lo <= imp.mean("inbox_error") + 1e-9).all() and (hi >= imp.mean("inbox_error") - 1e-9).all()
    assert imp.pick(0.8).tokens == [5, 6]
    assert imp.baseline is black and imp.protocol == "toy protocol"
    assert {"ΔT-NED", "ΔT-NED s.e.", "concentration"} <= set(imp.rows()[0])
    dc = D.deletion_curves(toy, x, imp.ranking(), scorer=BlockScorer(toy, x), masks=masks, baseline=black,
                           random_draws=4, seed=0)
    assert dc.ks == list(range(1, 17))
    top, _ = dc.curve("t_ned_drop", "top")
    rnd, _ = dc.curve("t_ned_drop", "random")
    bot, _ = dc.curve("t_ned_drop", "bottom")
    assert top[0] == pytest.approx(0.5) and top[1] == pytest.approx(1.0)    # known answers
    assert bot[:14].max() == 0 and bot[-1] == pytest.approx(1.0)
    assert (top >= rnd - 1e-9).all() and (top[:8] > rnd[:8]).all()
    gap, se = dc.gap("t_ned_drop")
    assert gap > 0 and dc.summary()["t_ned_drop_top_minus_random"][0] == pytest.approx(gap)
    D.deletion_figure({"toy": dc}) and D.deletion_figure({"toy": dc}, "inbox_error")
    I.importance_figure({"toy": imp})
    # per-image rankings (uploads) and the pixels-only path
    dc2 = D.deletion_curves(toy, x, imp.per_image_ranking(), masks=masks, baseline=black, ks=[1, 2])
    assert dc2.protocol is None and dc2.curve("inbox_error", "top")[0][0] > 0
    with pytest.raises(ValueError, match="permutation"):
        D.deletion_curves(toy, x, [0, 0, 1], baseline=black)
    # no ground truth (uploads): the reference is the original's OCR, and the protocol says so
    def read(im):   # one letter per text block, from its grey level
        return "".join(chr(65 + int(im[4:8, 4 * b:4 * b + 4].mean()) // 32) for b in (1, 2))

    orig = TB.OriginalOCR(x, read=read)
    assert orig.references == [read(to_uint8(im)) for im in x] and "original" in orig.reference
    dc3 = D.deletion_curves(toy, x, imp.per_image_ranking(), scorer=orig, masks=masks, baseline=black,
                            ks=[1, 2, 16], random_draws=2)
    assert dc3.protocol == TB.ORIGINAL_OCR_NAME and "not TokBench" in dc3.protocol
    t3, _ = dc3.curve("t_ned_drop", "top")
    assert t3[1] >= t3[0] > 0 and t3[1] >= dc3.curve("t_ned_drop", "random")[0][1]


# --------------------------------------------------------------------------- prefix strip
class PrefixToy(BlockTokenizer):
    """The toy, prefix-decodable: missing trailing tokens decode as black blocks."""

    prefix_decodable = True

    def decode(self, latents):
        pad = self.num_tokens - latents.shape[1]
        if pad:
            latents = torch.cat([latents, torch.full((latents.shape[0], pad, 3), -1.0)], 1)
        return super().decode(latents)


def test_prefix_strip_for_prefix_and_other_tokenizers(toy):
    x = images(1, 16, seed=3)
    lat = encode(toy, x).latents[0]
    ranking = list(range(15, -1, -1))
    strip = P.prefix_strip(toy, lat, ranking, baseline="zero")
    assert strip.ks == [1, 2, 4, 8, 16] and not strip.prefix_decoded and strip.notes
    assert torch.allclose(strip.first[2], decode(toy, A.keep_tokens(lat, torch.zeros_like(lat), [0, 1, 2, 3]))[0])
    assert torch.allclose(strip.top[1], decode(toy, A.keep_tokens(lat, torch.zeros_like(lat), [15, 14]))[0])
    assert strip.top_labels[-1] == "all 16" and P.strip_image(strip).shape == (2 * 18 + 2, 5 * 18 + 2, 3)
    ptok = PrefixToy().eval()
    strip2 = P.prefix_strip(ptok, lat, ranking, baseline="zero")
    assert strip2.prefix_decoded and strip2.first_labels[0] == "first 1" and not strip2.notes
    first1 = strip2.first[0]
    assert torch.allclose(first1[:, :4, :4], decode(toy, lat)[0][:, :4, :4])   # block 0 kept
    assert torch.allclose(first1[:, 4:, :], torch.full_like(first1[:, 4:, :], -1))  # the rest black


# --------------------------------------------------------------------------- codebook and latent map
def test_indices_figure_uses_each_tokens_own_codebook():
    # 4 tokens, 2 codebooks: tokens 0-1 use codebook 0, tokens 2-3 codebook 1
    data = torch.tensor([[3, 1, 3, 2], [3, 1, 3, 3], [0, 1, 3, 3]])
    usage = C.codebook_usage(data, 4, num_codebooks=2)
    fig = C.indices_figure(torch.tensor([3, 1, 3, 2]), usage)
    hm = fig.data[0]
    custom = np.asarray(hm.customdata)[0]
    assert custom[0][2] == 0 and custom[0][3] == pytest.approx(2 / 6)   # codeword 3 in codebook 0
    assert custom[2][2] == 1 and custom[2][3] == pytest.approx(5 / 6)   # codeword 3 in codebook 1
    assert hm.showscale is False and len({c for _, c in hm.colorscale}) == 3   # 3 distinct ids
    assert C.usage_figure(usage).layout.yaxis.type == "log"


@pytest.mark.slow
def test_latent_map_colouring_is_never_silently_wrong(monkeypatch):
    lat = torch.randn(30, 4, 3, generator=torch.Generator().manual_seed(0))
    pooled = L.latent_map(lat, "image", "pca", labels=[f"c{i % 12}" for i in range(30)])
    with pytest.raises(ValueError, match="per-token view"):
        L.scatter_figure(pooled, "token")
    fig = L.scatter_figure(pooled, "class")
    assert len(fig.data) == 12 and len({t.marker.color for t in fig.data}) == 12
    with pytest.raises(ValueError, match="class labels"):
        L.scatter_figure(L.latent_map(lat, "image", "pca"), "class")
    monkeypatch.setattr(L, "UMAP_MAX_POINTS", 50)
    lm = L.latent_map(lat, "token", "umap")
    assert lm.coords.shape == (50, 2) and "50 of 120 points" in lm.extras["note"]
    assert "PCA init" in lm.extras["note"]


# --------------------------------------------------------------------------- the embedded model, real OCR
@pytest.mark.slow
def test_importance_beats_random_on_held_out_images():
    name = "textscenes-softvq-32"
    if not (ROOT / "checkpoints" / name / "config.json").is_file():
        pytest.skip(f"checkpoints/{name} not present")
    pytest.importorskip("rapidocr_onnxruntime")
    from softvq_demo import load_tokenizer
    from softvq_demo.data import textscenes as ts

    tok = load_tokenizer(name, device="cpu")
    x = ts.to_tensor(ts.render_batch(ts.split_seed("train", 0), range(32), image_size=tok.image_size)[0])
    base = B.baseline_from_images(tok, x, "32 textscenes train images")
    fit = I.textscenes_set(tok.image_size, 6, split="train", start=1000)      # ranking from train
    imp = I.text_importance(tok, fit.images, fit.masks, scorer=TB.GroundTruthText(fit.boxes, fit.texts),
                            baseline=base)
    ev = I.textscenes_set(tok.image_size, 6, split="heldout")                 # measured on held-out
    dc = D.deletion_curves(tok, ev.images, imp.ranking(), scorer=TB.GroundTruthText(ev.boxes, ev.texts),
                           masks=ev.masks, baseline=base, ks=[1, 2, 4], random_draws=2, seed=0)
    gap, se = dc.gap("t_ned_drop", "top", "random")
    assert gap > 0 and gap > se, (gap, se)        # the importance ranking beats random …
    top, _ = dc.curve("t_ned_drop", "top")
    rnd, _ = dc.curve("t_ned_drop", "random")
    assert (top > rnd).all()                      # … at every k
    assert dc.gap("inbox_error")[0] > 0
    assert dc.baseline is base and "TokBench" in dc.protocol
