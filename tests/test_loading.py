"""Loading from the Hub cache layout, the catalogue, and refusing bad checkpoints."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from softvq_demo import CheckpointError, load_generator, load_tokenizer
from softvq_demo.catalogue import CATALOGUE, find_entry
from softvq_demo.loading import resolve_source


def make_hub_cache(cache, repo_id, src):
    """A folder in huggingface_hub's cache layout, as a download would leave it."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    revision = "0" * 40
    snap = repo / "snapshots" / revision
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(src / name, snap / name)
    return snap


def test_hub_repo_id_loads_from_cache_offline(reference, tmp_path):
    snap = make_hub_cache(tmp_path, "SoftVQVAE/softvq-tiny-test", reference / "softvq" / "tiny")
    assert resolve_source("SoftVQVAE/softvq-tiny-test", cache_dir=tmp_path) == snap
    tok = load_tokenizer("SoftVQVAE/softvq-tiny-test", cache_dir=tmp_path)
    assert tok.family == "softvq" and tok.num_tokens == 16


def test_catalogue_name_resolves_to_its_hub_repo(reference, tmp_path):
    make_hub_cache(tmp_path, "SoftVQVAE/sit-xl_softvq-b-32", reference / "softvq" / "sit_tiny")
    gen = load_generator("sit-xl_softvq-b-32", cache_dir=tmp_path)
    assert gen.family == "sit"


def test_offline_cache_miss_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="offline|Hugging Face Hub"):
        load_tokenizer("SoftVQVAE/not-a-model", cache_dir=tmp_path)


@pytest.mark.parametrize("source", ["no-such-model", "./no/such/folder", ""])
def test_unknown_sources(source):
    with pytest.raises(CheckpointError):
        load_tokenizer(source)


def test_browser_mode_refuses_paths_and_unlisted_repos(reference):
    for source in [str(reference / "softvq" / "tiny"), "someone/any-repo", "../../etc"]:
        with pytest.raises(CheckpointError, match="not a model in the catalogue"):
            resolve_source(source, allow_local=False, catalogue_only=True)


def test_catalogue_is_consistent():
    names = [e.name for e in CATALOGUE]
    assert len(names) == len(set(names))
    for e in CATALOGUE:
        assert e.kind in ("tokenizer", "generator")
        if e.pair is not None:
            paired = find_entry(e.pair)
            assert paired is not None and paired.kind == "tokenizer", e.name
            assert paired.num_tokens == e.num_tokens and paired.image_size == e.image_size, e.name
    assert find_entry("SoftVQVAE/softvq-l-64").name == "softvq-l-64"


def test_pickle_weights_are_refused(reference, tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copy(reference / "softvq" / "tiny" / "config.json", folder)
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(CheckpointError, match="pickle"):
        load_tokenizer(folder)


def test_truncated_safetensors_is_refused(reference, tmp_path):
    folder = tmp_path / "trunc"
    shutil.copytree(reference / "softvq" / "tiny", folder)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="safetensors"):
        load_tokenizer(folder)


def test_config_memory_bomb_is_refused_before_allocation(reference, tmp_path):
    folder = tmp_path / "bomb"
    shutil.copytree(reference / "softvq" / "sit_tiny", folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_size=8192, depth=256, num_heads=64)  # ~200B parameters
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="parameters|out of range"):
        load_generator(folder)


def test_config_out_of_range_is_refused(reference, tmp_path):
    folder = tmp_path / "absurd"
    shutil.copytree(reference / "softvq" / "tiny", folder)
    config = json.loads((folder / "config.json").read_text())
    config["num_latent_tokens"] = 10**9
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="out of range"):
        load_tokenizer(folder)


def test_config_weights_mismatch(reference, tmp_path):
    folder = tmp_path / "mismatch"
    shutil.copytree(reference / "softvq" / "tiny", folder)
    shutil.copy(reference / "softvq" / "tiny_nol2" / "model.safetensors", folder / "model.safetensors")
    with pytest.raises(CheckpointError, match="do not match"):
        load_tokenizer(folder)


def test_dtype_and_eval_mode(reference):
    tok = load_tokenizer(reference / "softvq" / "tiny", dtype=torch.float64)
    assert not tok.training and all(p.dtype == torch.float64 for p in tok.parameters())
    assert not any(p.requires_grad for p in tok.parameters())


def test_save_pretrained_round_trip(reference, tmp_path):
    from softvq_demo import save_pretrained

    tok = load_tokenizer(reference / "softvq" / "tiny")
    save_pretrained(tok, tmp_path / "copy")
    again = load_tokenizer(tmp_path / "copy")
    a, b = tok.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "copy" / "config.json").read_text()) == tok.config
    assert load_file(str(tmp_path / "copy" / "model.safetensors")).keys() == a.keys()
