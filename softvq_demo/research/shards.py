"""Work split by rank, one file per chunk, resumable, and outputs that do not depend on the
number of processes.

The N items of a job are cut into chunks of ``batch_size`` consecutive global indices; chunk ``c``
goes to rank ``c % world_size``. Each finished chunk is written atomically (temp file, then
rename) to ``<out>/shards/``, so a killed run leaves only whole chunks and a rerun with the same
settings skips them. When every rank is done, rank 0 joins the chunks in index order into one
``.npz``. All randomness is seeded from (seed, global index) or (seed, chunk start) — see
``index_seed`` — never from the rank, so 1 or 8 processes write the same bytes.

``.npz`` files are written with fixed zip timestamps (``write_npz``): numpy's ``savez`` stamps the
current time, which would make two identical runs differ byte for byte.
"""
from __future__ import annotations

import contextlib
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
import torch.distributed as tdist

from ..device import resolve_device

SETTINGS_FILE = "settings.json"
SHARDS_DIR = "shards"


# --------------------------------------------------------------------------- seeds
def index_seed(seed: int, stream: int, index: int) -> int:
    """A 63-bit seed for one (seed, stream, index): NumPy's SeedSequence mixes the three, so
    neighbouring indices get unrelated streams (stream 0: noise, 1: labels, 2: chunk sampler)."""
    state = np.random.SeedSequence([int(seed), int(stream), int(index)]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def index_generator(seed: int, stream: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed(index_seed(seed, stream, index))


# --------------------------------------------------------------------------- processes
@dataclass(frozen=True)
class Dist:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    initialized: bool  # a process group exists (torchrun with more than one process)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.initialized:
            if tdist.get_backend() == "nccl":
                tdist.barrier(device_ids=[self.device.index or 0])
            else:
                tdist.barrier()

    def close(self) -> None:
        if self.initialized:
            tdist.destroy_process_group()


def init_dist(device: Optional[str] = None) -> Dist:
    """Rank, world size and device from torchrun's environment (a single process without it).

    On CUDA each rank takes ``cuda:LOCAL_RANK`` and the group talks NCCL; on the CPU, gloo. The
    collectives are only barriers: every rank writes its own chunks to the shared folder."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda" and dev.index is None:
        if local >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA device(s)")
        dev = torch.device("cuda", local)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    initialized = False
    if world > 1:
        if not tdist.is_initialized():
            tdist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        initialized = True
    return Dist(rank, world, local, dev, initialized)


# --------------------------------------------------------------------------- chunks
def chunks(n: int, batch_size: int) -> list[tuple[int, int]]:
    """[(start, stop)] covering 0..n in order, every chunk ``batch_size`` long but the last."""
    if n < 1:
        raise ValueError(f"the number of images must be at least 1, got {n}")
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    return [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]


def shard_path(out: Path, start: int, stop: int) -> Path:
    return out / SHARDS_DIR / f"{start:08d}-{stop:08d}.npz"


def read_shard(path: Path) -> Optional[dict]:
    """The arrays of a finished chunk, or None when missing or unreadable (then it is redone)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError):
        return None


def my_chunks(all_chunks: list[tuple[int, int]], dist: Dist, out: Path) -> Iterator[tuple[int, int]]:
    """This rank's chunks (round-robin) that no earlier run finished."""
    for c, (start, stop) in enumerate(all_chunks):
        if c % dist.world_size == dist.rank and read_shard(shard_path(out, start, stop)) is None:
            yield start, stop


def write_npz(path: Path, **arrays: np.ndarray) -> Path:
    """``np.savez`` with fixed timestamps, written to a temp file then renamed (atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(arr), allow_pickle=False)
    os.replace(tmp, path)
    return path


def join_shards(out: Path, all_chunks: list[tuple[int, int]], keys: tuple[str, ...]) -> dict:
    """Concatenate every chunk's arrays in index order (all chunks must exist)."""
    parts: dict[str, list] = {k: [] for k in keys}
    for start, stop in all_chunks:
        shard = read_shard(shard_path(out, start, stop))
        if shard is None:
            raise RuntimeError(f"chunk {start}-{stop} is missing from {out / SHARDS_DIR}")
        for k in keys:
            parts[k].append(shard[k])
    return {k: np.concatenate(v) for k, v in parts.items()}


# --------------------------------------------------------------------------- settings
def check_settings(out: Path, identity: dict) -> None:
    """Refuse to mix chunks made with other settings into this output folder."""
    path = out / SETTINGS_FILE
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text()).get("identity")
    except (OSError, ValueError):
        old = None
    if old is not None and old != json.loads(json.dumps(identity)):
        diff = sorted(k for k in set(old) | set(identity) if old.get(k) != identity.get(k))
        raise ValueError(f"{out} holds a run with other settings ({', '.join(diff)} differ): "
                         "use another --out folder or delete it")


def write_settings(out: Path, identity: dict, **extra) -> Path:
    path = out / SETTINGS_FILE
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"identity": identity, **extra}, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


@contextlib.contextmanager
def distributed(device: Optional[str] = None):
    dist = init_dist(device)
    try:
        yield dist
    finally:
        dist.close()
