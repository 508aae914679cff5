"""The checkpoint format every model of the project is read from, and its strict checks.

A model folder is ``config.json`` + ``model.safetensors`` (the Hugging Face Hub layout). Here: the
config (with OmegaConf-style ``${...}`` references resolved and bounded), the safetensors header
(names, shapes, dtypes without reading the data), the key-by-key comparison with the model the
config describes, the finiteness check of each tensor, and the build on the meta device that
refuses an absurd config before any memory is allocated. ``loading`` (sources, the Hub, filling
the weights) and ``convert`` (pickle-only releases) both stand on this module.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Collection, Optional, Union

import torch
from safetensors import safe_open
from torch import nn

from .models import build_model

# Far above SoftVQ-L (~600M with its training-only DINOv2) and SiT-XL (~675M); below anything that
# would exhaust a Space's memory. A config beyond it is treated as a memory bomb.
MAX_PARAMETERS = 3_000_000_000
WEIGHT_FILE = "model.safetensors"
DIFFUSERS_WEIGHT_FILE = "diffusion_pytorch_model.safetensors"  # VAE repos (FlexTok's) in diffusers layout
CONFIG_FILE = "config.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")

PathLike = Union[str, os.PathLike]


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message says which file or tensor and why."""


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
    try:
        return resolve_references(config)
    except ValueError as err:
        raise CheckpointError(f"{config_path}: {err}") from err


# OmegaConf interpolations as the official TiTok/MaskGIT ``save_pretrained`` leaves them
# (``OmegaConf.to_container`` unresolved): "${model.vq_model.num_latent_tokens}".
_REFERENCE = re.compile(r"(\\)?\$\{([^${}]*)\}")
MAX_INTERPOLATED_CHARS = 100_000  # a config whose strings double at every reference is refused


def resolve_references(config: dict[str, Any]) -> dict[str, Any]:
    """Resolve ``${dotted.path}`` references within a config, as OmegaConf does.

    ``${a.b}`` is absolute, ``${.b}`` / ``${..b}`` relative to the key's own node / its parent;
    numeric parts index lists; a string that is exactly one reference takes the referenced value
    (type kept: an int stays an int), references inside longer strings are formatted in;
    ``\\${...}`` stays literal. Resolvers (``${oc.env:HOME}``), nested references and cycles are
    refused with the name of the key, as is a reference to a key that does not exist.
    """
    done: dict[tuple, Any] = {}
    active: list[tuple] = []

    def name(path: tuple) -> str:
        return ".".join(map(str, path)) or "<root>"

    def node_at(path: tuple, key: tuple, ref: str) -> Any:
        node = config
        for i, part in enumerate(path):
            if isinstance(node, dict) and isinstance(part, str) and part in node:
                node = node[part]
            elif isinstance(node, list) and str(part).isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise ValueError(f"{name(key)} refers to ${{{ref}}}, but {name(path[:i + 1])} "
                                 "does not exist")
        return resolved(node, path)

    def target(ref: str, key: tuple) -> Any:
        if ":" in ref:
            raise ValueError(f"{name(key)}: resolver ${{{ref}}} is not supported (only "
                             "${dotted.path} references)")
        body = ref.strip()
        if body.startswith("."):  # relative: one dot = the key's own node, each more = one up
            dots = len(body) - len(body.lstrip("."))
            base = key[:-1][:max(0, len(key) - dots)] if dots <= len(key) else None
            if base is None:
                raise ValueError(f"{name(key)}: ${{{ref}}} goes above the root")
            body = body[dots:]
        else:
            base = ()
        parts = tuple(p for p in body.split(".")) if body else ()
        if any(not p for p in parts):
            raise ValueError(f"{name(key)}: malformed reference ${{{ref}}}")
        return node_at(base + parts, key, ref)

    def interpolate(text: str, key: tuple) -> Any:
        whole = _REFERENCE.fullmatch(text)
        if whole and not whole.group(1):
            return target(whole.group(2), key)

        def one(m: re.Match) -> str:
            if m.group(1):  # escaped
                return "${" + m.group(2) + "}"
            value = target(m.group(2), key)
            if isinstance(value, (dict, list)):
                raise ValueError(f"{name(key)}: ${{{m.group(2)}}} is a container, not a value "
                                 "to put inside a string")
            return str(value)

        if "${" in _REFERENCE.sub("", text):
            raise ValueError(f"{name(key)}: unsupported reference in {text[:80]!r} (nested or "
                             "unterminated)")
        out = _REFERENCE.sub(one, text)
        if len(out) > MAX_INTERPOLATED_CHARS:
            raise ValueError(f"{name(key)}: interpolated string longer than "
                             f"{MAX_INTERPOLATED_CHARS} characters")
        return out

    def resolved(value: Any, path: tuple) -> Any:
        if path in done:
            return done[path]
        if not isinstance(value, (dict, list)) and not (isinstance(value, str) and "${" in value):
            return value
        if path in active:
            chain = " -> ".join(name(p) for p in active[active.index(path):] + [path])
            raise ValueError(f"circular reference: {chain}")
        active.append(path)
        try:
            if isinstance(value, dict):
                out: Any = {k: resolved(v, path + (k,)) for k, v in value.items()}
            elif isinstance(value, list):
                out = [resolved(v, path + (str(i),)) for i, v in enumerate(value)]
            else:
                out = interpolate(value, path)
        finally:
            active.pop()
        done[path] = out
        return out

    result = resolved(config, ())
    _check_expanded_size(result, MAX_CONFIG_NODES)
    return result


MAX_CONFIG_NODES = 200_000


def _check_expanded_size(value: Any, limit: int) -> None:
    """References may share one sub-tree many times; refuse a config that would expand (when
    written out again) beyond ``limit`` values. Stops counting as soon as the limit is passed."""
    count, stack = 0, [value]
    while stack:
        node = stack.pop()
        count += 1
        if count > limit:
            raise ValueError(f"config expands to more than {limit} values through its references")
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


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


def check_finite(tensor: torch.Tensor, name: str, path: PathLike) -> None:
    """Refuse a weight with NaN or ±inf (one pass while it is read; NaN weights used to load and
    then decode to garbage or fail with an unrelated index error)."""
    if tensor.is_floating_point() or tensor.is_complex():
        bad = int((~torch.isfinite(tensor)).sum())
        if bad:
            raise CheckpointError(f"{path}: tensor {name} has {bad} non-finite value"
                                  f"{'s' if bad > 1 else ''} (NaN or inf) of {tensor.numel()}")


def count_parameters(model: nn.Module) -> int:
    return sum(t.numel() for t in model.state_dict().values())


# --------------------------------------------------------------------------- building
def build_on_meta(config: dict[str, Any], kind: Optional[str] = None,
                  tensor_names: Optional[Collection[str]] = None) -> nn.Module:
    try:
        with torch.device("meta"):
            model = build_model(config, kind, tensor_names)
    except (ValueError, KeyError, TypeError, AssertionError, RuntimeError) as err:
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(f"invalid config: {type(err).__name__}: {err}") from err
    n = count_parameters(model)
    if n > MAX_PARAMETERS:
        raise CheckpointError(f"config describes a model of {n / 1e9:.1f}B parameters, above the "
                              f"{MAX_PARAMETERS / 1e9:.0f}B limit; refusing to allocate it")
    return model
