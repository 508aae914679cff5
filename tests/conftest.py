"""Shared test fixtures: paths to the reference material made by the official code, live app
servers (``start_app``: stopped when the module that started it ends; ``start_app_session``: when
the session ends) and the tiny-fixture app that test_app.py and test_browser.py share
(``tiny_app``).

``python -m pytest -m "not slow"`` runs the quick subset: live servers, the browser, training
runs, real-OCR sweeps and other tests of more than a few seconds are marked ``slow``.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
REFERENCE = Path(os.environ.get("SOFTVQ_REFERENCE", ROOT.parent / "shared" / "reference"))

# Tests never touch the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def share_default_ssl_context() -> None:
    """Build httpx's default SSL context once per process instead of for every client.

    httpx.get/post/stream open a new client per call, and gradio_client opens several per request
    (upload, send, stream, each download); each one reads certifi's CA bundle into a fresh SSL
    context (~25 ms of CPU, more under thread contention). The tests only speak plain HTTP to
    127.0.0.1, where the context is never used, yet it was ~2/3 of the test process's CPU in the
    16-client load test, on the same 2 cores as the server. Only the default case (verification
    on, no client certificate) is shared, keyed by the environment it reads; the settings are
    unchanged."""
    try:
        from httpx._transports import default as transport
    except ImportError:   # another httpx layout: stay correct, just slower
        return
    original = getattr(transport, "create_ssl_context", None)
    if original is None or getattr(original, "shared", False):
        return
    contexts: dict = {}
    lock = threading.Lock()

    def create_ssl_context(verify=True, cert=None, trust_env=True):
        if verify is not True or cert is not None:
            return original(verify=verify, cert=cert, trust_env=trust_env)
        key = (trust_env, os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
        with lock:
            if key not in contexts:
                contexts[key] = original(verify=True, cert=None, trust_env=trust_env)
            return contexts[key]

    create_ssl_context.shared = True
    transport.create_ssl_context = create_ssl_context


share_default_ssl_context()

# The embedded textscenes models (checkpoints/), used by the reliability and fault tests.
CK = ROOT / "checkpoints"
SV, TT, SIT, MG = "textscenes-softvq-32", "textscenes-titok-128", "textscenes-sit", "textscenes-maskgit"
needs_embedded = pytest.mark.skipif(
    not all((CK / n / "model.safetensors").is_file() for n in (SV, TT, SIT, MG)),
    reason="embedded models not in checkpoints/")


def run_last(test):
    """Run this test after every other test of the session, and its module's other tests first
    (pytest_collection_modifyitems): for a check that waits on a server (the reliability cache
    TTL), so the waiting overlaps the rest of the suite."""
    test.run_last = True
    return test


def pytest_collection_modifyitems(session, config, items):
    def last(item) -> bool:
        return getattr(getattr(item, "function", None), "run_last", False)

    early = {getattr(item, "module", None) for item in items if last(item)}
    items.sort(key=lambda item: (last(item), getattr(item, "module", None) not in early))  # stable


@pytest.fixture(scope="session")
def reference() -> Path:
    if not REFERENCE.is_dir():
        pytest.skip(f"reference fixtures not found at {REFERENCE}")
    return REFERENCE


# --------------------------------------------------------------------------- live app servers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list, tmp: Path, env: dict | None = None):
    """Start app.py with ``args`` (and extra ``env``) on a free port; returns (process, client,
    url, log path)."""
    from gradio_client import Client

    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "CUDA_VISIBLE_DEVICES": "", **(env or {})}
    log_path = tmp / "server.log"
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), *map(str, args), "--port", str(port),
                             "--host", "127.0.0.1"], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("app exited:\n" + log_path.read_text()[-3000:])
        try:
            return proc, Client(url, verbose=False, download_files=str(tmp / "dl")), url, log_path
        except Exception:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("app did not start:\n" + log_path.read_text()[-3000:])


def stop(proc):
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


class AppServer(dict):
    """A running app.py: ``proc``, ``client`` (gradio_client), ``url``, ``log`` (its output file),
    ``tmp`` (its folder); a dict, so tests may add what they know about it."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _starter(tmp_path_factory, running: list):
    def start(args: list, env: dict | None = None, tmp: Path | None = None) -> AppServer:
        tmp = tmp or tmp_path_factory.mktemp("app")
        proc, client, url, log = launch(args, tmp, env)
        running.append(proc)
        return AppServer(proc=proc, client=client, url=url, log=log, tmp=tmp)

    start.tmp = tmp_path_factory.mktemp("inputs")
    return start


@pytest.fixture(scope="module")
def start_app(tmp_path_factory):
    """``start_app(args, env=None)`` starts app.py with ``args`` on a free port and returns its
    AppServer; every server started through it stops when the module ends. ``start_app.tmp`` is a
    fresh folder of the module's for inputs the server should see."""
    running = []
    yield _starter(tmp_path_factory, running)
    for proc in running:
        stop(proc)


@pytest.fixture(scope="session")
def start_app_session(tmp_path_factory):
    """``start_app`` for servers that outlive their module (shared by modules, or checked again at
    the end of the session); they stop when the session ends."""
    running = []
    yield _starter(tmp_path_factory, running)
    for proc in running:
        stop(proc)


# --------------------------------------------------------------------------- the tiny-fixture app
def make_images(folder: Path) -> dict:
    """The app tests' inputs: three small pictures, an EXIF-rotated JPEG, RGBA, 16-bit grey, a text
    file, a broken PNG and a 30000×30000 PNG (a bomb by its header)."""
    import numpy as np
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, size in enumerate([(200, 120), (90, 150), (64, 64)]):
        im = Image.new("RGB", size, (40 * i, 140, 220 - 50 * i))
        d = ImageDraw.Draw(im)
        d.rectangle((5, 5, 40, 30), fill=(250, 250, 250))
        d.text((8, 10), f"AB{i}", fill=(0, 0, 0))
        p = folder / f"img{i}.png"
        im.save(p)
        out[f"img{i}"] = p
    # EXIF-rotated JPEG (orientation 6: rotate 90° clockwise when displayed)
    im = Image.new("RGB", (120, 60), (255, 0, 0))
    exif = Image.Exif()
    exif[274] = 6
    p = folder / "rotated.jpg"
    im.save(p, exif=exif.tobytes())
    out["rotated"] = p
    rgba = Image.new("RGBA", (50, 50), (0, 0, 255, 0))
    p = folder / "transparent.png"
    rgba.save(p)
    out["rgba"] = p
    gray16 = Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16))
    p = folder / "gray16.png"
    gray16.save(p)
    out["gray16"] = p
    p = folder / "notes.txt"
    p.write_text("not an image")
    out["text"] = p
    p = folder / "broken.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    out["broken"] = p
    # a PNG whose header claims 30000×30000 pixels (a decompression bomb): refused before decoding
    p = folder / "huge.png"
    p.write_bytes(huge_png())
    out["huge"] = p
    return out


_HUGE_PNG: list = []


def huge_png() -> bytes:
    """A 30000×30000 grey PNG of zeros (0.9 MB), encoded once per session: saving it takes ~3.5 s
    on 2 cores, and three app fixtures write the same file."""
    if not _HUGE_PNG:
        import io

        from PIL import Image

        buf = io.BytesIO()
        Image.new("L", (30000, 30000)).save(buf, format="PNG", optimize=False, compress_level=9)
        _HUGE_PNG.append(buf.getvalue())
    return _HUGE_PNG[0]


@pytest.fixture(scope="session")
def tiny_app(reference, start_app_session):
    """app.py on the tiny reference fixtures (SoftVQ tiny, TiTok tiny_pixels, SiT, MaskGIT), one
    server for test_app.py and test_browser.py: their tests need no fresh server (none counts
    memory, files or CPU), and a start-up is 7–15 s on 2 cores."""
    files = make_images(start_app_session.tmp / "images")
    tok_a = reference / "softvq" / "tiny"
    tok_b = reference / "titok" / "tiny_pixels"
    gen = reference / "softvq" / "sit_tiny"
    args = ["--tokenizer", tok_a, "--tokenizer", tok_b, "--generator", gen,
            "--generator", reference / "titok" / "maskgit_tiny"]
    srv = start_app_session(args)
    return AppServer({**srv, "files": files, "a": tok_a.name, "b": tok_b.name, "gen": gen.name,
                      "gen_b": "maskgit_tiny", "n_a": 16})


@pytest.fixture(scope="module")
def local():
    """The same models in this process: what the server must answer (computed independently)."""
    from softvq_demo.ui.common import Ctx
    from softvq_demo.ui.manager import ModelManager

    m = ModelManager(device="cpu")
    for name, kind in ((SV, "tokenizer"), (TT, "tokenizer"), (SIT, "generator"), (MG, "generator")):
        m.load(str(CK / name), kind)
    return Ctx(manager=m, ocr_error="OCR off in this test")
