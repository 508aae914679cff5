"""Faults inside the app's process: CUDA out-of-memory during generation (injected on the CPU),
checkpoint folders that fail to load at start-up, and gradio's cache-expiry sweep under
concurrent additions. No server."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from conftest import CK, MG, SIT, SV, TT, needs_embedded

pytestmark = needs_embedded


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def inject_oom(monkeypatch, gen, limit: int, exc=torch.OutOfMemoryError) -> list:
    """The generator's network raises a CUDA-style out-of-memory error above ``limit`` rows."""
    forward, seen = gen.forward, []

    def fwd(x, *args, **kwargs):
        seen.append(int(x.shape[0]))
        if x.shape[0] > limit:
            raise exc("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 79.1 GiB total)")
        return forward(x, *args, **kwargs)

    monkeypatch.setattr(gen, "forward", fwd)
    return seen


@pytest.mark.slow
def test_oom_falls_back_to_smaller_batches(local, monkeypatch):
    from softvq_demo import generate
    from softvq_demo.sampling.oom import generate_with_fallback

    gen, tok = local.manager.generator(SIT), local.manager.tokenizer(SV)
    opts = dict(steps=3, method="heun", cfg_scale=1.5, guidance_low=0.0, guidance_high=1.0)
    labels = [0, 1, 2, 3, 4, 5, 6, 7]
    full = generate(gen, tok, labels, seed=7, **opts)
    seen = inject_oom(monkeypatch, gen, limit=4)      # CFG doubles the rows: 16 and 8 > 4 → OOM
    out = generate_with_fallback(gen, tok, labels, seed=7, **opts)
    assert out.timings["oom_retries"] == 2 and out.timings["batch_used"] == 2   # 8 → 4 → 2
    assert out.images.shape == full.images.shape and out.labels.tolist() == labels
    assert torch.allclose(out.images, full.images, atol=1e-4)    # same noise: same images (ODE)
    assert seen[0] == 16 and 8 in seen and seen[-1] == 4
    # a generic RuntimeError that says "out of memory" is handled the same way
    monkeypatch.undo()
    inject_oom(monkeypatch, gen, limit=2, exc=RuntimeError)
    assert generate_with_fallback(gen, tok, labels, seed=7, **opts).timings["batch_used"] == 1
    # nothing fits: the OOM is raised for the app to report; other errors are never swallowed
    monkeypatch.undo()
    inject_oom(monkeypatch, gen, limit=0)
    with pytest.raises(torch.OutOfMemoryError):
        generate_with_fallback(gen, tok, labels, seed=7, **opts)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="out of range"):
        generate_with_fallback(gen, tok, [99], seed=7, **opts)
    again = generate_with_fallback(gen, tok, labels, seed=7, **opts)   # the next request works
    assert again.timings["oom_retries"] == 0 and torch.equal(again.images, full.images)


def test_oom_in_the_generate_tab(local, monkeypatch):
    """What the Generate tab shows: the fallback, then a clear message when even one image does
    not fit, then a normal answer."""
    import gradio as gr

    from softvq_demo.ui.common import handler
    from softvq_demo.ui.tab_generate import run_generate

    mg = local.manager.generator(MG)
    args = (MG, [3], 2.0, 0.0, 1.0, 3, "linear", 0, 4)
    inject_oom(monkeypatch, mg, limit=4)      # MaskGIT: cond + uncond in one batch of 2B
    gallery, table, md = run_generate(local, *args)
    assert len(gallery) == 4 and "Out of device memory at batch 4" in md and "batches of 2" in md
    monkeypatch.undo()
    inject_oom(monkeypatch, mg, limit=0)
    with pytest.raises(gr.Error, match="out of memory"):
        handler(run_generate)(local, *args)
    monkeypatch.undo()
    gallery, table, md = handler(run_generate)(local, *args)
    assert len(gallery) == 4 and "Out of device memory" not in md


def test_other_models_keep_serving_after_load_failures(tmp_path):
    """In process, every kind of bad checkpoint folder at start-up: each is reported by name, the
    good models load, and nothing was allocated for the memory bomb."""
    import shutil

    from softvq_demo.ui.app import create_manager

    bad = {}
    for kind in ("truncated", "pickle", "bomb", "mismatch", "missing-config"):
        folder = tmp_path / kind
        shutil.copytree(CK / SV, folder)
        bad[kind] = folder
    w = bad["truncated"] / "model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    (bad["pickle"] / "model.safetensors").unlink()
    (bad["pickle"] / "pytorch_model.bin").write_bytes(b"\x80\x04cos\nsystem\n.")
    cfg = json.loads((bad["bomb"] / "config.json").read_text())
    cfg.update(codebook_size=2**31, codebook_embed_dim=2**20)
    (bad["bomb"] / "config.json").write_text(json.dumps(cfg))
    shutil.copy(CK / TT / "model.safetensors", bad["mismatch"] / "model.safetensors")
    (bad["missing-config"] / "config.json").unlink()
    before = rss_kb(os.getpid())
    m = create_manager(tokenizers=[str(CK / SV)] + [str(p) for p in bad.values()] + [str(CK / TT)],
                       device="cpu")
    assert rss_kb(os.getpid()) - before < 500_000          # no bomb-sized allocation (< 0.5 GB)
    assert m.names("tokenizer") == [SV, TT]
    assert len(m.messages) == len(bad)
    for kind, msg in zip(bad, m.messages):
        assert kind in msg and "Could not load tokenizer" in msg, msg
    assert "pickle" in m.messages[1] and "do not match" in m.messages[3]


def test_cache_expiry_survives_concurrent_additions(tmp_path):
    """gradio's own sweep iterated live sets (one 'Set changed size during iteration' stopped its
    schedule for good); ours deletes expired files, keeps fresh and kept ones, and never raises."""
    import time as _time
    from types import SimpleNamespace

    from softvq_demo.ui.cache import expire_named_files

    old, fresh, kept = (tmp_path / n for n in ("old.webp", "fresh.webp", "kept.webp"))
    for f in (old, kept):
        f.write_bytes(b"x")
    _time.sleep(1.2)
    fresh.write_bytes(b"x")

    class GrowingSet(set):
        """A set that another thread 'adds to' while it is being walked."""
        def __iter__(self):
            items = list(super().__iter__())
            for item in items:
                self.add(str(tmp_path / f"new-{len(self)}.webp"))
                yield item

    temp_set = GrowingSet({str(old), str(fresh), str(kept), str(tmp_path / "gone.webp")})
    blocks = SimpleNamespace(blocks={0: SimpleNamespace(keep_in_cache={str(kept)})},
                             temp_file_sets=[temp_set])
    expire_named_files(blocks, age=1)
    assert not old.exists() and fresh.exists() and kept.exists()
    assert str(old) not in temp_set and str(fresh) in temp_set


def test_cache_expiry_keeps_a_file_named_again(tmp_path):
    """The same bytes uploaded again get the same path: an old file named again within the TTL
    stays (it was deleted between upload and request: 'file not found' under load), and its
    record too; one not named again goes. The wider sweep keeps it as well."""
    import time as _time
    from types import SimpleNamespace

    from softvq_demo.ui.cache import RecordedSet, expire_named_files, record_cache_names, sweep_cache

    folders = [tmp_path / (c * 64) for c in "ab"]
    again, unnamed = (f / "upload.png" for f in folders)
    old = _time.time() - 3600
    for f in (again, unnamed):
        f.parent.mkdir()
        f.write_bytes(b"x")
        os.utime(f, (old, old))
    uploads = {str(again), str(unnamed)}
    comp = SimpleNamespace(temp_files={str(again)}, keep_in_cache=set())
    blocks = SimpleNamespace(blocks={0: comp}, upload_file_set=uploads,
                             temp_file_sets=[uploads, comp.temp_files])
    record_cache_names(blocks)
    assert isinstance(blocks.upload_file_set, RecordedSet)
    assert blocks.temp_file_sets == [blocks.upload_file_set, comp.temp_files]
    assert blocks.temp_file_sets[0] is blocks.upload_file_set and blocks.temp_file_sets[1] is comp.temp_files
    for s in blocks.temp_file_sets:      # recorded long ago, as at start-up an hour back
        s.named_at = {p: old for p in s}
    blocks.upload_file_set.update([str(again)])          # the re-upload, just now
    expire_named_files(blocks, age=600)
    assert again.exists() and not unnamed.exists()
    assert str(again) in blocks.upload_file_set and str(unnamed) not in blocks.upload_file_set
    for s in blocks.temp_file_sets:      # no live set names it now; its recent naming is known
        s.discard(str(again))
    assert sweep_cache(blocks, 600, str(tmp_path)) == 0 and again.exists()
    blocks.upload_file_set.add(str(again))
    expire_named_files(blocks, age=None)                 # shutdown: everything named goes
    assert not again.exists()
