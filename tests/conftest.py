"""Shared test fixtures: paths to the reference material made by the official code, and a live
app server (``start_app``) that is stopped when the module that started it ends.

``python -m pytest -m "not slow"`` runs the quick subset: live servers, the browser, training
runs, real-OCR sweeps and other tests of more than a few seconds are marked ``slow``.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
REFERENCE = Path(os.environ.get("SOFTVQ_REFERENCE", ROOT.parent / "shared" / "reference"))

# Tests never touch the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# The embedded textscenes models (checkpoints/), used by the reliability and fault tests.
CK = ROOT / "checkpoints"
SV, TT, SIT, MG = "textscenes-softvq-32", "textscenes-titok-128", "textscenes-sit", "textscenes-maskgit"
needs_embedded = pytest.mark.skipif(
    not all((CK / n / "model.safetensors").is_file() for n in (SV, TT, SIT, MG)),
    reason="embedded models not in checkpoints/")


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


@pytest.fixture(scope="module")
def start_app(tmp_path_factory):
    """``start_app(args, env=None)`` starts app.py with ``args`` on a free port and returns its
    AppServer; every server started through it stops when the module ends. ``start_app.tmp`` is a
    fresh folder of the module's for inputs the server should see."""
    running = []

    def start(args: list, env: dict | None = None, tmp: Path | None = None) -> AppServer:
        tmp = tmp or tmp_path_factory.mktemp("app")
        proc, client, url, log = launch(args, tmp, env)
        running.append(proc)
        return AppServer(proc=proc, client=client, url=url, log=log, tmp=tmp)

    start.tmp = tmp_path_factory.mktemp("inputs")
    yield start
    for proc in running:
        stop(proc)


@pytest.fixture(scope="module")
def local():
    """The same models in this process: what the server must answer (computed independently)."""
    from softvq_demo.ui.common import Ctx
    from softvq_demo.ui.manager import ModelManager

    m = ModelManager(device="cpu")
    for name, kind in ((SV, "tokenizer"), (TT, "tokenizer"), (SIT, "generator"), (MG, "generator")):
        m.load(str(CK / name), kind)
    return Ctx(manager=m, ocr_error="OCR off in this test")
