"""Image metrics (PSNR, SSIM, diversity) and OCR with its TokBench text metrics."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from softvq_demo.analysis import metrics
from softvq_demo.analysis import ocr
from softvq_demo.data import textscenes as ts


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    ds = ts.TextScenes("heldout", size=4)
    return torch.stack([ds[i]["image"] for i in range(4)])


# ----------------------------------------------------------------------------- image metrics
def test_identical_images(batch):
    assert math.isinf(metrics.psnr(batch, batch))
    assert metrics.psnr(batch, batch, max_db=100.0) == 100.0
    assert metrics.ssim(batch, batch) == pytest.approx(1.0, abs=1e-6)
    assert metrics.mse(batch, batch) == 0.0


def test_psnr_known_value():
    a = torch.zeros(2, 3, 16, 16)
    b = a + 0.2  # 0.1 on the [0, 1] scale → MSE 0.01 → 20 dB
    assert metrics.psnr(a, b) == pytest.approx(20.0, abs=1e-4)
    per = metrics.psnr(a, b, reduction="none")
    assert per.shape == (2,)
    assert metrics.psnr(a[0], b[0]) == pytest.approx(20.0, abs=1e-4)  # a single 3×H×W image


@pytest.mark.slow
def test_ssim_matches_scikit_image(batch):
    from skimage.metrics import structural_similarity

    noisy = (batch + 0.15 * torch.randn(batch.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    ours = metrics.ssim(batch, noisy, reduction="none")
    for i in range(batch.shape[0]):
        x = ((batch[i] + 1) / 2).permute(1, 2, 0).double().numpy()
        y = ((noisy[i] + 1) / 2).permute(1, 2, 0).double().numpy()
        ref = structural_similarity(x, y, channel_axis=-1, data_range=1.0, gaussian_weights=True,
                                    sigma=1.5, use_sample_covariance=False)
        assert float(ours[i]) == pytest.approx(ref, abs=1e-4)
    assert 0 < metrics.ssim(batch, noisy) < 1


def test_metrics_accept_uint8_and_check_shapes(batch):
    arr = ((batch[0] + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    assert math.isinf(metrics.psnr(arr, batch[0]))
    with pytest.raises(ValueError):
        metrics.psnr(batch, batch[:, :, :64])


def test_diversity(batch):
    assert metrics.diversity(batch[:1].expand(3, -1, -1, -1)) == pytest.approx(0.0, abs=1e-6)
    assert metrics.diversity(batch) > 0.1
    d = metrics.pairwise_distance(batch)
    assert d.shape == (4, 4) and torch.allclose(d, d.T) and float(d.diag().abs().max()) < 1e-3


# ----------------------------------------------------------------------------- text metrics
def test_edit_distance_and_tned():
    assert ocr.edit_distance("kitten", "sitting") == 3
    assert ocr.edit_distance("", "abc") == 3
    assert ocr.tned("house", "hose") == pytest.approx(0.8)
    assert ocr.tned("HOUSE", "house") == 1.0          # case-insensitive
    assert ocr.tned("Zebra!", "zebra") == 1.0         # punctuation ignored
    assert ocr.tned("", "") == 1.0 and ocr.tned("", "cat") == 0.0 and ocr.tned("dog", "") == 0.0
    assert ocr.tned("cat", "dog") == 0.0


def test_t_acc_and_aggregate():
    assert ocr.t_acc("Cat", "CAT") == 1.0 and ocr.t_acc("cat", "cats") == 0.0 and ocr.t_acc("", "") == 0.0
    m = ocr.text_metrics(["cat", "dg", "x"], ["CAT", "dog", ""])
    assert m["n"] == 2 and m["n_skipped"] == 1
    assert m["t_acc"] == pytest.approx(0.5) and m["t_ned"] == pytest.approx((1 + 2 / 3) / 2)
    with pytest.raises(ValueError):
        ocr.text_metrics(["a"], [])


def test_reads_word():
    assert ocr.reads_word("HOUSE", "house")
    assert ocr.reads_word("a Fish", "fish")
    assert not ocr.reads_word("fishy", "fish") and not ocr.reads_word("", "fish")
    res = [ocr.OCRResult((0, 0, 1, 1), "ZEB", 0.9), ocr.OCRResult((1, 0, 2, 1), "RA", 0.9)]
    assert ocr.reads_word(res, "zebra")


# ----------------------------------------------------------------------------- OCR engine
@pytest.fixture(scope="module")
def engine():
    try:
        return ocr.get_engine()
    except ImportError as err:
        pytest.skip(str(err))


def _word_image(text: str = "ROBOT") -> np.ndarray:
    from PIL import ImageFont

    img = Image.new("RGB", (160, 64), "white")
    font = ImageFont.truetype(str(ts._font_path("DejaVuSans-Bold.ttf")), 30)
    ImageDraw.Draw(img).text((12, 14), text, font=font, fill="black")
    return np.asarray(img)


def test_read_text_on_a_clean_word(engine):
    out = ocr.read_text(_word_image())
    assert len(out) == 1
    box, text, score = out[0]
    assert text == "ROBOT" and score > 0.8
    x0, y0, x1, y1 = box
    assert 0 <= x0 < 20 and x1 > 120 and y0 <= 22 and y1 > 40
    assert ocr.read_string(Image.fromarray(_word_image())) == "ROBOT"
    assert ocr.read_text(np.full((64, 64, 3), 255, np.uint8)) == []


def test_detect_and_recognize(engine):
    img = _word_image("zebra")
    boxes = ocr.detect_boxes(img)
    assert len(boxes) == 1
    x0, y0, x1, y1 = (int(round(v)) for v in boxes[0])
    text, score = ocr.recognize(img[y0:y1, x0:x1])
    assert text.lower() == "zebra" and score > 0.8


@pytest.mark.slow
def test_ocr_accepts_model_tensors_and_compares(engine):
    s = ts.render_sample(ts.split_seed("heldout"), 0)
    t = s.tensor()
    assert ocr.read_string(t) == ocr.read_string(s.image) == ocr.read_string(t[None])
    r = ocr.compare(t, s.image)
    assert r["t_acc"] == 1.0 and r["t_ned"] == 1.0
    blank = ocr.compare(torch.zeros_like(t), s.image)
    assert blank["t_acc"] == 0.0


def test_latency(engine):
    lat = ocr.latency(n=3)
    print(f"OCR latency on 128 px: {lat['ms_mean']:.0f} ms/image")
    assert lat["ms_mean"] > 0 and lat["n"] == 3
