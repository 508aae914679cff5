"""Load tokenizers and generators from a local folder, the catalogue, or the Hugging Face Hub.

A source is a folder in the Hub layout (``config.json`` + ``model.safetensors``), a catalogue name
(``softvq-l-64``, ``textscenes-softvq-32``), or a Hub repo id (``SoftVQVAE/softvq-l-64``). Weights
are read only through safetensors. The model is first built on the meta device, so a config
describing an absurd model, or weights that do not match the config, are refused before any
memory is allocated.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .catalogue import CATALOGUE, find_entry
from .convert import ensure_converted, find_release
from .device import DeviceLike, resolve_device
from .models import detect_family
from .models.base import Generator, Tokenizer
from .models.maskgit_vqgan import PixelDecoder
from .weights import (CONFIG_FILE, DIFFUSERS_WEIGHT_FILE, WEIGHT_FILE, CheckpointError, PathLike,
                      build_on_meta, check_finite, check_keys, read_config, read_header,
                      weight_file)

HUB_FILES = [CONFIG_FILE, WEIGHT_FILE, "README.md", DIFFUSERS_WEIGHT_FILE]

# --------------------------------------------------------------------------- resolving a source
def resolve_source(source: PathLike, *, allow_local: bool = True, catalogue_only: bool = False,
                   progress: bool = True, cache_dir: Optional[PathLike] = None) -> Path:
    """Turn a source into a local folder that holds ``config.json`` and ``model.safetensors``.

    The app passes ``allow_local=False, catalogue_only=True`` for requests from a browser, so no
    path and no arbitrary Hub repo can be reached from there.
    """
    text = str(source).strip()
    if not text:
        raise CheckpointError("empty model source")
    entry = find_entry(text)
    if entry is None and catalogue_only:
        raise CheckpointError(f"{text!r} is not a model in the catalogue")
    if entry is None and allow_local:
        path = Path(text).expanduser()
        if path.exists():  # a path to config.json or model.safetensors names its folder
            return path.parent if path.is_file() else path
    if entry is not None:
        if entry.local_path is not None:
            return entry.local_path
        text = entry.repo_id
    if _looks_like_repo_id(text):
        release = find_release(text)
        if release is not None:  # a pickle-only release: converted once, in a child process
            return ensure_converted(release, cache_dir=cache_dir, progress=progress)
        return download_from_hub(text, progress=progress, cache_dir=cache_dir)
    if allow_local and (os.sep in text or "/" in text or text.startswith((".", "~"))):
        raise CheckpointError(f"{text!r}: no such folder, and not a model in the catalogue")
    raise CheckpointError(f"unknown model {text!r}: give a folder, a catalogue name "
                          "(python -m softvq_demo models) or a Hub repo id")


def _looks_like_repo_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(p and not p.startswith(".") for p in parts)


def download_from_hub(repo_id: str, *, progress: bool = True,
                      cache_dir: Optional[PathLike] = None) -> Path:
    """Fetch config + safetensors weights (never pickles) into the local Hub cache.

    ``HF_HUB_OFFLINE=1`` is honoured by huggingface_hub itself: it then answers from the cache.
    """
    try:  # inside: the ImportError guard below names a missing hub as a CheckpointError
        from huggingface_hub import snapshot_download
        from huggingface_hub.utils import disable_progress_bars, enable_progress_bars
    except ImportError as err:  # pragma: no cover - huggingface_hub is a hard requirement
        raise CheckpointError("huggingface_hub is not installed") from err
    (enable_progress_bars if progress else disable_progress_bars)()
    try:
        folder = snapshot_download(repo_id, allow_patterns=HUB_FILES, cache_dir=cache_dir)
    except Exception as err:  # network, auth, offline cache miss: one readable line
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        why = "offline (HF_HUB_OFFLINE is set) and not in the local cache" if offline else \
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        raise CheckpointError(f"could not get {repo_id!r} from the Hugging Face Hub: {why}") from err
    return Path(folder)


# --------------------------------------------------------------------------- loading
def load_folder(folder: PathLike, kind: Optional[str] = None, device: DeviceLike = None,
                dtype: Optional[torch.dtype] = None, allow_local: bool = True) -> nn.Module:
    """Build the model a folder describes and fill its weights; strict about every tensor.

    ``allow_local`` governs a companion folder the config may name (FlexTok's VAE): a Hub id is
    always allowed, a local path only when the caller allows local paths."""

    folder = Path(folder)
    config = read_config(folder)
    try:
        family = detect_family(config, kind)
    except ValueError as err:
        raise CheckpointError(f"{folder}: {err}") from err
    path = weight_file(folder)
    header = read_header(path)
    build_config, elsewhere = config, {}
    if family.companion is not None and family.companion.source(config):
        build_config, elsewhere = _attach_companion(family.companion, config, header, allow_local)
    # Tensor names settle families that share a config layout (SoftVQ / MAETok).
    model = build_on_meta(build_config, kind, header.keys())
    keys = check_keys(model, header, str(path))
    dev = resolve_device(device)
    model = model.to_empty(device=dev)
    # Tensors the model computes itself (non-persistent buffers, optional buffers absent from the
    # checkpoint) are recreated after to_empty.
    if hasattr(model, "init_non_persistent"):
        model.init_non_persistent()
    own = model.state_dict()
    with torch.no_grad(), safe_open(str(path), framework="pt", device="cpu") as f:
        for k in keys:
            if k not in elsewhere:
                tensor = f.get_tensor(k)
                check_finite(tensor, k, path)
                own[k].copy_(tensor)
    for other in sorted({p for p, _ in elsewhere.values()}):
        with torch.no_grad(), safe_open(str(other), framework="pt", device="cpu") as f:
            for k, (p, name) in elsewhere.items():
                if p == other and k in own:
                    tensor = f.get_tensor(name)
                    check_finite(tensor, name, other)
                    own[k].copy_(tensor)
    for k in getattr(model, "optional_keys", ()):
        if k in own and k not in header:
            own[k].zero_()
    if dtype is not None:
        model = model.to(dtype=dtype)
    model.eval().requires_grad_(False)
    model.source = str(folder)
    return model


def _attach_companion(companion, config: dict[str, Any], header: dict, allow_local: bool
                      ) -> tuple[dict[str, Any], dict[str, tuple[Path, str]]]:
    """Resolve the companion a config names, complete the config with its config.json, and add
    its tensors that ``header`` lacks (in place); returns (build config, key -> (file, name))."""
    source = str(companion.source(config)).strip()
    path = Path(source).expanduser()
    if allow_local and path.is_dir():
        folder = path
    elif _looks_like_repo_id(source):
        folder = download_from_hub(source)
    else:
        raise CheckpointError(f"config names {source!r} for its weights: not a Hub repo id"
                              + ("" if allow_local else " (local paths are not allowed here)")
                              + ("" if not allow_local or path.is_dir() else ", nor a folder"))
    build_config = companion.attach(config, read_config(folder))
    file = weight_file(folder)
    elsewhere = {}
    for name, info in read_header(file).items():
        key = companion.prefix + name
        if key not in header:
            header[key] = info
            elsewhere[key] = (file, name)
    return build_config, elsewhere


def load_tokenizer(source: PathLike, device: DeviceLike = None, dtype: Optional[torch.dtype] = None,
                   **resolve_kwargs) -> Tokenizer:
    """Load a tokenizer (SoftVQ-VAE or TiTok) from a folder, catalogue name or Hub id."""
    folder = resolve_source(source, **resolve_kwargs)
    model = load_folder(folder, "tokenizer", device, dtype,
                        allow_local=resolve_kwargs.get("allow_local", True))
    model.catalogue_name = catalogue_name(source, folder)
    return model  # type: ignore[return-value]


def load_generator(source: PathLike, device: DeviceLike = None, dtype: Optional[torch.dtype] = None,
                   **resolve_kwargs) -> Generator:
    """Load a generator (SiT or MaskGIT) from a folder, catalogue name or Hub id."""
    folder = resolve_source(source, **resolve_kwargs)
    model = load_folder(folder, "generator", device, dtype)
    model.catalogue_name = catalogue_name(source, folder)
    return model  # type: ignore[return-value]


def catalogue_name(source: PathLike, folder: Path) -> Optional[str]:
    """The catalogue entry a loaded model came from (by name, repo id or embedded folder), if any.

    Used to warn about generator/tokenizer pairs whose shapes match but which were not trained
    together (e.g. a SiT trained on softvq-b-64 latents decoded by softvq-l-64).
    """

    entry = find_entry(str(source))
    if entry is not None:
        return entry.name
    try:
        resolved = Path(folder).resolve()
    except OSError:
        return None
    for e in CATALOGUE:
        if e.local_path is not None and Path(e.local_path).resolve() == resolved:
            return e.name
    return None


def save_pretrained(model: nn.Module, folder: PathLike, readme: Optional[str] = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` in the official Hub layout."""

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # FlexTok's config lists modules in execution order: sorting it would change the model.
    sort = not getattr(model, "config_order_matters", False)
    (folder / CONFIG_FILE).write_text(json.dumps(model.config, indent=2, sort_keys=sort) + "\n")
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHT_FILE))
    if readme is not None:
        (folder / "README.md").write_text(readme)
    return folder


def load_pixel_decoder(folder: PathLike, device: DeviceLike = "cpu") -> PixelDecoder:
    """Load a standalone MaskGIT-VQGAN pixel decoder folder (``config.json`` = its conf, plus one
    safetensors state dict), strictly: any missing, unexpected or mis-shaped tensor is an error
    naming it."""

    folder = Path(folder)
    conf = read_config(folder)
    try:
        with torch.device("meta"):
            model = PixelDecoder(conf)
    except ValueError as err:
        raise CheckpointError(f"{folder}: {err}") from err
    path = weight_file(folder)
    check_keys(model, read_header(path), str(path))
    model = model.to_empty(device=device)
    model.load_state_dict(load_file(str(path), device=str(device)), strict=True)
    return model.eval().requires_grad_(False)
