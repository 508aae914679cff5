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
from typing import Any, Optional, Union

import torch
from torch import nn

from .device import DeviceLike, resolve_device
from .models import build_model, detect_family
from .models.base import Generator, Tokenizer
from .models.maskgit_vqgan import PixelDecoder

# Far above SoftVQ-L (~600M with its training-only DINOv2) and SiT-XL (~675M); below anything that
# would exhaust a Space's memory. A config beyond it is treated as a memory bomb.
MAX_PARAMETERS = 3_000_000_000
WEIGHT_FILE = "model.safetensors"
DIFFUSERS_WEIGHT_FILE = "diffusion_pytorch_model.safetensors"  # VAE repos (FlexTok's) in diffusers layout
CONFIG_FILE = "config.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
HUB_FILES = [CONFIG_FILE, WEIGHT_FILE, "README.md", DIFFUSERS_WEIGHT_FILE]

PathLike = Union[str, os.PathLike]


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message says which file or tensor and why."""


# --------------------------------------------------------------------------- resolving a source
def resolve_source(source: PathLike, *, allow_local: bool = True, catalogue_only: bool = False,
                   progress: bool = True, cache_dir: Optional[PathLike] = None) -> Path:
    """Turn a source into a local folder that holds ``config.json`` and ``model.safetensors``.

    The app passes ``allow_local=False, catalogue_only=True`` for requests from a browser, so no
    path and no arbitrary Hub repo can be reached from there.
    """
    from .catalogue import find_entry  # local import: catalogue imports nothing from here

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
    try:
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


# --------------------------------------------------------------------------- reading a folder
def read_config(folder: PathLike) -> dict[str, Any]:
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a folder")
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(f"{folder}: no {CONFIG_FILE}")
    if config_path.stat().st_size > 1_000_000:
        raise CheckpointError(f"{config_path}: too large to be a model config")
    try:
        config = json.loads(config_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{config_path}: not valid JSON ({err})") from err
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path}: expected a JSON object")
    return config


def weight_file(folder: Path) -> Path:
    for name in (WEIGHT_FILE, DIFFUSERS_WEIGHT_FILE):
        if (folder / name).is_file():
            return folder / name
    candidates = sorted(folder.glob("*.safetensors"))
    if len(candidates) == 1:
        return candidates[0]
    pickles = [p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES]
    if pickles:
        raise CheckpointError(f"{folder}: only pickle weights ({', '.join(pickles)}); they are never "
                              "loaded because unpickling can run code. Convert them to safetensors.")
    raise CheckpointError(f"{folder}: no {WEIGHT_FILE}")


def read_header(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """Tensor names -> (shape, dtype) from the safetensors header, without reading the data."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype())
                    for k in f.keys()}
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from err


def expected_tensors(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_keys(model: nn.Module, header: dict[str, tuple[tuple[int, ...], str]], source: str
               ) -> list[str]:
    """Compare a checkpoint with the model; returns the keys to load, raises on any mismatch."""
    expected = expected_tensors(model)
    ignored_prefixes = tuple(getattr(model, "training_only_prefixes", ()))
    optional = set(getattr(model, "optional_keys", ()))
    present = {k for k in header if not k.startswith(ignored_prefixes)}
    missing = sorted(k for k in expected if k not in present and k not in optional)
    unexpected = sorted(k for k in present if k not in expected)
    wrong = sorted(f"{k} (checkpoint {list(header[k][0])}, model {list(expected[k])})"
                   for k in present & expected.keys() if tuple(header[k][0]) != expected[k])
    problems = []
    if missing:
        problems.append(f"missing tensors: {_short_list(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {_short_list(unexpected)}")
    if wrong:
        problems.append(f"mis-shaped tensors: {_short_list(wrong)}")
    if problems:
        raise CheckpointError(f"{source}: weights do not match config.json; " + "; ".join(problems))
    return sorted(present & expected.keys())


def _short_list(items: list[str], limit: int = 6) -> str:
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def count_parameters(model: nn.Module) -> int:
    return sum(t.numel() for t in model.state_dict().values())


# --------------------------------------------------------------------------- building + loading
def build_on_meta(config: dict[str, Any], kind: Optional[str] = None) -> nn.Module:
    try:
        with torch.device("meta"):
            model = build_model(config, kind)
    except (ValueError, KeyError, TypeError, AssertionError, RuntimeError) as err:
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(f"invalid config: {type(err).__name__}: {err}") from err
    n = count_parameters(model)
    if n > MAX_PARAMETERS:
        raise CheckpointError(f"config describes a model of {n / 1e9:.1f}B parameters, above the "
                              f"{MAX_PARAMETERS / 1e9:.0f}B limit; refusing to allocate it")
    return model


def load_folder(folder: PathLike, kind: Optional[str] = None, device: DeviceLike = None,
                dtype: Optional[torch.dtype] = None, allow_local: bool = True) -> nn.Module:
    """Build the model a folder describes and fill its weights; strict about every tensor.

    ``allow_local`` governs a companion folder the config may name (FlexTok's VAE): a Hub id is
    always allowed, a local path only when the caller allows local paths."""
    from safetensors import safe_open

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
    model = build_on_meta(build_config, kind)
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
                own[k].copy_(f.get_tensor(k))
    for other in sorted({p for p, _ in elsewhere.values()}):
        with torch.no_grad(), safe_open(str(other), framework="pt", device="cpu") as f:
            for k, (p, name) in elsewhere.items():
                if p == other and k in own:
                    own[k].copy_(f.get_tensor(name))
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
    from .catalogue import CATALOGUE, find_entry

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
    from safetensors.torch import save_file

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
    from safetensors.torch import load_file

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
