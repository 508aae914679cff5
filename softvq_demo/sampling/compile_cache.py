"""Compiled code that outlives the process: torch.compile's caches in a stable folder.

Inductor's FX-graph cache and AOTAutograd cache (on by default in recent PyTorch) store the
generated kernels under ``TORCHINDUCTOR_CACHE_DIR``, by default a folder in /tmp that a reboot or
a container restart (a Hugging Face Space) clears. ``configure()`` points them at
``SOFTVQ_COMPILE_CACHE`` (default ``$XDG_CACHE_HOME/softvq_demo/torch_compile``, i.e.
``~/.cache/...``) unless the user already chose a folder, so a later process reuses the kernels
and pays only dynamo's tracing. It only sets environment variables, so it is cheap to call at
import time; it must run before the first compile, which ``sampling`` guarantees.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional


def default_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "softvq_demo" / "torch_compile"


def configure(cache_dir: Optional[str] = None) -> Optional[Path]:
    """Set the cache folder (and make sure both caches are on); returns the folder in use, or
    None when SOFTVQ_COMPILE_CACHE=0 or it cannot be created (then PyTorch's default stays)."""
    choice = cache_dir or os.environ.get("SOFTVQ_COMPILE_CACHE")
    if choice is not None and choice.strip().lower() in ("0", "off", "no", "false"):
        return None
    if "TORCHINDUCTOR_CACHE_DIR" in os.environ and cache_dir is None:
        return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
    folder = Path(choice) if choice else default_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:  # read-only home: keep PyTorch's /tmp default
        return None
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")
    return folder
