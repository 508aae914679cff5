"""A 2-D map of the latent space: encode a set of images and project their tokens.

Two views: ``image`` (one point per image: its tokens concatenated, or mean-pooled) and
``token`` (one point per token, coloured by token index or by the image's class). Projections:
PCA (instant, exact) or UMAP (slower, keeps neighbourhoods). Results are cached by key.
"""
from __future__ import annotations

import hashlib
import io
import threading
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
from sklearn.decomposition import PCA
from sklearn.neighbors import NearestNeighbors
import torch

from ..cancel import raise_if_cancelled
from .codec import encode

METHODS = ("pca", "umap")
VIEWS = ("image", "token")
COLOR_BY = ("token", "class", "image")
ProgressFn = Optional[Callable[[float, str], None]]


def encode_set(tok, images: torch.Tensor, batch_size: int = 64,
               progress: ProgressFn = None) -> torch.Tensor:
    """Latents M×N×D of M images (float32 CPU), encoded in batches with progress callbacks."""
    if images.shape[0] == 0:
        raise ValueError("no images to encode")
    parts = []
    m = images.shape[0]
    for start in range(0, m, batch_size):
        raise_if_cancelled()
        parts.append(encode(tok, images[start:start + batch_size], batch_size).latents)
        if progress is not None:
            progress(min(1.0, (start + batch_size) / m), f"encoded {min(m, start + batch_size)}/{m}")
    return torch.cat(parts)


def features(latents: torch.Tensor, view: str = "image", pool: str = "concat"
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points to project. Returns (X, image_index, token_index).

    view ``image``: one row per image — ``pool`` ``concat`` (all tokens, N·D dims: keeps which token
    holds what) or ``mean`` (D dims). view ``token``: one row per (image, token), D dims.
    token_index is -1 for image rows.
    """
    m, n, d = latents.shape
    lat = latents.float()
    if view == "image":
        x = lat.reshape(m, n * d) if pool == "concat" else lat.mean(1)
        return x.numpy(), np.arange(m), np.full(m, -1)
    if view == "token":
        x = lat.reshape(m * n, d)
        return x.numpy(), np.repeat(np.arange(m), n), np.tile(np.arange(n), m)
    raise ValueError(f"unknown view {view!r}: use 'image' or 'token'")


def principal_projection(x: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Rows of ``x`` on their top-``k`` principal axes (M×k), by scikit-learn's randomized PCA:
    k ≪ D here (2, or 50 before UMAP), where it is as good as the exact SVD and much faster."""
    x = np.asarray(x, np.float64)
    k = min(k, x.shape[0], x.shape[1])
    return PCA(n_components=k, svd_solver="randomized", random_state=seed).fit_transform(x)


def pca_2d(x: np.ndarray) -> np.ndarray:
    """2-D PCA of the rows of ``x``."""
    x = np.asarray(x, np.float64)
    if x.shape[0] < 2:
        return np.zeros((x.shape[0], 2), np.float32)
    y = principal_projection(x, 2)
    if y.shape[1] < 2:
        y = np.pad(y, ((0, 0), (0, 2 - y.shape[1])))
    return y.astype(np.float32)


UMAP_MAX_POINTS = 10_000      # per-token maps of more points are subsampled (seeded) for UMAP
UMAP_EPOCHS = 200             # umap-learn's own default is 500 below 10,000 points


def umap_epochs(m: int) -> int:
    return UMAP_EPOCHS if m <= UMAP_MAX_POINTS else 100


def umap_2d(x: np.ndarray, n_neighbors: int = 15, min_dist: float = 0.1, seed: int = 0,
            n_epochs: Optional[int] = None) -> np.ndarray:
    """UMAP to 2-D, made fast on a CPU: PCA to 50 dims first when wider; exact k-nearest
    neighbours from scikit-learn (instead of pynndescent, whose JIT compile costs seconds); PCA
    initialisation (the spectral one took most of the 70 s of a 6,400-point map on 2 cores);
    ``n_epochs`` :func:`umap_epochs` (200)."""
    x = np.asarray(x, np.float32)
    m = x.shape[0]
    if m < 4:
        return pca_2d(x)
    if x.shape[1] > 50 and m > 50:
        x = principal_projection(x, 50, seed).astype(np.float32)
    import umap  # heavy: umap/numba take ~2 s to import (measured), only when a UMAP is asked for

    k = int(min(max(2, n_neighbors), m - 1))
    dist, idx = NearestNeighbors(n_neighbors=k).fit(x).kneighbors(x)   # includes each point itself
    reducer = umap.UMAP(n_components=2, n_neighbors=k, min_dist=float(min_dist),
                        random_state=int(seed), n_jobs=1, init="pca" if m > 20 else "random",
                        n_epochs=int(n_epochs or umap_epochs(m)),
                        precomputed_knn=(idx.astype(np.int32), dist.astype(np.float32), None),
                        tqdm_kwds=_cancellable_epochs())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # "n_jobs overridden by random_state", no search index
        return reducer.fit_transform(x).astype(np.float32)


def warm_umap() -> float:
    """Fit a tiny UMAP once so that numba compiles its kernels (about 10 s of CPU the first time in
    a process); call it in a background thread at start-up. Returns the seconds it took."""
    t0 = time.perf_counter()
    umap_2d(np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32), n_epochs=5)
    return time.perf_counter() - t0


def _cancellable_epochs() -> dict:
    """tqdm settings for UMAP's epoch loop (its one Python loop) whose hidden bar checks for
    cancellation each time it would redraw (every 0.2 s)."""
    class CheckOnWrite(io.StringIO):
        raised = False

        def write(self, text):
            if not self.raised:
                self.raised = True
                raise_if_cancelled()
                self.raised = False
            return len(text)

    return {"disable": False, "file": CheckOnWrite(), "mininterval": 0.2}


def project(x: np.ndarray, method: str = "pca", seed: int = 0, n_neighbors: int = 15) -> np.ndarray:
    if method == "pca":
        return pca_2d(x)
    if method == "umap":
        return umap_2d(x, n_neighbors=n_neighbors, seed=seed)
    raise ValueError(f"unknown projection {method!r}: use 'pca' or 'umap'")


@dataclass
class LatentMap:
    coords: np.ndarray            # P×2
    image_index: np.ndarray       # P
    token_index: np.ndarray       # P (-1 for image points)
    view: str
    method: str
    seconds: float
    labels: Optional[list] = None     # per image (class names), optional
    captions: Optional[list] = None   # per image (e.g. file names / texts), optional
    extras: dict = field(default_factory=dict)


def latent_map(latents: torch.Tensor, view: str = "image", method: str = "pca", *, pool: str = "concat",
               seed: int = 0, labels: Optional[Sequence] = None, captions: Optional[Sequence] = None,
               max_points: int = 60_000) -> LatentMap:
    """Project latents (M×N×D) to 2-D."""
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}: use one of {', '.join(VIEWS)}")
    if method not in METHODS:
        raise ValueError(f"unknown projection {method!r}: use one of {', '.join(METHODS)}")
    x, img_idx, tok_idx = features(latents, view, pool)
    total = x.shape[0]
    limit = min(max_points, UMAP_MAX_POINTS) if method == "umap" else max_points
    if total > limit:
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(total, limit, replace=False))
        x, img_idx, tok_idx = x[keep], img_idx[keep], tok_idx[keep]
    t0 = time.perf_counter()
    coords = project(x, method, seed)
    seconds = time.perf_counter() - t0
    note = f"{x.shape[0]:,} of {total:,} points" + (" (random subsample)" if x.shape[0] < total else "")
    if method == "umap":
        note += f"; UMAP: exact 15-NN, PCA init, {umap_epochs(x.shape[0])} epochs"
    note += f"; {seconds:.1f} s"
    return LatentMap(coords=coords, image_index=img_idx, token_index=tok_idx, view=view,
                     method=method, seconds=seconds,
                     labels=list(labels) if labels is not None else None,
                     captions=list(captions) if captions is not None else None,
                     extras=dict(note=note, points=int(x.shape[0]), total_points=int(total)))


def scatter_figure(lm: LatentMap, color_by: str = "token", title: Optional[str] = None):
    """Plotly scatter of a latent map; ``customdata[0]`` of each point is its image index (used by
    the app to show the image when a point is clicked). color_by: token | class | image.

    Raises ValueError (a message for the user) for "token" on a pooled map (one point per image
    has no token) and for "class" without labels — never a silent fallback to another colouring.
    Classes get distinct colours from a 24-colour qualitative palette."""
    # plotly only for figures: analysis/ imports without it (the GPU machines have none)
    import plotly.graph_objects as go
    from plotly.colors import qualitative

    if color_by not in COLOR_BY:
        raise ValueError(f"unknown colouring {color_by!r}: use one of {', '.join(COLOR_BY)}")
    if color_by == "token" and lm.view != "token":
        raise ValueError("colour by token needs the per-token view: this map has one pooled point "
                         "per image; choose the per-token view, or colour by class or image")
    if color_by == "class" and lm.labels is None:
        raise ValueError("colour by class needs class labels, and this image set has none; "
                         "colour by image (or token) instead")
    labels = lm.labels
    img = lm.image_index
    caps = lm.captions
    hover_class = [str(labels[i]) if labels is not None else "" for i in img]
    hover_cap = [str(caps[i]) if caps is not None else "" for i in img]
    custom = np.stack([img, lm.token_index, np.array(hover_class, dtype=object),
                       np.array(hover_cap, dtype=object)], -1)
    tmpl = ("image %{customdata[0]}" + ("<br>token %{customdata[1]}" if lm.view == "token" else "")
            + ("<br>class %{customdata[2]}" if labels is not None else "")
            + ("<br>%{customdata[3]}" if caps is not None else "") + "<extra></extra>")
    fig = go.Figure()
    if color_by == "class":
        classes = sorted({str(c) for c in labels})
        palette = qualitative.Dark24 if len(classes) > 10 else qualitative.D3
        for ci, c in enumerate(classes):
            sel = np.array([str(labels[i]) == c for i in img])
            fig.add_trace(go.Scattergl(x=lm.coords[sel, 0], y=lm.coords[sel, 1], mode="markers",
                                       name=c, customdata=custom[sel], hovertemplate=tmpl,
                                       marker=dict(size=6 if lm.view == "image" else 4,
                                                   color=palette[ci % len(palette)])))
    else:
        if color_by == "token":
            color, cname = lm.token_index, "token"
        else:
            color, cname = img, "image"
        fig.add_trace(go.Scattergl(
            x=lm.coords[:, 0], y=lm.coords[:, 1], mode="markers", customdata=custom,
            hovertemplate=tmpl, showlegend=False,
            marker=dict(size=7 if lm.view == "image" else 4, color=color, colorscale="Turbo",
                        showscale=True, colorbar=dict(title=cname), opacity=0.85)))
    n_img = int(img.max()) + 1 if img.size else 0
    fig.update_layout(
        title=title or (f"{lm.method.upper()} of {n_img} images, "
                        f"{'pooled per image' if lm.view == 'image' else 'one point per token'} "
                        f"({lm.seconds:.2f} s)"),
        height=520, margin=dict(l=40, r=20, t=50, b=40), clickmode="event+select",
        xaxis_title=f"{lm.method}-1", yaxis_title=f"{lm.method}-2", dragmode="pan")
    return fig


def tensor_key(t: torch.Tensor) -> str:
    """A cheap content hash of a tensor (for cache keys)."""
    a = t.detach().float().cpu().contiguous().numpy()
    h = hashlib.sha1()
    h.update(str(a.shape).encode())
    h.update(a[:: max(1, a.shape[0] // 64)].tobytes())
    h.update(np.float64(a.sum()).tobytes())
    return h.hexdigest()[:16]


class LRUCache:
    """A small thread-safe LRU cache (for encoded sets and projections).

    Not functools.lru_cache (that memoises one function; this is a store shared by many keys and
    callers, with explicit put) nor cachetools.LRUCache (it would still need this lock and these
    hit counts, and a dependency for 30 lines)."""

    def __init__(self, capacity: int = 16):
        self.capacity = capacity
        self._data: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key):
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                self.hits += 1
                return self._data[key]
            self.misses += 1
            return None

    def put(self, key, value):
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.capacity:
                self._data.popitem(last=False)
        return value

    def get_or_compute(self, key, fn):
        hit = self.get(key)
        if hit is not None:
            return hit, True
        return self.put(key, fn()), False

    def __len__(self):
        return len(self._data)
