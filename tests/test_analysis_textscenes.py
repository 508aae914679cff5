"""The text-token analysis on the embedded models and real OCR: on held-out textscenes images the
ranking puts first the tokens whose ablation breaks the OCR, and dropping them hurts the text far
more than dropping as many low-ranked tokens. Skipped until the embedded checkpoints exist."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow  # real OCR over held-out images

ROOT = Path(__file__).resolve().parent.parent
EMBEDDED = ["textscenes-softvq-32", "textscenes-titok-128"]


def _available(name: str) -> bool:
    return (ROOT / "checkpoints" / name / "config.json").is_file()


@pytest.fixture(scope="module")
def ocr():
    return pytest.importorskip("softvq_demo.analysis.ocr")


@pytest.mark.parametrize("name", EMBEDDED)
def test_text_token_ranking_breaks_ocr_on_textscenes(name, ocr):
    if not _available(name):
        pytest.skip(f"checkpoints/{name} not present")
    from softvq_demo import load_tokenizer
    from softvq_demo.analysis import ablation as A
    from softvq_demo.analysis import codec, pictures
    from softvq_demo.analysis import text_tokens as T
    from softvq_demo.data.textscenes import TextScenes

    tok = load_tokenizer(name, device="cpu")
    ds = TextScenes("heldout", size=40, image_size=tok.image_size)
    mean = A.mean_latents(tok, torch.stack([ds[i]["image"] for i in range(8, 40)]))
    checked = 0
    for i in range(8):
        item = ds[i]
        lat = codec.encode(tok, item["image"][None]).latents[0]
        base = codec.decode(tok, lat)[0]
        if ocr.tned(ocr.read_string(pictures.to_uint8(base)), item["text"]) < 1.0:
            continue  # the reconstruction itself is not read correctly: nothing to break
        res = T.analyze_text_tokens(tok, lat, item["mask"], mode="mean", mean=mean,
                                    read_text=ocr.read_string, similarity=ocr.tned,
                                    reference_text=item["text"])
        ranked = res.ranking()
        assert float(res.ocr_damage[ranked[0]]) > 0, "the top-ranked token does not hurt the OCR"
        # the ranking is by OCR damage first: no lower-ranked token hurts more than a higher one
        dmg = res.ocr_damage.clamp_min(0)
        assert all(dmg[a] >= dmg[b] - 1e-6 for a, b in zip(ranked, ranked[1:]))
        k = max(2, len(res.text_tokens()))
        _, drop_top = T.keep_and_drop(tok, lat, res.ablation.replacement, ranked[:k])
        _, drop_low = T.keep_and_drop(tok, lat, res.ablation.replacement, ranked[-k:])
        hurt_top = 1 - ocr.tned(ocr.read_string(pictures.to_uint8(drop_top)), item["text"])
        hurt_low = 1 - ocr.tned(ocr.read_string(pictures.to_uint8(drop_low)), item["text"])
        assert hurt_top >= hurt_low and hurt_top > 0
        # and those tokens act on the text more than elsewhere
        assert float(res.concentration[ranked[:k]].mean()) > float(res.concentration[ranked[-k:]].mean())
        checked += 1
        break
    if not checked:  # e.g. an early training round: the text is not legible after reconstruction
        pytest.skip(f"{name} reconstructs none of 8 held-out words legibly: nothing to break")
