"""The app with a MAETok and a One-D-Piece fixture folder loaded from the command line: every tab
runs with them (launch helpers from test_app.py), and the codebook-free MAETok gets a clear
message in the Codebook tab instead of a failure."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import launch, make_images, stop
from test_app import arr, call, err, f, img, plot, table

pytest.importorskip("gradio_client")

MAETOK, ODP, MASKGIT = "maetok_tiny", "onedpiece_tiny", "maskgit_odp16"


def maskgit_for_onedpiece(reference, folder):
    """A random MaskGIT over the One-D-Piece fixture's 16 tokens × 64 codes, its config saved as
    the official save_pretrained leaves it: ``image_seq_len`` an unresolved ${...} reference."""
    import torch

    from softvq_demo import save_pretrained
    from softvq_demo.models import build_model

    config = json.loads((reference / "titok" / "maskgit_tiny" / "config.json").read_text())
    config["model"]["vq_model"]["num_latent_tokens"] = 16
    config["model"]["generator"]["image_seq_len"] = 16
    torch.manual_seed(0)
    save_pretrained(build_model(config, "generator"), folder)
    config["model"]["generator"]["image_seq_len"] = "${model.vq_model.num_latent_tokens}"
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def app(reference, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("app_families")
    files = make_images(tmp / "images")
    # both fixture folders are called tiny/: copies with telling names keep the display names apart
    maetok = shutil.copytree(reference / "maetok" / "tiny", tmp / MAETOK)
    odp = shutil.copytree(reference / "onedpiece" / "tiny", tmp / ODP)
    maskgit = maskgit_for_onedpiece(reference, tmp / MASKGIT)
    sit = reference / "softvq" / "sit_tiny"  # 16 tokens × 8 dims: fits MAETok tiny
    # no UMAP here (PCA maps only): its background compile would only compete with the tests
    proc, client, url, log = launch(["--tokenizer", maetok, "--tokenizer", odp, "--generator", sit,
                                     "--generator", maskgit], tmp, env={"SOFTVQ_NO_WARMUP": "1"})
    yield {"client": client, "files": files, "proc": proc, "log": log, "sit": sit.name}
    stop(proc)


@pytest.mark.parametrize("tok,other", [(MAETOK, ODP), (ODP, MAETOK)])
def test_reconstruct_and_token_lab(app, tok, other):
    orig, rec_a, heat_a, rec_b, heat_b, metrics, notes = call(
        app, "/reconstruct", f(app, "img0"), tok, other, True, "center-crop")
    rows = table(metrics)
    assert [r["tokenizer"] for r in rows] == [tok, other] and all(r["tokens"] == 16 for r in rows)
    assert 0 < rows[0]["PSNR (dB)"] < 100 and img(rec_a).shape == img(rec_b).shape
    a, b = f(app, "img0"), f(app, "img1")
    grid, bars, summary, *_ = call(app, "/ablate", a, b, tok, "mean", 0)
    assert "16 tokens ablated" in summary and len(arr(plot(bars)["data"][0]["y"])) == 16
    _, rb, sw, md = call(app, "/swap", a, b, tok, "mean", 0, "all")
    assert np.abs(img(sw).astype(int) - img(rb).astype(int)).max() <= 2
    if tok == ODP:  # the rest of the lab once (each call decodes the image many times on CPU)
        base, ablated, heat, md, _ = call(app, "/select_token", a, b, tok, "zero", 0, 3)
        assert "Token **3**" in md
        sub, sweep, md = call(app, "/subset", a, b, tok, "mean", 0, "first", 4)
        assert "Kept 4/16" in md
        gallery = call(app, "/interpolate", a, b, tok, "other", 0, 3, "linear")
        assert len(gallery) == 3


def test_codebook_tab(app):
    msg = err(app, "/codebook", f(app, "img0"), MAETOK, 8)
    assert "without a codebook" in msg
    assert "no codebook" in err(app, "/codebook_usage", MAETOK, "upload", 10, [f(app, "img0")])
    post, ent, md = call(app, "/codebook", f(app, "img1"), ODP, 8)
    z = plot(post)["data"][0]["z"]
    ids = (np.asarray(z, dtype=float) if isinstance(z, list) else arr(z).astype(float)).ravel()
    ids = ids[~np.isnan(ids)]
    assert len(ids) == 16 and ((ids >= 0) & (ids < 64)).all() and "hard VQ" in md and ent is None
    usage, summary = call(app, "/codebook_usage", ODP, "upload", 10, [f(app, "img0"), f(app, "img2")])
    assert table(summary)[0]["codewords"] == 64


def test_generate_tab(app):
    gallery, timing, md = call(app, "/generate", app["sit"], [3], 1.5, 0.0, 0.7, 2, "euler", 0, 2)
    assert len(gallery) == 2 and f"{app['sit']} → {MAETOK}" in md
    gallery, timing, md = call(app, "/generate", MASKGIT, [0, 9], 2.0, 0, 1, 2, "constant", 0, 2)
    assert [g["caption"] for g in gallery] == ["0: class 0", "9: class 9"]
    assert f"{MASKGIT} → {ODP}" in md   # its config's ${...} reference resolved at load


@pytest.mark.parametrize("tok", [MAETOK, ODP])
def test_latent_map_and_text_tabs(app, tok):
    files = [f(app, k) for k in ("img0", "img1", "img2", "rotated")]
    fig, md, _ = call(app, "/latent_map", tok, "upload", 50, files, "token", "pca", "token")
    assert len(arr(plot(fig)["data"][0]["x"])) == 4 * 16 and "4 images" in md
    orig, rec, caption, _ = call(app, "/latent_point", 1)
    assert "Image 1" in caption and img(orig).shape == img(rec).shape
    out = call(app, "/text_tokens", f(app, "img0"), tok, "none", "10,10,40,30", "zero", 0, False)
    assert len(table(out[2])) == 16
    fig, md, _ = call(app, "/text_profile", MAETOK, ODP, 2, "zero")
    assert [len(arr(t["y"])) for t in plot(fig)["data"]] == [16] * 4 and "over 2 images" in md


def test_server_survived(app):
    assert app["proc"].poll() is None
    log = app["log"].read_text()
    assert "softvq_demo/" not in log and "failed" not in log, log[-3000:]
