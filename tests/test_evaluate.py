"""softvq_demo.evaluate: an identity tokenizer gives perfect scores; the tiny fixtures run end to end."""
from __future__ import annotations

import json
import math

import pytest
import torch

from softvq_demo import evaluate as ev
from softvq_demo.data import textscenes as ts


class IdentityTokenizer(torch.nn.Module):
    """encode/decode that return the image unchanged (a perfect tokenizer)."""

    family = "identity"
    image_size = 96
    num_tokens = 1

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def encode(self, x):
        class Enc:
            latents = x
        return Enc()

    def decode(self, latents):
        return latents


class GreyTokenizer(IdentityTokenizer):
    def decode(self, latents):
        return torch.zeros_like(latents)   # loses everything


@pytest.mark.slow
def test_identity_tokenizer_scores_perfectly():
    res = ev.evaluate_tokenizer(IdentityTokenizer(), n=6, photos=3, progress=False)
    t, p = res["textscenes"], res["photos"]
    assert res["image_size"] == 96 and t["n"] == 6 and p["n"] == 3
    assert math.isinf(t["psnr"]) and t["ssim"] == pytest.approx(1.0, abs=1e-5)
    assert t["t_acc"] == 1.0 and t["t_ned"] == 1.0
    assert t["input_word_acc"] >= 0.5 and t["word_acc"] == t["input_word_acc"]
    assert set(t["per_class_word_acc"]) <= set(ts.CLASS_WORDS)
    assert p["ssim"] == pytest.approx(1.0, abs=1e-5)
    table = ev.format_table(res)
    assert "textscenes" in table and "photos" in table


@pytest.mark.slow
def test_broken_tokenizer_scores_badly():
    res = ev.evaluate_tokenizer(GreyTokenizer(), n=4, photos=0, progress=False)
    t = res["textscenes"]
    assert "photos" not in res
    assert t["psnr"] < 15 and t["t_acc"] == 0.0 and t["word_acc"] == 0.0


@pytest.mark.slow
def test_cli_on_fixtures(reference, tmp_path, capsys):
    tok = reference / "softvq" / "tiny"
    gen = reference / "softvq" / "sit_tiny"
    out = tmp_path / "res.json"
    code = ev.main(["--tokenizer", str(tok), "--generator", str(gen), "--n", "3", "--photos", "2",
                    "--n-per-class", "2", "--classes", "0,1", "--steps", "2", "--quiet", "--json", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "PSNR" in text and "no_cfg" in text
    res = json.loads(out.read_text())
    assert res["textscenes"]["n"] == 3 and res["photos"]["n"] == 2
    runs = res["generation"]["runs"]
    assert set(runs) == {"no_cfg", "cfg"}
    assert runs["no_cfg"]["cfg_scale"] == 1.0 and runs["cfg"]["cfg_scale"] > 1.0
    assert runs["cfg"]["images"] == 4 and set(runs["cfg"]["per_class"]) == {"0", "1"}
    assert runs["cfg"]["diversity"] >= 0


def test_cli_errors(capsys, tmp_path):
    assert ev.main(["--tokenizer", str(tmp_path / "nothing-here"), "--n", "1", "--quiet"]) == 2
    assert "error" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ev.main(["--tokenizer", "x", "--n", "-1"])
