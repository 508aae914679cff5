"""textscenes (determinism, masks, balance, splits, legibility) and robust image loading."""
from __future__ import annotations

import hashlib
import io
import struct
import time
import zlib
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from softvq_demo.data import images as di
from softvq_demo.data import textscenes as ts


def _digest(s: ts.Sample) -> str:
    return hashlib.sha1(s.image.tobytes() + s.mask.tobytes()).hexdigest()


# ----------------------------------------------------------------------------- textscenes
def test_class_words():
    assert len(ts.CLASS_WORDS) >= 10 and len(set(ts.CLASS_WORDS)) == len(ts.CLASS_WORDS)
    assert all(3 <= len(w) <= 6 and w.isalpha() for w in ts.CLASS_WORDS)


def test_deterministic_from_seed_and_index():
    a, b = ts.render_sample(3, 17), ts.render_sample(3, 17)
    assert a.image.tobytes() == b.image.tobytes() and np.array_equal(a.mask, b.mask)
    assert (a.label, a.text, a.box) == (b.label, b.text, b.box)
    others = {_digest(ts.render_sample(3, i)) for i in range(18, 24)} | {_digest(ts.render_sample(4, 17))}
    assert _digest(a) not in others and len(others) == 7


def test_sample_fields_and_tensor():
    s = ts.render_sample(0, 5)
    assert s.image.shape == (128, 128, 3) and s.image.dtype == np.uint8
    assert s.mask.shape == (128, 128) and s.mask.dtype == bool and s.mask.any()
    assert s.word == ts.CLASS_WORDS[s.label] and s.text.lower() == s.word
    t = s.tensor()
    assert t.shape == (3, 128, 128) and t.dtype == torch.float32
    assert -1.0 <= float(t.min()) and float(t.max()) <= 1.0
    assert torch.equal(((t + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0), torch.from_numpy(s.image))


def test_mask_matches_the_rendered_word():
    for i in range(12):
        s = ts.render_sample(11, i)
        bare = ts.render_sample(11, i, draw_text=False)
        assert np.array_equal(s.mask, bare.mask) and s.box == bare.box
        diff = np.abs(s.image.astype(int) - bare.image.astype(int)).sum(-1)
        # the word changes nearly every mask pixel (an outline may match a background of its own
        # colour, e.g. black outline over a black coat), and nothing away from it
        assert (diff[s.mask] > 0).mean() > 0.85, i
        grown = torch.nn.functional.max_pool2d(torch.from_numpy(s.mask).float()[None, None], 5, 1, 2)[0, 0]
        assert diff[~grown.bool().numpy()].max() == 0, i
        # the box is the mask's tight bounding box
        x0, y0, x1, y1 = s.box
        ys, xs = np.nonzero(s.mask)
        assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        assert s.mask[y0:y1, x0:x1].sum() == s.mask.sum()


def test_legibility_constraints():
    for i in range(120):
        s = ts.render_sample(2, i)
        assert s.cap_height >= ts.MIN_CAP_HEIGHT
        assert abs(s.angle) <= ts.MAX_ANGLE
        assert s.contrast >= ts.MIN_CONTRAST, (i, s.contrast)
        x0, y0, x1, y1 = s.box
        assert 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 128


def test_class_balance():
    counts = Counter(ts.class_of(ts.split_seed("train"), i) for i in range(500))
    assert set(counts) == set(range(ts.NUM_CLASSES))
    assert max(counts.values()) - min(counts.values()) <= 1
    ds = ts.TextScenes("train", size=60)
    assert Counter(ds.sample(i).label for i in range(60)) == Counter({c: 5 for c in range(ts.NUM_CLASSES)})


def test_heldout_disjoint_from_train():
    train = ts.TextScenes("train", size=40)
    held = ts.TextScenes("heldout", size=40)
    assert ts.TextScenes("test").seed == held.seed != train.seed
    a = {_digest(train.sample(i)) for i in range(40)}
    b = {_digest(held.sample(i)) for i in range(40)}
    assert not a & b
    with pytest.raises(ValueError):
        ts.TextScenes("nope")
    with pytest.raises(ValueError):
        ts.TextScenes("train", seed=ts.SPLIT_OFFSETS["heldout"])  # would overlap held-out


def test_dataset_items_and_dataloader():
    ds = ts.TextScenes("heldout", size=8, image_size=64)
    assert len(ds) == 8
    item = ds[-1]
    assert item["image"].shape == (3, 64, 64) and item["mask"].shape == (64, 64)
    assert item["mask"].dtype == torch.bool and item["box"].dtype == torch.int64
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 3, 64, 64) and batch["label"].shape == (4,)
    assert len(batch["word"]) == 4
    with pytest.raises(IndexError):
        ds[8]


def test_other_resolutions_scale():
    s = ts.render_sample(0, 3, image_size=256)
    assert s.image.shape == (256, 256, 3) and s.mask.shape == (256, 256)
    assert s.cap_height >= 2 * ts.MIN_CAP_HEIGHT


def test_render_speed():
    ts.warm_cache()
    t = time.perf_counter()
    for i in range(100):
        ts.render_sample(0, i)
    ms = (time.perf_counter() - t) * 10
    print(f"textscenes render: {ms:.2f} ms/image")
    assert ms < 15  # ~2 ms on one core; loose for slow CI machines


def test_photo_crops():
    a = ts.photo_crops(3, 96, seed=1)
    assert a.shape == (3, 96, 96, 3) and a.dtype == np.uint8
    assert np.array_equal(a, ts.photo_crops(3, 96, seed=1))
    assert not np.array_equal(a, ts.photo_crops(3, 96, seed=2))


@pytest.mark.slow
def test_ocr_reads_heldout_words(record_property):
    ocr = pytest.importorskip("softvq_demo.analysis.ocr")
    try:
        ocr.get_engine()
    except ImportError as err:
        pytest.skip(str(err))
    ds = ts.TextScenes("heldout", size=20)
    hits = [ocr.reads_word(ocr.read_string(ds.sample(i).image), ds.sample(i).word) for i in range(20)]
    rate = float(np.mean(hits))
    record_property("ocr_legibility", rate)
    print(f"OCR reads the word on {rate:.0%} of 20 held-out samples")
    assert rate >= 0.85


# ----------------------------------------------------------------------------- image loading
def _bytes(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_load_rgba_composited_on_white():
    img = Image.new("RGBA", (16, 16), (255, 0, 0, 0))
    img.putpixel((0, 0), (255, 0, 0, 255))
    out = di.load_image(_bytes(img))
    assert out.mode == "RGB" and out.getpixel((5, 5)) == (255, 255, 255) and out.getpixel((0, 0)) == (255, 0, 0)


def test_load_la_palette_grey():
    assert di.load_image(_bytes(Image.new("LA", (16, 16), (0, 0)))).getpixel((1, 1)) == (255, 255, 255)
    pal = Image.new("P", (16, 16), 3)
    pal.putpalette([0, 0, 0, 10, 20, 30, 40, 50, 60, 70, 80, 90] + [0] * 756)
    assert di.load_image(_bytes(pal)).getpixel((1, 1)) == (70, 80, 90)
    trans = Image.new("P", (16, 16), 1)
    trans.putpalette([0, 0, 0, 200, 0, 0] + [0] * 762)
    trans.info["transparency"] = 1
    assert di.load_image(_bytes(trans, transparency=1)).getpixel((1, 1)) == (255, 255, 255)
    assert di.load_image(_bytes(Image.new("L", (16, 16), 77))).getpixel((2, 2)) == (77, 77, 77)
    assert di.load_image(_bytes(Image.new("1", (16, 16), 1))).getpixel((2, 2)) == (255, 255, 255)


def test_load_16bit():
    arr = (np.arange(256, dtype=np.uint16).reshape(16, 16) * 257)
    img = Image.fromarray(arr)
    assert img.mode.startswith("I;16")
    out = np.asarray(di.load_image(_bytes(img)))
    assert out.shape == (16, 16, 3) and out[..., 0].max() == 255 and out[0, 1, 0] == 1


def test_load_cmyk():
    out = di.load_image(_bytes(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95))
    r, g, b = out.getpixel((8, 8))
    assert r > 200 and g < 60 and b < 60


def test_load_exif_rotation():
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    assert di.load_image(_bytes(img, "JPEG", exif=exif.tobytes())).size == (20, 40)


def test_load_animated_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 255, 0))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    r, g, _ = di.load_image(path).getpixel((5, 5))
    assert r > 200 and g < 50


def test_load_refuses_bad_input(tmp_path):
    good = _bytes(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)))
    cases = {
        "truncated": (good[: len(good) // 2], "truncated"),
        "text": (b"hello, this is not an image\n" * 3, "not an image"),
        "binary": (bytes(range(256)) * 4, "not an image"),
        "empty": (b"", "empty"),
    }
    for name, (data, words) in cases.items():
        with pytest.raises(ValueError, match=words):
            di.load_image(data)
    with pytest.raises(ValueError, match="not found"):
        di.load_image(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="too small"):
        di.load_image(_bytes(Image.new("RGB", (4, 4))))


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def test_load_refuses_bombs_from_the_header(tmp_path):
    with pytest.raises(ValueError, match="too large"):
        di.load_image(_png_header_only(9000, 9000))        # 81 MP > our 40 MP cap
    with pytest.raises(ValueError, match="too large"):
        di.load_image(_png_header_only(100_000, 100_000))  # PIL's own bomb limit
    path = tmp_path / "big.png"
    path.write_bytes(_png_header_only(3000, 3000))
    with pytest.raises(ValueError, match="too large"):
        di.load_image(path, max_pixels=1_000_000)


def test_load_from_arrays_and_pil():
    assert di.load_image(np.zeros((20, 30), np.uint8)).size == (30, 20)
    assert di.load_image(np.ones((20, 30, 3), np.float32)).getpixel((0, 0)) == (255, 255, 255)
    assert di.load_image(Image.new("RGB", (20, 20))).mode == "RGB"


def test_to_model_input_and_back():
    x, how = di.to_model_input(Image.new("RGB", (640, 480), (255, 0, 0)), 256)
    assert x.shape == (1, 3, 256, 256) and how == "center-cropped 640×480 → 480×480, resized to 256×256"
    assert torch.allclose(x[0, :, 0, 0], torch.tensor([1.0, -1.0, -1.0]))
    _, how = di.to_model_input(Image.new("RGB", (64, 64)), 64)
    assert "as is" in how
    _, how = di.to_model_input(Image.new("RGB", (100, 50)), 64, mode="pad")
    assert how.startswith("padded")
    s = ts.render_sample(0, 0)
    x, _ = di.to_model_input(s.pil(), 128)
    assert np.array_equal(np.asarray(di.to_pil(x)), s.image)
    assert np.array_equal(np.asarray(di.to_pil(x[0])), s.image)


# ----------------------------------------------------------------------------- textscenes v2
from softvq_demo.data import assets as da  # noqa: E402
from softvq_demo.data import textscenes2 as ts2  # noqa: E402

HELDOUT = ts2.SPLIT_OFFSETS["heldout"]


@pytest.fixture(scope="module")
def fake_bank(tmp_path_factory):
    """A bank folder whose fonts are the repository's DejaVu files filed under a training
    package and under two reserved packages, so the split logic is tested without the real bank."""
    root = tmp_path_factory.mktemp("bank")
    fonts = []
    for pkg, names in (("fonts-dejavu-core", ts.FONT_FILES[:3]), ("fonts-urw-base35", ts.FONT_FILES[3:4]),
                       ("fonts-cantarell", ts.FONT_FILES[4:])):
        (root / "fonts" / pkg).mkdir(parents=True)
        for n in names:
            (root / "fonts" / pkg / n).write_bytes(ts._font_path(n).read_bytes())
            fonts.append(dict(package=pkg, file=f"fonts/{pkg}/{n}", name=n.rsplit(".", 1)[0]))
    words = ["lantern", "harbor", "quartz", "meadow", "violet", "copper", "ember", "sable", "tundra", "orbit",
             "pebble", "kettle", "saffron", "walrus", "thistle", "cobalt", "gravel", "juniper", "marble", "nectar"]
    (root / "words.txt").write_text("\n".join(words) + "\n")
    (root / "manifest.json").write_text(__import__("json").dumps(
        dict(fonts=fonts, photos=[], graphics=[], words=dict(package="test", file="words.txt", count=len(words)))))
    return ts2.Bank(root)


def _alpha_tokens(text: str) -> list[str]:
    import re
    return re.findall(r"[A-Za-z]+", text)


def test_v2_deterministic_and_varied(fake_bank):
    a, b = ts2.render_scene(5, 9, bank=fake_bank), ts2.render_scene(5, 9, bank=fake_bank)
    assert a.image.tobytes() == b.image.tobytes() and np.array_equal(a.line_mask, b.line_mask)
    assert (a.text, a.boxes, a.font) == (b.text, b.boxes, b.font)
    others = {ts2.render_scene(5, i, bank=fake_bank).image.tobytes() for i in range(10, 16)}
    assert a.image.tobytes() not in others and len(others) == 6
    scenes = [ts2.render_scene(0, i, bank=fake_bank) for i in range(30)]
    assert len({s.text for s in scenes}) >= 27 and len({len(s.lines) for s in scenes}) >= 2
    assert any(any(c.isdigit() for c in s.text) for s in scenes)
    assert any(s.text != s.text.lower() for s in scenes) and any(s.text != s.text.upper() for s in scenes)
    caps = [s.cap_height for s in scenes]
    assert min(caps) < 14 and max(caps) > 24  # small and large text


def test_v2_masks_and_boxes_match_the_rendered_text(fake_bank):
    for i in range(12):
        s = ts2.render_scene(7, i, bank=fake_bank, degrade=False)
        bare = ts2.render_scene(7, i, bank=fake_bank, degrade=False, draw_text=False)
        assert np.array_equal(s.mask, bare.mask) and s.boxes == bare.boxes
        assert np.array_equal(s.mask, s.line_mask > 0) and s.text == "\n".join(s.lines)
        diff = np.abs(s.image.astype(int) - bare.image.astype(int)).sum(-1)
        assert (diff[s.mask] > 0).mean() > 0.7, i
        # away from the mask (coverage >= 5%) nothing changes by more than that coverage could
        grown = torch.nn.functional.max_pool2d(torch.from_numpy(s.mask).float()[None, None], 3, 1, 1)[0, 0]
        assert diff[~grown.bool().numpy()].max() <= 3 * 0.05 * 255 + 3, i
        for k, box in enumerate(s.boxes, 1):  # each box is its line's tight bounding box
            ys, xs = np.nonzero(s.line_mask == k)
            assert box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def test_v2_reserved_fonts_only_in_the_heldout_split(fake_bank):
    assert {f.package for f in fake_bank.fonts["train"]} == {"fonts-dejavu-core"}
    assert fake_bank.unseen_fonts
    for i in range(20):
        assert ts2.render_scene(1, i, bank=fake_bank).font_package not in ts2.RESERVED_FONT_PACKAGES
        assert ts2.render_scene(1, i, bank=fake_bank, mode="class").font_package not in ts2.RESERVED_FONT_PACKAGES
        assert ts2.render_scene(HELDOUT + 1, i, bank=fake_bank).font_package in ts2.RESERVED_FONT_PACKAGES
    real = ts2.get_bank()  # the real bank when built (.carry/textscenes), else the fallback
    assert not {f.package for f in real.fonts["train"]} & set(ts2.RESERVED_FONT_PACKAGES)


def test_v2_heldout_words_are_disjoint_from_training_words(fake_bank):
    train_words, held_words = set(fake_bank.words["train"]), set(fake_bank.words["heldout"])
    assert train_words and not train_words & held_words
    for i in range(30):
        for t in _alpha_tokens(ts2.render_scene(2, i, bank=fake_bank).text):
            assert not ts2.is_heldout_word(t), t
        for t in _alpha_tokens(ts2.render_scene(HELDOUT + 2, i, bank=fake_bank).text):
            assert ts2.is_heldout_word(t), t
    assert len(ts2.CLASS_WORDS) >= 50 and len(set(ts2.CLASS_WORDS)) == len(ts2.CLASS_WORDS)
    assert not any(ts2.is_heldout_word(w) for w in ts2.CLASS_WORDS)


def test_v2_class_mode_renders_the_class_word(fake_bank):
    ds = ts2.TextScenes2("train", mode="class", bank=fake_bank)
    labels = [ds.sample(i).label for i in range(ts2.NUM_CLASSES)]
    assert sorted(labels) == list(range(ts2.NUM_CLASSES))  # balanced blocks
    item = ds[3]
    assert item["text"].lower() == ts2.CLASS_WORDS[item["label"]] and item["boxes"].shape == (1, 4)
    assert item["image"].shape == (3, 128, 128) and item["mask"].dtype == torch.bool


def test_v2_bank_builder_subsets_fonts_and_keeps_photos(tmp_path):
    import subprocess
    if not __import__("shutil").which("dpkg-deb"):
        pytest.skip("dpkg-deb not installed")
    pkg = tmp_path / "pkg"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "DEBIAN" / "control").write_text("Package: fonts-test\nVersion: 1\nArchitecture: all\n"
                                            "Maintainer: t <t@t>\nDescription: t\n")
    (pkg / "usr/share/fonts/truetype/t").mkdir(parents=True)
    (pkg / "usr/share/fonts/truetype/t" / "DejaVuSans.ttf").write_bytes(ts._font_path("DejaVuSans.ttf").read_bytes())
    debs = tmp_path / "debs"
    debs.mkdir()
    subprocess.run(["dpkg-deb", "-b", str(pkg), str(debs / "fonts-test_1_all.deb")], check=True,
                   capture_output=True)
    m = da.build(debs, tmp_path / "bank")
    assert [f["package"] for f in m["fonts"]] == ["fonts-test"]
    bank = ts2.Bank(tmp_path / "bank")
    assert bank.complete and len(bank.fonts["train"]) == 1
    assert ts2.render_scene(0, 0, bank=bank).font_package == "fonts-test"
