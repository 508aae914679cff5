"""Models loaded once and shared by every user of the app (thread-safe).

The manager holds tokenizers and generators by display name, loads catalogue models on request
(browser requests may name only catalogue entries: never a local path), and caches per-model
derived data (dataset-mean latents, encoded image sets).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
from huggingface_hub import try_to_load_from_cache

from ..analysis.latent_map import LRUCache
from ..catalogue import find_entry
from ..convert import find_release, is_converted
from ..device import resolve_device
from ..loading import load_generator, load_tokenizer
from ..sampling import check_pair

log = logging.getLogger("softvq_demo.ui")


@dataclass
class Loaded:
    name: str
    kind: str            # "tokenizer" | "generator"
    model: torch.nn.Module
    source: str
    seconds: float
    extras: dict = field(default_factory=dict)


def is_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false", "no")


class ModelManager:
    """Shared model store. ``load`` is serialised by a lock; lookups are lock-free reads."""

    def __init__(self, device: Optional[str] = None, dtype: Optional[torch.dtype] = None):
        self.device = resolve_device(device)
        self.dtype = dtype
        self._models: dict[str, Loaded] = {}
        self._lock = threading.RLock()
        self.cache = LRUCache(64)       # (model name, what) -> derived data
        self.messages: list[str] = []   # start-up notes shown in the UI

    # ------------------------------------------------------------------ loading
    def load(self, source: str, kind: str, *, allow_local: bool = True, name: Optional[str] = None,
             progress: Optional[Callable[[float, str], None]] = None) -> Loaded:
        """Load (or return the already-loaded) model. ``allow_local=False`` for browser requests."""
        source = str(source).strip()
        if not source:
            raise ValueError("no model name given")
        if not allow_local and find_entry(source) is None:
            raise ValueError(f"{source!r} is not a catalogue model; only catalogue names can be "
                             "loaded from the browser (start the app with --tokenizer/--generator "
                             "for local folders)")
        entry = find_entry(source)
        display = name or (entry.name if entry is not None else _display_name(source))
        with self._lock:
            if display in self._models:
                return self._models[display]
            if (entry is not None and entry.local_path is None and is_offline()
                    and not _in_hub_cache(entry.repo_id)):
                raise ValueError(f"{entry.name} is not downloaded yet and the app is offline "
                                 "(HF_HUB_OFFLINE is set); connect to the internet or pre-download "
                                 f"{entry.repo_id}")
            if progress:
                progress(0.05, f"resolving {source}")
            fn = load_tokenizer if kind == "tokenizer" else load_generator
            t0 = time.perf_counter()
            kwargs = {} if allow_local else {"allow_local": False}
            model = fn(source, device=self.device, dtype=self.dtype, **kwargs)
            seconds = time.perf_counter() - t0
            if progress:
                progress(1.0, f"loaded {display}")
            item = Loaded(display, kind, model, source, seconds)
            self._models[display] = item
            log.info("loaded %s %s from %s in %.2f s", kind, display, source, seconds)
            return item

    def add(self, name: str, kind: str, model: torch.nn.Module, source: str = "memory") -> Loaded:
        with self._lock:
            item = Loaded(name, kind, model, source, 0.0)
            self._models[name] = item
            return item

    # ------------------------------------------------------------------ lookups
    def names(self, kind: str) -> list[str]:
        return [n for n, m in self._models.items() if m.kind == kind]

    def get(self, name: Optional[str], kind: str) -> torch.nn.Module:
        if not name:
            available = ", ".join(self.names(kind)) or "none loaded"
            raise ValueError(f"no {kind} selected (available: {available})")
        item = self._models.get(name)
        if item is None or item.kind != kind:
            raise ValueError(f"no {kind} named {name!r} is loaded")
        return item.model

    def tokenizer(self, name: Optional[str]):
        return self.get(name, "tokenizer")

    def generator(self, name: Optional[str]):
        return self.get(name, "generator")

    def info(self, name: str) -> Optional[Loaded]:
        return self._models.get(name)

    def cached(self, key, fn):
        """Compute-once per key (under the lock so two users don't compute it twice)."""
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        with self._lock:
            hit = self.cache.get(key)
            if hit is not None:
                return hit
            return self.cache.put(key, fn())

    def pair_tokenizer(self, gen_name: str) -> Optional[str]:
        """A loaded tokenizer this generator can feed: the catalogue pair first, then any match."""
        gen = self.generator(gen_name)
        entry = find_entry(gen_name)
        if entry is not None and entry.pair in self._models:
            return entry.pair
        for n in self.names("tokenizer"):
            try:
                check_pair(self.tokenizer(n), gen)
                return n
            except ValueError:
                continue
        return None

    def summary(self) -> str:
        rows = []
        for n, m in self._models.items():
            rows.append(f"- **{n}** ({m.kind}): {m.model.describe()} · from `{_short(m.source)}` "
                        f"· loaded in {m.seconds:.1f} s")
        return "\n".join(rows) or "_no models loaded_"


def _display_name(source: str) -> str:
    p = Path(source)
    if p.exists():
        return p.resolve().name
    return source.rstrip("/").split("/")[-1]


def _short(source: str) -> str:
    s = str(source)
    return s if len(s) < 60 else "…" + s[-57:]


def _in_hub_cache(repo_id: Optional[str]) -> bool:
    if not repo_id:
        return False
    if find_release(repo_id) is not None:  # a pickle release: its converted copy is what loads
        return is_converted(find_release(repo_id))
    try:
        res = try_to_load_from_cache(repo_id, "config.json")
        return isinstance(res, str)
    except Exception:
        return False
