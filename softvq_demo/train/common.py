"""Training plumbing shared by the tokenizer and generator trainers.

- ``Dist``: single process or torchrun/DDP (``WORLD_SIZE > 1``), one GPU per rank.
- ``RenderStream`` + ``GPUReplay``: DataLoader workers render textscenes on the fly; the main loop
  moves whatever batches are ready into a ring buffer on the device and draws training batches
  from it, so a slow renderer never stalls the GPU (samples are then reused a few times).
- AdamW with a linear warm-up and a cosine decay driven by training progress (steps or minutes).
- ``EMA`` of the weights; the exported model is the EMA when one is kept.
- Training state (model, EMA, optimizer, step, counters) as safetensors + JSON, never pickle,
  so ``--resume FOLDER`` continues a run.
"""
from __future__ import annotations

import copy
import json
import math
import os
import queue
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
import torch.distributed as torch_dist
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from ..data.textscenes2 import TextScenes2, warm_cache
from ..device import autocast as _autocast

STATE_DIR = "train_state"


# --------------------------------------------------------------------------- distributed
@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def setup_distributed(device: Optional[str] = None) -> Dist:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; NCCL on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local if world > 1 else (dev.index or 0))
        torch.cuda.set_device(dev)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if world > 1 and not torch_dist.is_initialized():
        torch_dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, world, local, dev)


def cleanup_distributed() -> None:
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def all_reduce_mean(t: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.enabled:
        t = t.clone()
        torch_dist.all_reduce(t)
        t /= d.world
    return t


def broadcast_flag(flag: bool, d: Dist) -> bool:
    """Rank 0's decision for everyone (so all ranks stop at the same step)."""
    if not d.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=d.device)
    torch_dist.broadcast(t, 0)
    return bool(t.item() > 0.5)


def broadcast_float(value: float, d: Dist) -> float:
    """Rank 0's value for everyone (time-based quantities must agree across ranks)."""
    if not d.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=d.device)
    torch_dist.broadcast(t, 0)
    return float(t.item())


def unwrap(module: nn.Module) -> nn.Module:
    return module.module if hasattr(module, "module") else module


def autocast(device: torch.device):
    return _autocast(device)


# --------------------------------------------------------------------------- data
class _RenderSet(torch.utils.data.Dataset):
    """textscenes v2 samples as compact tensors: uint8 image 3×S×S, bool mask S×S, int label
    (the class id in ``mode="class"``, -1 in the open-vocabulary ``mode="open"``)."""

    def __init__(self, image_size: int, seed: int, split: str = "train", mode: str = "open"):
        self.ds = TextScenes2(split, image_size=image_size, seed=seed, mode=mode)

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index: int):
        s = self.ds.sample(index % len(self.ds))
        image = torch.from_numpy(s.image).permute(2, 0, 1).contiguous()
        return image, torch.from_numpy(s.mask), s.label


class _EndlessSampler(torch.utils.data.Sampler):
    """start + rank, start + rank + world, ... forever (a rank's disjoint share of the stream)."""

    def __init__(self, start: int, rank: int, world: int):
        self.start, self.rank, self.world = start, rank, world

    def __iter__(self) -> Iterator[int]:
        k = 0
        while True:
            yield self.start + self.rank + k * self.world
            k += 1


class RenderStream:
    """A background thread pulls rendered batches out of a DataLoader into a small queue.

    ``start`` is this rank's count of samples already consumed in earlier runs (resume)."""

    def __init__(self, image_size: int, batch_size: int, workers: int, d: Dist, *, start: int = 0,
                 seed: int = 0, queue_size: int = 64, mode: str = "open"):
        warm_cache(image_size)  # decode photos, measure fonts once; forked workers inherit the cache
        self.batch_size = batch_size
        self.consumed = start  # samples of this rank handed to the trainer
        sampler = _EndlessSampler(start * d.world, d.rank, d.world)
        kwargs = dict(num_workers=workers, pin_memory=d.device.type == "cuda")
        if workers > 0:
            kwargs.update(prefetch_factor=4, persistent_workers=False)
        self.loader = torch.utils.data.DataLoader(_RenderSet(image_size, seed, mode=mode), batch_size=batch_size,
                                                  sampler=sampler, **kwargs)
        self.queue: "queue.Queue" = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._error: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for batch in self.loader:
                while not self._stop.is_set():
                    try:
                        self.queue.put(batch, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
        except BaseException as err:  # surfaced in get()
            self._error = err

    def get(self, block: bool = True, timeout: float = 300.0):
        if self._error is not None:
            raise RuntimeError(f"render workers failed: {self._error!r}") from self._error
        try:
            batch = self.queue.get(block=block, timeout=timeout if block else None)
        except queue.Empty:
            if block:
                raise RuntimeError("no rendered batch arrived in time") from None
            return None
        self.consumed += batch[0].shape[0]
        return batch

    def close(self) -> None:
        self._stop.set()
        try:
            while True:
                self.queue.get_nowait()
        except queue.Empty:
            pass
        self.thread.join(timeout=10)
        # Shut the workers down now rather than at interpreter exit.
        it = getattr(self.loader, "_iterator", None)
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()


class GPUReplay:
    """Ring buffer of training examples on the device; ``sample`` draws uniformly from what is in.

    ``fields`` maps a name to (per-example shape, dtype)."""

    def __init__(self, capacity: int, fields: dict[str, tuple[tuple[int, ...], torch.dtype]],
                 device: torch.device):
        self.capacity = int(capacity)
        self.device = device
        self.data = {k: torch.empty((self.capacity, *shape), dtype=dt, device=device)
                     for k, (shape, dt) in fields.items()}
        self.count = 0       # examples currently held
        self.pos = 0         # next slot to write
        self.added = 0       # examples ever added
        self.drawn = 0       # examples ever drawn

    def add(self, **tensors: torch.Tensor) -> None:
        n = next(iter(tensors.values())).shape[0]
        if n > self.capacity:
            tensors = {k: v[-self.capacity:] for k, v in tensors.items()}
            n = self.capacity
        first = min(n, self.capacity - self.pos)
        for k, v in tensors.items():
            v = v.to(self.device, non_blocking=True)
            self.data[k][self.pos:self.pos + first] = v[:first]
            if first < n:
                self.data[k][:n - first] = v[first:]
        self.pos = (self.pos + n) % self.capacity
        self.count = min(self.capacity, self.count + n)
        self.added += n

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> dict[str, torch.Tensor]:
        if self.count == 0:
            raise RuntimeError("replay buffer is empty")
        idx = torch.randint(0, self.count, (n,), generator=generator, device=self.device)
        self.drawn += n
        return {k: v[idx] for k, v in self.data.items()}

    @property
    def reuse(self) -> float:
        """How many times, on average, each added example has been drawn."""
        return self.drawn / max(self.added, 1)


def feed(stream: RenderStream, replay: GPUReplay, process: Callable, *, max_batches: int = 8,
         min_count: int = 0) -> int:
    """Move up to ``max_batches`` ready batches into the buffer, blocking while it holds fewer
    than ``min_count`` examples (and returning as soon as it holds that many)."""
    moved = 0
    while replay.count < min_count or moved < max_batches:
        batch = stream.get(block=replay.count < min_count)
        if batch is None:
            break
        replay.add(**process(batch))
        moved += 1
    return moved


# --------------------------------------------------------------------------- optimisation
def param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases, norms, embeddings, tokens, positions, codebooks, LayerScale."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or any(k in name for k in ("pos_embed", "positional_embedding", "token", "embedding",
                                                 "cls_", "class_embedding", "mask_token", "gamma")):
            no_decay.append(p)
        else:
            decay.append(p)
    return [dict(params=decay, weight_decay=weight_decay), dict(params=no_decay, weight_decay=0.0)]


def make_optimizer(module: nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.95)
                   ) -> torch.optim.AdamW:
    groups = param_groups(module, weight_decay)
    fused = all(p.is_cuda for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused or None)


def lr_at(step: int, progress: float, base_lr: float, warmup: int, min_ratio: float = 0.1) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine from base_lr to min_ratio·base_lr as
    ``progress`` (fraction of the planned steps or minutes) goes 0 → 1."""
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    p = min(max(progress, 0.0), 1.0)
    return base_lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * p)))


class EMA:
    """Exponential moving average of a model's floating-point state (params and buffers)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self._pairs: Optional[tuple[list, list, list, list]] = None

    def _lists(self, model: nn.Module):
        if self._pairs is None:
            own, src = self.model.state_dict(), model.state_dict()
            fl = [k for k, v in src.items() if v.dtype.is_floating_point]
            other = [k for k, v in src.items() if not v.dtype.is_floating_point]
            self._pairs = ([own[k] for k in fl], [src[k] for k in fl],
                           [own[k] for k in other], [src[k] for k in other])
        return self._pairs

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        ema_f, src_f, ema_o, src_o = self._lists(model)
        if ema_f:
            torch._foreach_lerp_(ema_f, src_f, 1 - d)
        for e, s in zip(ema_o, src_o):
            e.copy_(s)

    def reset_cache(self) -> None:
        self._pairs = None


# --------------------------------------------------------------------------- training state
def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"state.{pid}.{k}"] = v.detach().to("cpu").contiguous()
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        _, pid, k = key.split(".", 2)
        state.setdefault(int(pid), {})[k] = v
    for key, v in meta.get("scalars", {}).items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}


def save_train_state(folder: Path, trainer: nn.Module, ema: Optional[EMA], opt: torch.optim.Optimizer,
                     state: dict[str, Any]) -> Path:
    """``folder``/{trainer,ema,optimizer}.safetensors + state.json (written atomically enough:
    temp names, then renamed)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors, meta = _flatten_optimizer(opt)
    files = {"trainer.safetensors": _cpu_state(trainer), "optimizer.safetensors": tensors}
    if ema is not None:
        files["ema.safetensors"] = _cpu_state(ema.model)
    for name, sd in files.items():
        save_file(sd, str(folder / (name + ".tmp")))
    (folder / "state.json.tmp").write_text(json.dumps({**state, "optimizer": meta}, indent=1))
    for name in list(files) + ["state.json"]:
        os.replace(folder / (name + ".tmp"), folder / name)
    return folder


def load_train_state(folder: Path, trainer: nn.Module, ema: Optional[EMA],
                     opt: Optional[torch.optim.Optimizer]) -> dict[str, Any]:
    folder = Path(folder)
    if (folder / STATE_DIR / "state.json").is_file():
        folder = folder / STATE_DIR
    if not (folder / "state.json").is_file():
        raise FileNotFoundError(f"{folder}: no training state (state.json) to resume from")
    state = json.loads((folder / "state.json").read_text())
    trainer.load_state_dict(load_file(str(folder / "trainer.safetensors")))
    if ema is not None:
        path = folder / "ema.safetensors"
        ema.model.load_state_dict(load_file(str(path)) if path.is_file()
                                  else unwrap(trainer).model.state_dict())
    if opt is not None:
        sd = _unflatten_optimizer(load_file(str(folder / "optimizer.safetensors")), state.pop("optimizer"))
        opt.load_state_dict(sd)
    else:
        state.pop("optimizer", None)
    return state


# --------------------------------------------------------------------------- logging
class Logger:
    """JSON lines in ``path`` (rank 0 only) and a tqdm bar on stderr."""

    def __init__(self, path: Optional[Path], d: Dist, total: Optional[int], initial: int, desc: str,
                 progress: bool = True):
        self.path = Path(path) if path is not None and d.is_main else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.bar = None
        if d.is_main and progress:
            tty = sys.stderr.isatty()
            self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True,
                            mininterval=0.5 if tty else 30.0, file=sys.stderr)
        self.is_main = d.is_main

    def write(self, record: dict) -> None:
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    def step(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def show(self, record: dict) -> None:
        if not self.is_main:
            return
        keys = [k for k in record if k not in ("kind",)]
        text = " ".join(f"{k}={_fmt(record[k])}" for k in keys)
        if self.bar is not None:
            self.bar.set_postfix_str(text[:160], refresh=False)
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


class LossMeter:
    """Averages loss tensors on the device; one host sync per log line."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.n = 0

    def add(self, losses: dict[str, torch.Tensor]) -> None:
        for k, v in losses.items():
            v = v.detach().float()
            self.sums[k] = self.sums[k] + v if k in self.sums else v.clone()
        self.n += 1

    def mean(self, d: Dist) -> dict[str, float]:
        if not self.sums:
            return {}
        keys = sorted(self.sums)
        stacked = torch.stack([self.sums[k] for k in keys]) / max(self.n, 1)
        stacked = all_reduce_mean(stacked, d)
        values = stacked.tolist()
        self.sums, self.n = {}, 0
        return {k: float(v) for k, v in zip(keys, values)}


def seed_everything(seed: int, d: Dist) -> torch.Generator:
    torch.manual_seed(seed + 1000 * d.rank)
    g = torch.Generator(device=d.device)
    g.manual_seed(seed + 1000 * d.rank + 1)
    return g


def write_json(path: Path, data: dict) -> None:
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
