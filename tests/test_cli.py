"""The command line: real runs on the fixture checkpoints, one-line errors for bad input."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from softvq_demo.cli import main


@pytest.fixture()
def softvq_tiny(reference):
    return str(reference / "softvq" / "tiny")


@pytest.fixture()
def sit_tiny(reference):
    return str(reference / "softvq" / "sit_tiny")


@pytest.fixture()
def photo(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(path)
    return path


def test_reconstruct_writes_images(softvq_tiny, photo, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["reconstruct", str(photo), "--tokenizer", softvq_tiny, "--out", str(out)]) == 0
    recon = Image.open(out / "photo_recon.png")
    assert recon.size == (64, 64) and recon.mode == "RGB"
    assert "PSNR" in capsys.readouterr().out


def test_generate_writes_images(softvq_tiny, sit_tiny, tmp_path, capsys):
    out = tmp_path / "gen"
    code = main(["generate", "--generator", sit_tiny, "--tokenizer", softvq_tiny, "--classes", "207,360",
                 "--steps", "3", "--cfg", "1.5", "--out", str(out)])
    assert code == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == ["000_class207.png", "001_class360.png"]
    assert "img/s" in capsys.readouterr().out


def one_line_error(capsys, argv, match):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and "Traceback" not in err
    assert match in err, err


def test_missing_file(capsys, softvq_tiny, tmp_path):
    one_line_error(capsys, ["reconstruct", str(tmp_path / "nope.png"), "--tokenizer", softvq_tiny],
                   "no such file")


def test_not_an_image(capsys, softvq_tiny, tmp_path):
    fake = tmp_path / "fake.png"
    fake.write_text("hello, I am text")
    one_line_error(capsys, ["reconstruct", str(fake), "--tokenizer", softvq_tiny, "--out",
                            str(tmp_path)], "image")


def test_unknown_model(capsys, photo):
    one_line_error(capsys, ["reconstruct", str(photo), "--tokenizer", "no-such-model"], "unknown model")


def test_mismatched_pair(capsys, reference, tmp_path):
    one_line_error(capsys, ["generate", "--generator", str(reference / "softvq" / "sit_tiny_cosine"),
                            "--tokenizer", str(reference / "softvq" / "tiny"), "--out", str(tmp_path)],
                   "mismatch")


def test_class_out_of_range(capsys, softvq_tiny, sit_tiny, tmp_path):
    one_line_error(capsys, ["generate", "--generator", sit_tiny, "--tokenizer", softvq_tiny,
                            "--classes", "5000", "--out", str(tmp_path)], "out of range")


@pytest.mark.slow
def test_bad_value_from_a_real_process(softvq_tiny, sit_tiny, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "softvq_demo", "generate", "--generator", sit_tiny,
                           "--tokenizer", softvq_tiny, "--steps", "-3", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: steps") and "Traceback" not in proc.stderr


def test_titok_reconstruct_and_maskgit_generate(reference, photo, tmp_path, capsys):
    titok = str(reference / "titok" / "tiny_pixels")
    maskgit = str(reference / "titok" / "maskgit_tiny")
    out = tmp_path / "titok"
    assert main(["reconstruct", str(photo), "--tokenizer", titok, "--out", str(out)]) == 0
    assert Image.open(out / "photo_recon.png").size == (32, 32)
    gen_out = tmp_path / "maskgit"
    assert main(["generate", "--generator", maskgit, "--tokenizer", titok, "--classes", "3,7",
                 "--steps", "4", "--cfg", "2.0", "--seed", "1", "--out", str(gen_out)]) == 0
    first = [np.asarray(Image.open(p)) for p in sorted(gen_out.iterdir())]
    assert [p.name for p in sorted(gen_out.iterdir())] == ["000_class3.png", "001_class7.png"]
    # Seeded: a second run writes the same pixels.
    assert main(["generate", "--generator", maskgit, "--tokenizer", titok, "--classes", "3,7",
                 "--steps", "4", "--cfg", "2.0", "--seed", "1", "--out", str(tmp_path / "again")]) == 0
    again = [np.asarray(Image.open(p)) for p in sorted((tmp_path / "again").iterdir())]
    assert all((a == b).all() for a, b in zip(first, again))


def test_maskgit_with_softvq_tokenizer_is_refused(capsys, reference, softvq_tiny, tmp_path):
    one_line_error(capsys, ["generate", "--generator", str(reference / "titok" / "maskgit_tiny"),
                            "--tokenizer", softvq_tiny, "--out", str(tmp_path)], "discrete")


def test_sampler_option_refused_for_maskgit(capsys, reference, tmp_path):
    one_line_error(capsys, ["generate", "--generator", str(reference / "titok" / "maskgit_tiny"),
                            "--tokenizer", str(reference / "titok" / "tiny_pixels"), "--sampler", "heun",
                            "--out", str(tmp_path)], "SiT generators only")


def test_truncated_image(capsys, photo, softvq_tiny, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(photo.read_bytes()[:200])
    one_line_error(capsys, ["reconstruct", str(broken), "--tokenizer", softvq_tiny, "--out",
                            str(tmp_path / "o")], "broken.png")


def test_pair_warning_for_catalogue_models_not_trained_together(reference):
    from softvq_demo import load_generator, load_tokenizer
    from softvq_demo.sampling import pair_warning

    tok = load_tokenizer(reference / "softvq" / "tiny")
    gen = load_generator(reference / "softvq" / "sit_tiny")
    assert tok.catalogue_name is None and pair_warning(tok, gen) is None  # unknown provenance: silent
    gen.catalogue_name, tok.catalogue_name = "sit-xl_softvq-b-64", "softvq-l-64"
    assert "trained on softvq-b-64" in pair_warning(tok, gen)
    tok.catalogue_name = "softvq-b-64"
    assert pair_warning(tok, gen) is None


def test_embedded_models_know_their_catalogue_names():
    from pathlib import Path

    from softvq_demo import load_generator, load_tokenizer
    from softvq_demo.sampling import pair_warning

    root = Path(__file__).resolve().parents[1] / "checkpoints"
    tok = load_tokenizer(root / "textscenes-softvq-32")  # by folder
    gen = load_generator("textscenes-sit")               # by name
    assert (tok.catalogue_name, gen.catalogue_name) == ("textscenes-softvq-32", "textscenes-sit")
    assert pair_warning(tok, gen) is None
