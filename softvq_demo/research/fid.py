"""FID, Inception Score and precision/recall between two ADM-format ``.npz`` files.

The metrics come from torch-fidelity (``fid_statistics_to_metric``, ``isc_features_to_metric``,
``calculate_precision_recall_part``) on the features of its InceptionV3 port of the TF-slim
2015-12-05 graph, the network the ADM evaluator and the papers' numbers use. torchmetrics was the
other candidate: its ``FrechetInceptionDistance`` runs torch-fidelity's same Inception port, but
it has no precision/recall and keeps every feature inside a stateful metric object; torch-fidelity
gives all three metrics as plain functions of feature arrays, which is what we need to shard,
cache and test them (see docs/reproduce.md).

Definitions (named so the figures mean what they say):
- FID (Heusel et al. 2017): ‖μ₁−μ₂‖² + Tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½) on the 2048-d pool features,
  statistics in float64 from all images of each file.
- IS (Salimans et al. 2016): torch-fidelity's, 10 splits of the generated set, on the 1008-way
  logits without bias ("logits_unbiased"). ADM's evaluator uses 5,000-image splits instead.
- Precision / recall (Kynkäänniemi et al. 2019), k = 3, on the same 2048-d pool features, as the
  ADM evaluator does (torch-fidelity's own default would use VGG-16 features).

The Inception weights are downloaded on first use (torch hub cache). Offline, ``InceptionMissing``
says so in one line and the ``.npz`` files stay usable with the ADM evaluator.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from ..device import module_device, resolve_device

FeatureFn = Callable[[torch.Tensor], Union[torch.Tensor, tuple]]
INCEPTION_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                 "weights-inception-2015-12-05-6726825d.pth")
INCEPTION_SHA256_PREFIX = "6726825d"


class InceptionMissing(RuntimeError):
    """The Inception weights are not on this machine and could not be downloaded."""


# --------------------------------------------------------------------------- inputs
def load_images(path) -> np.ndarray:
    """``arr_0`` of an ADM ``.npz``: N×H×W×3 uint8 (checked)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with np.load(path, allow_pickle=False) as f:
        if "arr_0" not in f.files:
            raise ValueError(f"{path}: no arr_0 (an ADM .npz holds N×H×W×3 uint8 images in arr_0)")
        arr = f["arr_0"]
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"{path}: arr_0 is {arr.dtype} {arr.shape}, expected N×H×W×3 uint8")
    return arr


# --------------------------------------------------------------------------- the network
def inception_weights(download: bool = True) -> Path:
    """Path of torch-fidelity's Inception weights in the torch hub cache, fetched if allowed.

    The file is checked before torch-fidelity reads it: its SHA-256 prefix is the one in the
    released name, and it loads with ``torch.load(weights_only=True)`` (tensors only), so
    torch-fidelity's own unrestricted ``torch.load`` of the same file unpickles nothing else."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_URL.rsplit("/", 1)[1]
    if not path.is_file():
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("SOFTVQ_OFFLINE") == "1"
        if not download or offline:
            raise InceptionMissing(f"Inception weights not found at {path} (offline)")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(INCEPTION_URL, str(path), hash_prefix=INCEPTION_SHA256_PREFIX,
                                           progress=False)
        except Exception as err:  # no network, proxy, disk: one line, the npz is still written
            raise InceptionMissing(f"Inception weights could not be downloaded "
                                   f"({type(err).__name__}); put {INCEPTION_URL.rsplit('/', 1)[1]} in "
                                   f"{path.parent}") from None
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if not digest.startswith(INCEPTION_SHA256_PREFIX):
        raise InceptionMissing(f"{path}: checksum {digest[:8]} is not the released {INCEPTION_SHA256_PREFIX}")
    torch.load(path, map_location="cpu", weights_only=True)  # raises on anything but tensors
    return path


def inception(device: Union[str, torch.device] = "cpu", download: bool = True) -> FeatureFn:
    """uint8 B×3×H×W → (pool 2048-d, logits 1008) through torch-fidelity's InceptionV3."""
    # optional: torch-fidelity may be missing (the cli then prints "FID not computed")
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                      feature_extractor_weights_path=str(inception_weights(download)))
    return net.to(device).eval()


# --------------------------------------------------------------------------- features and stats
@torch.no_grad()
def features(images: np.ndarray, net: FeatureFn, batch_size: int = 200,
             device: Union[str, torch.device] = "cpu", progress: bool = False) -> dict[str, np.ndarray]:
    """``pool`` (and ``logits`` when the network gives them) as float64 arrays, in image order."""
    pools, logits = [], []
    for i in tqdm(range(0, len(images), batch_size), desc="features", unit="batch", disable=not progress):
        x = torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size])).permute(0, 3, 1, 2).to(device)
        out = net(x)
        out = out if isinstance(out, (tuple, list)) else (out,)
        pools.append(out[0].double().cpu())
        if len(out) > 1:
            logits.append(out[1].double().cpu())
    res = {"pool": torch.cat(pools).flatten(1).numpy()}
    if logits:
        res["logits"] = torch.cat(logits).numpy()
    return res


def statistics(pool: np.ndarray) -> dict[str, np.ndarray]:
    """Mean and covariance (float64, N−1 normalised as every FID tool) of N×D features."""
    f = np.asarray(pool, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors, got shape {f.shape}")
    return {"mu": f.mean(axis=0), "sigma": np.cov(f, rowvar=False)}


def frechet_distance(stats_1: dict, stats_2: dict) -> float:
    """torch-fidelity's Fréchet distance between two {mu, sigma} (float64)."""
    # optional: torch-fidelity (see inception)
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    s1 = {k: np.asarray(stats_1[k], dtype=np.float64) for k in ("mu", "sigma")}
    s2 = {k: np.asarray(stats_2[k], dtype=np.float64) for k in ("mu", "sigma")}
    return float(fid_statistics_to_metric(s1, s2, verbose=False)[KEY_METRIC_FID])


def inception_score(logits: np.ndarray, splits: int = 10) -> tuple[float, float]:
    # optional: torch-fidelity (see inception)
    from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric

    m = isc_features_to_metric(torch.from_numpy(np.asarray(logits)).float(), splits=splits)
    return float(m[KEY_METRIC_ISC_MEAN]), float(m[KEY_METRIC_ISC_STD])


def precision_recall(generated: np.ndarray, reference: np.ndarray, k: int = 3) -> tuple[float, float]:
    # optional: torch-fidelity (see inception)
    from torch_fidelity.metric_prc import calculate_precision_recall_part

    return calculate_precision_recall_part(torch.from_numpy(generated).float(),
                                           torch.from_numpy(reference).float(), neighborhood=k)


# --------------------------------------------------------------------------- the comparison
def compare(samples, reference, *, net: Optional[FeatureFn] = None, device=None, batch_size: int = 200,
            progress: bool = True) -> dict:
    """FID (and IS, precision/recall where the network gives logits / both sides have images)
    of ``samples`` (.npz path or N×H×W×3 uint8) against ``reference`` (.npz with ``arr_0``; an
    ADM reference batch also carries its own TF ``mu``/``sigma``, reported as ``fid_adm_stats``)."""
    if net is not None and device is None and isinstance(net, torch.nn.Module):
        dev = module_device(net)          # a given network runs where it lives
    else:
        dev = resolve_device(device)
    net = net if net is not None else inception(dev)
    gen = load_images(samples) if not isinstance(samples, np.ndarray) else samples
    ref = load_images(reference) if not isinstance(reference, np.ndarray) else reference
    fg = features(gen, net, batch_size, dev, progress)
    fr = features(ref, net, batch_size, dev, progress)
    res = dict(n_samples=int(len(gen)), n_reference=int(len(ref)),
               fid=frechet_distance(statistics(fg["pool"]), statistics(fr["pool"])))
    if "logits" in fg:
        res["inception_score"], res["inception_score_std"] = inception_score(fg["logits"])
    res["precision"], res["recall"] = precision_recall(fg["pool"], fr["pool"])
    if not isinstance(reference, np.ndarray):
        with np.load(reference, allow_pickle=False) as f:
            if "mu" in f.files and "sigma" in f.files and f["mu"].shape == fg["pool"].shape[1:]:
                res["fid_adm_stats"] = frechet_distance(statistics(fg["pool"]), {"mu": f["mu"], "sigma": f["sigma"]})
    return res
