"""Research-scale runs (softvq_demo.research): sharding over torchrun, resume, FID."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from softvq_demo.cli import main
from softvq_demo.research import fid
from softvq_demo.research.reconstruct_set import center_crop_arr, map_box, reconstruct_set
from softvq_demo.research.sample_set import labels_for, noise_for, sample_set
from softvq_demo.research.shards import Dist

ROOT = Path(__file__).resolve().parent.parent
CPU = Dist(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), initialized=False)
NPZ = "samples_32x64x64x3.npz"


def sample_args(reference, out) -> list[str]:
    # SDE: the sampler draws noise inside the loop too, so the chunk seeding is exercised.
    r = reference / "softvq"
    return ["sample", "--generator", str(r / "sit_tiny"), "--tokenizer", str(r / "tiny"),
            "--num-samples", "32", "--batch-size", "2", "--steps", "40", "--sampler", "sde",
            "--labels", "uniform", "--seed", "3", "--device", "cpu", "--out", str(out)]


def env() -> dict:
    # Same thread count in every process, so CPU kernels reduce in the same order. The checkout
    # first on the path, what the caller's path holds after it (packages installed outside
    # site-packages, as on the GPU machine).
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path, "CUDA_VISIBLE_DEVICES": ""}


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, env=env(), cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-2000:]
    return res


def run_here(argv: list[str]) -> None:
    """The CLI in this process with one thread, as the subprocesses run (OMP_NUM_THREADS=1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(argv) == 0
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def single_run(reference, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single")
    run_here(sample_args(reference, out))
    return out


def test_single_run_writes_adm_npz(single_run):
    with np.load(single_run / NPZ) as f:
        images, labels = f["arr_0"], f["arr_1"]
    assert images.shape == (32, 64, 64, 3) and images.dtype == np.uint8
    assert labels.shape == (32,) and len(set(labels.tolist())) > 1          # uniform labels vary
    assert len({images[i].tobytes() for i in range(32)}) == 32             # no repeated image
    settings = json.loads((single_run / "settings.json").read_text())
    assert settings["status"] == "done" and settings["identity"]["options"]["method"] == "sde"
    assert settings["summary"]["images_this_run"] == 32


def test_torchrun_two_processes_byte_identical(reference, single_run, tmp_path):
    out = tmp_path / "two"
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "softvq_demo", *sample_args(reference, out)])
    assert (out / NPZ).read_bytes() == (single_run / NPZ).read_bytes()
    assert json.loads((out / "settings.json").read_text())["summary"]["world_size"] == 2


def test_killed_run_resumes_identical(reference, single_run, tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "softvq_demo", *sample_args(reference, out)],
                            env=env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shards = out / "shards"
    deadline = time.time() + 200
    while time.time() < deadline and proc.poll() is None and len(list(shards.glob("*.npz"))) < 2:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = sorted(shards.glob("*.npz"))
    assert 2 <= len(kept) < 16 and not (out / NPZ).exists(), "the run was not killed mid-way"
    kept[0].write_bytes(kept[0].read_bytes()[:100])   # a torn chunk file is redone, not trusted
    run_here(sample_args(reference, out))
    assert (out / NPZ).read_bytes() == (single_run / NPZ).read_bytes()
    done = json.loads((out / "settings.json").read_text())["summary"]["images_this_run"]
    assert 0 < done < 32   # the finished chunks were kept


def test_other_settings_refused_in_same_folder(reference, single_run):
    from softvq_demo import load_generator, load_tokenizer

    gen = load_generator(reference / "softvq" / "sit_tiny", device="cpu")
    tok = load_tokenizer(reference / "softvq" / "tiny", device="cpu")
    with pytest.raises(ValueError, match="other settings .*seed"):
        sample_set(gen, tok, 32, single_run, dist=CPU, seed=4, batch_size=2, labels="uniform",
                   steps=40, method="sde", progress=False)


def test_draws_depend_on_index_not_batch():
    assert torch.equal(noise_for(range(5, 9), (4, 2), seed=1), noise_for(range(0, 9), (4, 2), seed=1)[5:])
    assert torch.equal(labels_for(range(5, 9), 1000, "uniform", 1), labels_for(range(9), 1000, "uniform", 1)[5:])
    assert labels_for(range(998, 1002), 1000, "balanced", 0).tolist() == [998, 999, 0, 1]
    assert not torch.equal(noise_for(range(2), (4,), seed=1), noise_for(range(2), (4,), seed=2))


# --------------------------------------------------------------------------- FID
class StandIn(torch.nn.Module):
    """A small random network in Inception's place: uint8 images → (16-d pool, 10 logits)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 16, 5, stride=2)
        self.fc = torch.nn.Linear(16, 10)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)

    def forward(self, x):
        h = torch.tanh(self.conv(x.float() / 127.5 - 1))
        pool = h.mean(dim=(2, 3))
        return pool, self.fc(pool)


def test_fid_matches_direct_scipy(tmp_path):
    import scipy.linalg

    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (120, 24, 24, 3), dtype=np.uint8)
    b = np.clip(rng.normal(150, 40, (90, 24, 24, 3)), 0, 255).astype(np.uint8)
    np.savez(tmp_path / "a.npz", arr_0=a)
    np.savez(tmp_path / "b.npz", arr_0=b)
    net = StandIn().eval()
    res = fid.compare(tmp_path / "a.npz", tmp_path / "b.npz", net=net, device="cpu", batch_size=32,
                      progress=False)
    with torch.no_grad():
        fa = net(torch.from_numpy(a).permute(0, 3, 1, 2))[0].double().numpy()
        fb = net(torch.from_numpy(b).permute(0, 3, 1, 2))[0].double().numpy()
    mu1, mu2 = fa.mean(0), fb.mean(0)
    s1, s2 = np.cov(fa, rowvar=False), np.cov(fb, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    direct = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))
    assert direct > 1e-3                       # the two sets really differ
    assert abs(res["fid"] - direct) < 1e-6
    assert abs(fid.compare(a, a, net=net, progress=False)["fid"]) < 1e-6
    assert 0 <= res["precision"] <= 1 and 0 <= res["recall"] <= 1
    assert res["inception_score"] >= 1.0


def test_fid_without_weights_is_one_line_and_npz_stays(reference, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    np.savez(tmp_path / "a.npz", arr_0=np.zeros((2, 8, 8, 3), np.uint8))
    assert main(["fid", str(tmp_path / "a.npz"), str(tmp_path / "a.npz"), "--device", "cpu"]) == 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("FID not computed: Inception weights") and "\n" not in err
    r = reference / "softvq"
    out = tmp_path / "s"
    assert main(["sample", "--generator", str(r / "sit_tiny"), "--tokenizer", str(r / "tiny"),
                 "--num-samples", "2", "--batch-size", "2", "--steps", "2", "--device", "cpu",
                 "--out", str(out), "--ref", str(tmp_path / "a.npz")]) == 0
    assert (out / "samples_2x64x64x3.npz").is_file()
    assert "FID not computed" in capsys.readouterr().err


# --------------------------------------------------------------------------- reconstruct-set
def test_reconstruct_set(reference, tmp_path, monkeypatch):
    from softvq_demo import load_tokenizer
    from softvq_demo.analysis import ocr

    rng = np.random.default_rng(1)
    folder = tmp_path / "val"
    sizes = [(80, 64), (64, 64), (300, 140), (64, 200), (129, 130)]
    for i, (w, h) in enumerate(sizes):
        (folder / f"n{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"n{i % 2}" / f"{i}.png")
    (folder / "notes.txt").write_text("not an image")
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"n0/0.png": [[8, 0, 72, 32]], "n1/3.png": [[0, 0, 64, 200]]}))
    # OCR stand-in: what it reads depends on the crop, so wiring errors change the figures.
    monkeypatch.setattr(ocr, "read_string", lambda img: "bright" if np.asarray(img).mean() > 127 else "dark")
    tok = load_tokenizer(reference / "softvq" / "tiny", device="cpu")
    s = reconstruct_set(tok, folder, tmp_path / "out", dist=CPU, batch_size=2, boxes=str(boxes),
                        progress=False)
    files = (tmp_path / "out" / "files.txt").read_text().split()
    assert files == ["n0/0.png", "n0/2.png", "n0/4.png", "n1/1.png", "n1/3.png"]
    with np.load(s["npz"]) as f, np.load(s["inputs_npz"]) as g:
        recon, inputs = f["arr_0"], g["arr_0"]
    assert recon.shape == inputs.shape == (5, 64, 64, 3)
    expected = center_crop_arr(Image.open(folder / "n0" / "2.png").convert("RGB"), 64)[0]
    assert np.array_equal(inputs[1], expected)
    with torch.no_grad():
        x = torch.from_numpy(expected).permute(2, 0, 1)[None].float() / 127.5 - 1
        direct = torch.clamp(127.5 * tok(x) + 128, 0, 255).to(torch.uint8)[0].permute(1, 2, 0).numpy()
    assert np.abs(direct.astype(int) - recon[1]).max() <= 1
    assert np.isfinite(s["psnr"]) and 0 < s["ssim"] < 1
    assert s["box_pairs"] == 2 and 0 <= s["t_acc"] <= 1


def test_center_crop_box_mapping():
    img = Image.new("RGB", (300, 150))
    arr, transform = center_crop_arr(img, 64)
    assert arr.shape == (64, 64, 3)
    # the central square of the original maps onto the whole input
    assert map_box([75, 0, 225, 150], transform, 64) == (0, 0, 64, 64)
    assert map_box([0, 0, 40, 40], transform, 64) is None   # cropped away


def test_maskgit_pair_samples_with_release_settings(reference, tmp_path):
    from softvq_demo import load_generator, load_tokenizer

    gen = load_generator(reference / "titok" / "maskgit_tiny", device="cpu")
    tok = load_tokenizer(reference / "titok" / "tiny_pixels", device="cpu")
    s = sample_set(gen, tok, 6, tmp_path, dist=CPU, seed=0, batch_size=4, progress=False)
    with np.load(s["npz"]) as f:
        assert f["arr_0"].shape == (6, 32, 32, 3) and f["arr_1"].tolist() == [0, 1, 2, 3, 4, 5]
    # a stage-1 TiTok decodes to proxy-code logits, not pixels: refused by name, not written
    legacy = load_tokenizer(reference / "titok" / "tiny_legacy", device="cpu")
    with pytest.raises(ValueError, match="not images"):
        sample_set(gen, legacy, 2, tmp_path / "legacy", dist=CPU, batch_size=2, progress=False)
    opts = json.loads((tmp_path / "settings.json").read_text())["identity"]["options"]
    assert opts["steps"] == gen.num_steps and opts["guidance_scale"] == gen.guidance_scale
