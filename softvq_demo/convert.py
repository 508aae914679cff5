"""Convert pickled ``pytorch_model.bin`` releases (One-D-Piece) into our safetensors layout.

The One-D-Piece Hub repos hold only a pickle (``torch.save`` of a flat state dict) and no
config.json; the config is the GitHub YAML. This module is the one place that reads such a file,
and only through ``torch.load(..., weights_only=True)`` (PyTorch's restricted unpickler: tensors
and plain containers, never arbitrary objects). It checks every key and shape against the release
manifest (``releases/*.json``: the official classes' state-dict keys and the resolved YAML) and
writes ``config.json`` + ``model.safetensors`` (+ a README saying where they came from).

``python -m softvq_demo convert`` runs it; loading a release from the Hub runs that command once,
in a separate process, into a local cache (``ensure_converted``), so the app and
``load_tokenizer`` themselves never unpickle anything.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import huggingface_hub
import torch
import yaml
from huggingface_hub.utils import disable_progress_bars, enable_progress_bars
from safetensors.torch import save_file

from .weights import (CheckpointError, build_on_meta, check_keys, expected_tensors, read_header,
                      resolve_references)

RELEASES_DIR = Path(__file__).resolve().parent / "releases"
PICKLE_FILE = "pytorch_model.bin"
# Written by old transformers versions into BERT state dicts; current ones do not keep it.
DROPPABLE_KEYS = ("model.embeddings.position_ids",)

PathLike = Union[str, os.PathLike]


class ConversionError(ValueError):
    """A release file that cannot be converted; the message says which file and why."""


@dataclass(frozen=True)
class Release:
    name: str           # catalogue name
    repo_id: str        # Hugging Face Hub repo holding PICKLE_FILE
    kind: str           # "tokenizer" | "generator"
    manifest: str       # file under releases/: {"config", "keys", "training_only"}

    @property
    def manifest_path(self) -> Path:
        return RELEASES_DIR / self.manifest


def _onedpiece_releases() -> list[Release]:
    out = []
    for size in ("S", "B", "L"):
        s = size.lower()
        out.append(Release(f"one-d-piece-{s}-256", f"turing-motors/One-D-Piece-{size}-256", "tokenizer",
                           f"tokenizer_one-d-piece_{s}256.json"))
        out.append(Release(f"maskgit-one-d-piece-{s}-256", f"turing-motors/MaskGIT_One-D-Piece-{size}-256",
                           "generator", f"generator_maskgit_one-d-piece_{s}256.json"))
    return out


RELEASES: dict[str, Release] = {r.repo_id.lower(): r for r in _onedpiece_releases()}


def find_release(name_or_repo: str) -> Optional[Release]:
    key = str(name_or_repo).strip().lower()
    return RELEASES.get(key) or next((r for r in RELEASES.values() if r.name == key), None)


# --------------------------------------------------------------------------- reading the pickle
def read_state_dict(path: PathLike) -> dict[str, Any]:
    """A flat ``{name: tensor}`` dict from a torch.save file, through the restricted unpickler."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"WeightsUnpickler error:\s*(.*?)(?: was not an allowed|\n\n|$)", str(err), re.S)
        why = (found.group(1).strip() if found else "").splitlines()
        why = why[0][:160] if why else type(err).__name__
        if "Unsupported global" in why:
            raise ConversionError(f"{path.name}: refused: it holds objects other than tensors "
                                  f"({why}); it was not unpickled") from err
        raise ConversionError(f"{path.name}: not a readable PyTorch weights file, or it holds "
                              f"something other than tensors ({why})") from err
    except Exception as err:  # truncated or not a torch file at all
        first = (str(err).strip().splitlines() or [""])[0][:120]
        raise ConversionError(f"{path.name}: not a readable PyTorch weights file "
                              f"({type(err).__name__}{': ' + first if first else ''})") from err
    if not isinstance(obj, dict):
        raise ConversionError(f"{path.name}: expected a flat dict of tensors, got a "
                              f"{type(obj).__name__}")
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ConversionError(f"{path.name}: expected a flat dict of tensors; not a tensor: "
                              f"{', '.join(bad[:5])}")
    return obj


def check_state_dict(state: dict[str, Any], expected: dict[str, tuple[int, ...]], source: str) -> None:
    """Exactly the expected names with the expected shapes, or a ConversionError listing why."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(f"{k} (file {list(state[k].shape)}, release {list(expected[k])})"
                   for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k]))
    problems = [f"{what}: {', '.join(items[:6])}{f' (+{len(items) - 6} more)' if len(items) > 6 else ''}"
                for what, items in (("missing", missing), ("unexpected", unexpected),
                                    ("mis-shaped", wrong)) if items]
    if problems:
        raise ConversionError(f"{source}: tensors do not match the release; " + "; ".join(problems))


# --------------------------------------------------------------------------- configs
def read_manifest(path: PathLike) -> dict[str, Any]:
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict) \
            or not isinstance(data.get("keys"), dict):
        raise ConversionError(f"{path}: not a release manifest (needs 'config' and 'keys')")
    return data


def read_config_file(path: PathLike) -> dict[str, Any]:
    """A config.json, or the official OmegaConf YAML (read with yaml.safe_load)."""

    path = Path(path)
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        config = yaml.safe_load(text)
    else:
        config = json.loads(text)
    if not isinstance(config, dict):
        raise ConversionError(f"{path}: expected a mapping")
    return resolve_references(config)


def release_config(config: dict[str, Any], kind: str) -> dict[str, Any]:
    """Our config.json from the official experiment config: ``model`` and
    ``dataset.preprocessing``, with the inference flags every official script forces."""
    try:
        model = json.loads(json.dumps(config["model"]))
        vq = model["vq_model"]
        preprocessing = config.get("dataset", {}).get("preprocessing")
        if kind == "tokenizer" and not isinstance(preprocessing, dict):
            raise KeyError("dataset.preprocessing")
    except (KeyError, TypeError, AttributeError) as err:
        raise ConversionError(f"config lacks {err} (needs model.vq_model and, for a tokenizer, "
                              "dataset.preprocessing)") from err
    if kind == "tokenizer":
        model.pop("generator", None)
        vq.update(finetune_decoder=True, strict_length_assertion=False)
    out = {"model": model}
    if isinstance(preprocessing, dict):
        out["dataset"] = {"preprocessing": dict(preprocessing)}
    return out


def config_kind(config: dict[str, Any]) -> str:
    model = config.get("model")
    is_generator = isinstance(model, dict) and isinstance(model.get("generator"), dict)
    return "generator" if is_generator else "tokenizer"


def model_tensors(config: dict[str, Any], kind: str) -> dict[str, tuple[int, ...]]:
    """Inference tensors of the model our code builds from ``config`` (meta device, no memory)."""

    return expected_tensors(build_on_meta(config, kind))


def sha256_of(path: PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- conversion
def convert(bin_path: PathLike, out: PathLike, *, manifest: Optional[PathLike] = None,
            config: Optional[dict[str, Any]] = None, kind: Optional[str] = None,
            repo_id: Optional[str] = None, revision: Optional[str] = None) -> Path:
    """Convert one ``pytorch_model.bin`` into ``out/`` (config.json + model.safetensors).

    The expected tensors come from ``manifest`` (a release manifest) or, given only ``config``,
    from the model our code builds for it; either way the converted folder is then checked once
    more against our model so that ``load_tokenizer``/``load_generator`` accept it.
    """


    bin_path = Path(bin_path)
    expected = None
    if manifest is not None:
        data = read_manifest(manifest)
        skip = set(data.get("training_only") or ())
        expected = {k: tuple(v[0]) for k, v in data["keys"].items() if k not in skip}
        config = data["config"] if config is None else config
    if config is None:
        raise ConversionError("give a release manifest or a config")
    kind = kind or config_kind(config)
    ours = release_config(config, kind)
    try:
        expected = expected if expected is not None else model_tensors(ours, kind)
    except CheckpointError as err:
        raise ConversionError(str(err)) from err
    state = read_state_dict(bin_path)
    for k in DROPPABLE_KEYS:
        if k not in expected:
            state.pop(k, None)
    check_state_dict(state, expected, bin_path.name)

    ours["converted_from"] = {"file": bin_path.name, "sha256": sha256_of(bin_path),
                              **({"repo_id": repo_id} if repo_id else {}),
                              **({"revision": revision} if revision else {})}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.part-"))
    try:
        seen: set = set()
        tensors = {}
        for k, v in state.items():  # safetensors refuses shared storage: copy any that share
            ptr = (v.untyped_storage().data_ptr(), v.storage_offset()) if v.numel() else None
            tensors[k] = v.contiguous().clone() if ptr in seen else v.contiguous()
            if ptr is not None:
                seen.add(ptr)
        save_file(tensors, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(ours, indent=2) + "\n")
        (tmp / "README.md").write_text(
            f"Converted from `{repo_id or bin_path.name}` ({PICKLE_FILE}, sha256 "
            f"{ours['converted_from']['sha256']}) by `python -m softvq_demo convert`: the tensors "
            "unchanged, read with torch.load(weights_only=True), written as safetensors.\n")
        try:  # the folder must load as it is
            check_keys(build_on_meta(ours, kind), read_header(tmp / "model.safetensors"), out.name)
        except CheckpointError as err:
            raise ConversionError(str(err)) from err
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


# --------------------------------------------------------------------------- the Hub path
def cache_root(cache_dir: Optional[PathLike] = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir) / "softvq_demo-converted"
    env = os.environ.get("SOFTVQ_DEMO_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "softvq_demo" / "converted"


def converted_folder(release: Release, cache_dir: Optional[PathLike] = None) -> Path:
    return cache_root(cache_dir) / release.repo_id.replace("/", "--")


def is_converted(release: Release, cache_dir: Optional[PathLike] = None) -> bool:
    """Already converted into the local cache (so it loads offline)."""
    target = converted_folder(release, cache_dir)
    return (target / "config.json").is_file() and (target / "model.safetensors").is_file()


def download_release(release: Release, *, cache_dir: Optional[PathLike] = None,
                     progress: bool = True) -> Path:
    """The release's pickle, fetched into the Hub cache (not opened here)."""

    try:
        (enable_progress_bars if progress else disable_progress_bars)()
        return Path(huggingface_hub.hf_hub_download(release.repo_id, PICKLE_FILE, cache_dir=cache_dir))
    except Exception as err:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        why = "offline (HF_HUB_OFFLINE is set) and not in the local cache" if offline else \
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        raise CheckpointError(f"could not get {release.repo_id!r} from the Hugging Face Hub: {why}") from err


def ensure_converted(release: Release, *, cache_dir: Optional[PathLike] = None, progress: bool = True,
                     timeout: float = 3600) -> Path:
    """The converted folder of a Hub release: from the cache, or downloaded and converted once by
    ``python -m softvq_demo convert`` in a child process (this process never unpickles)."""

    target = converted_folder(release, cache_dir)
    if is_converted(release, cache_dir):
        return target
    bin_path = download_release(release, cache_dir=cache_dir, progress=progress)
    cmd = [sys.executable, "-m", "softvq_demo", "convert", str(bin_path), "--manifest",
           str(release.manifest_path), "--kind", release.kind, "--out", str(target),
           "--repo-id", release.repo_id]
    try:
        root = str(Path(__file__).resolve().parent.parent)
        path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": path}
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as err:
        raise CheckpointError(f"converting {release.repo_id} took longer than {timeout:.0f} s") from err
    if done.returncode != 0:
        lines = [ln for ln in (done.stderr or "").splitlines() if ln.strip()]
        raise CheckpointError(f"could not convert {release.repo_id}: "
                              f"{lines[-1] if lines else f'exit status {done.returncode}'}")
    return target


def main_convert(args) -> None:
    """``python -m softvq_demo convert SOURCE``: SOURCE is a .bin file, or a release's catalogue
    name / Hub repo id (downloaded first)."""
    release = find_release(args.source)
    if release is not None and not Path(args.source).is_file():
        bin_path = download_release(release)
        manifest, kind, repo_id = release.manifest_path, release.kind, release.repo_id
    else:
        bin_path, repo_id = Path(args.source), args.repo_id
        named = find_release(args.release) if args.release else None
        if args.release and named is None:
            raise ConversionError(f"unknown release {args.release!r}: "
                                  f"{', '.join(r.name for r in RELEASES.values())}")
        manifest = args.manifest or (named.manifest_path if named else None)
        kind = args.kind or (named.kind if named else None)
        repo_id = repo_id or (named.repo_id if named else None)
    config = read_config_file(args.config) if args.config else None
    if manifest is None and config is None:
        raise ConversionError("say what the file is: --release NAME, --manifest FILE or --config FILE")
    out = Path(args.out) if args.out else Path(bin_path.stem + "-converted")
    revision = args.revision or (bin_path.parent.name if bin_path.parent.parent.name == "snapshots"
                                 else None)  # huggingface_hub's cache: snapshots/<commit>/
    convert(bin_path, out, manifest=manifest, config=config, kind=kind, repo_id=repo_id,
            revision=revision)
    print(f"{bin_path.name} -> {out}/ (config.json, model.safetensors)")


def add_parser(sub) -> None:
    conv = sub.add_parser("convert", help="convert a pickled pytorch_model.bin release to safetensors")
    conv.add_argument("source", help="a .bin file, or a release name / Hub id (e.g. one-d-piece-s-256)")
    conv.add_argument("--out", default=None, help="output folder (default: <file>-converted)")
    conv.add_argument("--release", default=None, help="which release the .bin is (its manifest is "
                      "used to check every key and shape)")
    conv.add_argument("--manifest", default=None, help="a release manifest JSON instead of --release")
    conv.add_argument("--config", default=None, help="config.json or the official YAML (keys are "
                      "then checked against the model it describes)")
    conv.add_argument("--kind", choices=("tokenizer", "generator"), default=None)
    conv.add_argument("--repo-id", default=None, help="recorded in config.json")
    conv.add_argument("--revision", default=None, help="recorded in config.json")


__all__ = ["convert", "ensure_converted", "find_release", "read_state_dict", "check_state_dict",
           "ConversionError", "RELEASES", "Release"]
