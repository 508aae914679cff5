"""Converting pickled ``pytorch_model.bin`` releases: restricted unpickler, manifest checks, the
converted folder loading strictly, and the Hub path converting once in a child process."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from softvq_demo import load_generator, load_tokenizer
from softvq_demo.cli import main
from softvq_demo.convert import ConversionError, Release, convert, read_state_dict

PIXEL_TOL = 5e-5  # see test_onedpiece.py


class Payload:
    """An object whose unpickling would create a file: a weights-only load must never run it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture
def odp_folder(reference):
    return reference / "onedpiece" / "tiny"


def write_bin(path: Path, state: dict) -> Path:
    torch.save(state, path)
    return path


def fixture_manifest(folder: Path, path: Path, edit=None) -> Path:
    """A release manifest (as in ../shared/reference/*/manifests) for a fixture folder."""
    state = load_file(str(folder / "model.safetensors"))
    keys = {k: [list(v.shape), "float32"] for k, v in state.items()}
    if edit:
        edit(keys)
    config = json.loads((folder / "config.json").read_text())
    path.write_text(json.dumps({"config": config, "keys": keys, "training_only": []}))
    return path


def test_convert_cli_from_config(odp_folder, tmp_path, capsys):
    state = load_file(str(odp_folder / "model.safetensors"))
    src = write_bin(tmp_path / "pytorch_model.bin", state)
    out = tmp_path / "converted"
    assert main(["convert", str(src), "--config", str(odp_folder / "config.json"),
                 "--out", str(out)]) == 0
    assert "converted" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["converted_from"]["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert config["model"]["vq_model"]["strict_length_assertion"] is False
    converted = load_file(str(out / "model.safetensors"))
    assert converted.keys() == state.keys() and all(torch.equal(converted[k], state[k]) for k in state)
    # the converted folder reproduces the official outputs, prefixes included
    tok = load_tokenizer(out, device="cpu")
    io = load_file(str(odp_folder / "io.safetensors"))
    with torch.no_grad():
        enc = tok.encode(io["images"] * 2 - 1)
        assert torch.equal(enc.indices, io["indices"][:, 0])
        assert ((tok.decode(enc.indices[:, :4]) + 1) / 2 - io["decoded_prefix_4"]).abs().max() < PIXEL_TOL


def test_convert_checks_the_manifest(odp_folder, tmp_path):
    state = load_file(str(odp_folder / "model.safetensors"))
    src = write_bin(tmp_path / "model.bin", state)
    good = fixture_manifest(odp_folder, tmp_path / "good.json")
    assert (convert(src, tmp_path / "ok", manifest=good) / "model.safetensors").is_file()

    def reshape(keys):
        keys["decoder.mask_token"][0] = [1, 1, 7]
    wrong = fixture_manifest(odp_folder, tmp_path / "wrong.json", reshape)
    with pytest.raises(ConversionError, match=r"mis-shaped: decoder\.mask_token \(file \[1, 1, 96\], "
                                              r"release \[1, 1, 7\]\)"):
        convert(src, tmp_path / "bad", manifest=wrong)
    del state["latent_tokens"]
    state["extra.weight"] = torch.zeros(2)
    src = write_bin(tmp_path / "partial.bin", state)
    with pytest.raises(ConversionError, match=r"missing: latent_tokens; unexpected: extra\.weight"):
        convert(src, tmp_path / "bad", manifest=good)
    assert not (tmp_path / "bad").exists()


def test_convert_generator_drops_old_position_ids(reference, tmp_path):
    folder = reference / "titok" / "maskgit_tiny"
    state = load_file(str(folder / "model.safetensors"))
    state["model.embeddings.position_ids"] = torch.arange(9)[None]  # old transformers wrote it
    src = write_bin(tmp_path / "gen.bin", state)
    out = convert(src, tmp_path / "gen", config=json.loads((folder / "config.json").read_text()))
    assert "model.embeddings.position_ids" not in load_file(str(out / "model.safetensors"))
    assert load_generator(out, device="cpu").num_tokens == 8


def test_refuses_pickled_objects(odp_folder, tmp_path, capsys):
    marker = tmp_path / "code-ran"
    state = load_file(str(odp_folder / "model.safetensors"))
    src = write_bin(tmp_path / "evil.bin", {**state, "payload": Payload(marker)})
    code = main(["convert", str(src), "--config", str(odp_folder / "config.json"),
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: evil.bin: refused: it holds objects other than tensors")
    assert "Traceback" not in err and not marker.exists() and not (tmp_path / "out").exists()
    for obj, message in (([torch.zeros(2)], "got a list"),
                         ({"a": torch.zeros(1), "b": 3}, "not a tensor: b")):
        with pytest.raises(ConversionError, match=message):
            read_state_dict(write_bin(tmp_path / "odd.bin", obj))
    (tmp_path / "junk.bin").write_bytes(b"not a pickle at all")
    with pytest.raises(ConversionError, match="not a readable PyTorch weights file"):
        read_state_dict(tmp_path / "junk.bin")


def test_hub_release_converts_once_in_a_child_process(odp_folder, tmp_path, monkeypatch):
    import huggingface_hub

    from softvq_demo import convert as convert_module

    snapshot = tmp_path / "hub" / "snapshots" / "abc123"  # huggingface_hub's cache layout
    snapshot.mkdir(parents=True)
    src = write_bin(snapshot / "pytorch_model.bin", load_file(str(odp_folder / "model.safetensors")))
    release = Release("tiny-odp", "test-org/tiny-odp", "tokenizer",
                      str(fixture_manifest(odp_folder, tmp_path / "manifest.json")))
    monkeypatch.setitem(convert_module.RELEASES, release.repo_id, release)
    calls = []

    def fake_download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename))
        return str(src)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)

    def no_unpickling(*args, **kwargs):
        raise AssertionError("load_tokenizer must not unpickle in its own process")

    monkeypatch.setattr(torch, "load", no_unpickling)
    cache = tmp_path / "cache"
    tok = load_tokenizer("test-org/tiny-odp", device="cpu", cache_dir=cache)
    assert tok.family == "onedpiece" and calls == [("test-org/tiny-odp", "pytorch_model.bin")]
    config = json.loads((Path(tok.source) / "config.json").read_text())
    assert config["converted_from"]["repo_id"] == "test-org/tiny-odp"
    assert config["converted_from"]["revision"] == "abc123"
    again = load_tokenizer("test-org/tiny-odp", device="cpu", cache_dir=cache)  # from the cache
    assert len(calls) == 1 and again.source == tok.source
