"""The training code end to end on CPU with tiny models: every trainer runs, losses are finite
and go down, exports load through the public API, resume continues, state is safetensors."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from softvq_demo import check_pair, generate, load_generator, load_tokenizer
from softvq_demo.data.textscenes2 import CLASS_WORDS
from softvq_demo.train.__main__ import main
from softvq_demo.train.common import (EMA, _flatten_optimizer, _unflatten_optimizer, lr_at,
                                      load_train_state, save_train_state)
from softvq_demo.train.losses import cosine_mask, reconstruction_loss, soft_vq_entropy_loss

pytestmark = pytest.mark.slow  # training runs

TINY = ["--preset", "tiny", "--batch-size", "16", "--workers", "0", "--render-batch", "16",
        "--min-fill", "64", "--log-every", "10", "--warmup", "5", "--lr", "2e-3", "--no-progress",
        "--save-every", "0"]


def _log(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]


def _train_losses(folder: Path, key: str) -> list[float]:
    return [r[key] for r in _log(folder) if r.get("kind") == "train"]


@pytest.fixture(scope="module")
def tiny_tokenizers(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    sv, tt = root / "softvq", root / "titok"
    main(["tokenizer", "--family", "softvq", "--out", str(sv), "--steps", "40", "--eval-n", "8",
          "--stats-n", "64", *TINY])
    main(["tokenizer", "--family", "titok", "--out", str(tt), "--steps", "30", "--eval-n", "8",
          "--restart-every", "10", *TINY])
    return sv, tt


def test_softvq_tokenizer_trains_and_exports(tiny_tokenizers):
    sv, _ = tiny_tokenizers
    rec = _train_losses(sv, "rec")
    assert all(math.isfinite(v) for v in rec) and rec[-1] < rec[0]
    tok = load_tokenizer(sv, device="cpu")  # official layout, strict load
    assert tok.family == "softvq" and tok.num_tokens == 8 and tok.image_size == 32
    cfg = json.loads((sv / "config.json").read_text())
    assert cfg["vq_std"] != 1.0 and cfg["vq_std"] > 0  # latent statistics written for the generator
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    enc = tok.encode(x)
    assert enc.probs.shape == (2, 8, 64) and tok.decode(enc.latents).shape == x.shape
    summary = _log(sv)[-1]
    assert summary["kind"] == "summary" and summary["step"] == 40
    # The resumable state is safetensors + JSON only.
    state = sv / "train_state"
    assert sorted(p.name for p in state.iterdir()) == ["ema.safetensors", "optimizer.safetensors",
                                                       "state.json", "trainer.safetensors"]


def test_resume_continues_the_run(tiny_tokenizers, tmp_path):
    sv, _ = tiny_tokenizers
    out = tmp_path / "resumed"
    main(["tokenizer", "--family", "softvq", "--out", str(out), "--steps", "50", "--resume", str(sv),
          "--eval-n", "0", "--stats-n", "64", *TINY])
    log = _log(out)
    assert log[-1]["step"] == 50 and log[-1]["steps_this_run"] == 10
    state = json.loads((out / "train_state" / "state.json").read_text())
    assert state["step"] == 50 and state["runs"] == 2 and state["consumed"] > 0
    load_tokenizer(out, device="cpu")


def test_titok_tokenizer_trains_and_exports(tiny_tokenizers):
    _, tt = tiny_tokenizers
    rec = _train_losses(tt, "rec")
    assert all(math.isfinite(v) for v in rec) and rec[-1] < rec[0]
    tok = load_tokenizer(tt, device="cpu")
    assert tok.family == "titok" and tok.is_discrete and not tok.is_legacy
    assert tok.config["model"]["vq_model"]["use_l2_norm"] is True
    ids = tok.encode(torch.rand(1, 3, 32, 32) * 2 - 1).indices
    assert ids.shape == (1, 8) and tok.decode(ids).shape == (1, 3, 32, 32)
    assert any("code_usage" in r for r in _log(tt))  # dead-code restarts ran


@pytest.mark.parametrize("family", ["sit", "maskgit"])
def test_generator_trains_on_a_frozen_tokenizer(tiny_tokenizers, tmp_path, family):
    sv, tt = tiny_tokenizers
    tok_dir = sv if family == "sit" else tt
    out = tmp_path / family
    main(["generator", "--family", family, "--tokenizer", str(tok_dir), "--out", str(out), "--steps", "40",
          *TINY])
    losses = _train_losses(out, "loss")
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    gen = load_generator(out, device="cpu")
    tok = load_tokenizer(tok_dir, device="cpu")
    check_pair(tok, gen)
    assert gen.class_names and len(gen.class_names) == gen.num_classes == len(CLASS_WORDS) >= 50
    opts = dict(steps=4) if family == "sit" else dict(steps=3)
    res = generate(gen, tok, [0, 5], seed=0, **opts)
    assert res.images.shape == (2, 3, 32, 32) and torch.isfinite(res.images).all()


def test_generator_exports_fp16_weights_that_load_as_fp32(tiny_tokenizers, tmp_path):
    from softvq_demo.loading import read_header

    sv, _ = tiny_tokenizers
    out = tmp_path / "sit16"
    main(["generator", "--family", "sit", "--tokenizer", str(sv), "--out", str(out), "--steps", "5",
          "--export-dtype", "fp16", "--no-state", *TINY])
    assert {dt for _, dt in read_header(out / "model.safetensors").values()} == {"F16"}
    gen = load_generator(out, device="cpu")
    assert all(p.dtype == torch.float32 for p in gen.parameters())


def test_optimizer_state_round_trips_through_safetensors(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(5, 4)).pow(2).sum().backward()
        opt.step()
    tensors, meta = _flatten_optimizer(opt)
    restored = _unflatten_optimizer(tensors, json.loads(json.dumps(meta)))
    opt2 = torch.optim.AdamW(model.parameters(), lr=1e-3)
    opt2.load_state_dict(restored)
    for p in model.parameters():
        for k in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(opt.state[p][k], opt2.state[p][k])
    ema = EMA(model, 0.9)
    ema.update(model, 1)
    save_train_state(tmp_path / "s", model, ema, opt, dict(step=3))
    model2 = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))
    opt3 = torch.optim.AdamW(model2.parameters(), lr=1e-3)
    state = load_train_state(tmp_path / "s", model2, EMA(model2, 0.9), opt3)
    assert state["step"] == 3
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), model2.state_dict().values()))
    assert not any(p.suffix in (".pt", ".pth", ".bin", ".pkl") for p in (tmp_path / "s").iterdir())


def test_schedule_and_losses():
    assert lr_at(0, 0.0, 1.0, 10) == pytest.approx(0.1)
    assert lr_at(10, 0.0, 1.0, 10) == pytest.approx(1.0)
    assert lr_at(10, 1.0, 1.0, 10, min_ratio=0.1) == pytest.approx(0.1)
    assert lr_at(10, 0.5, 1.0, 10, min_ratio=0.0) == pytest.approx(0.5)
    # Confident posteriors spread over the codebook: low sample entropy, high average entropy.
    onehot = torch.eye(8)[None].repeat(2, 1, 1)
    spread = soft_vq_entropy_loss(onehot)
    uniform = soft_vq_entropy_loss(torch.full((2, 8, 8), 1 / 8))
    assert spread["entropy"] < uniform["entropy"]
    assert spread["sample_entropy"] < 1e-6 and spread["avg_entropy"] == pytest.approx(math.log(8), rel=1e-4)
    # Errors inside the text mask cost more than the same error outside it.
    x = torch.zeros(1, 3, 16, 16)
    mask = torch.zeros(1, 16, 16, dtype=torch.bool)
    mask[:, 6:10, 6:10] = True
    inside, outside = x.clone(), x.clone()
    inside[..., 7, 7] = 1.0
    outside[..., 0, 0] = 1.0
    assert reconstruction_loss(inside, x, mask)["rec"] > reconstruction_loss(outside, x, mask)["rec"]
    m = cosine_mask(torch.zeros(64, 32, dtype=torch.long))
    assert m.any(dim=1).all()  # at least one masked position per sequence
