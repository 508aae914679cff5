"""The training loop every trainer shares: feed the replay buffer, step, EMA, log, stop on the
step or time budget, save the resumable state and export the model."""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from .common import (EMA, STATE_DIR, Dist, GPUReplay, LossMeter, Logger, RenderStream, autocast,
                     broadcast_flag, broadcast_float, feed, load_train_state, lr_at, make_optimizer, save_train_state,
                     unwrap)


class Trainer(nn.Module):
    """A module whose ``forward(batch)`` returns a dict of losses with the total under "loss".

    ``model`` is what gets exported; everything else in it (auxiliary heads) is training-only.
    """

    model: nn.Module
    compile_targets: tuple[str, ...] = ()   # submodules of ``model`` that --compile compiles
    data_mode: str = "open"                 # textscenes v2 mode: "open" text or one "class" word

    def __init__(self, model: nn.Module, args: argparse.Namespace):
        super().__init__()
        self.model = model
        self.args = args

    def enable_compile(self) -> None:
        """torch.compile the heavy submodules; kept outside the module tree (plain dict), so state
        dicts, EMA copies and exports never see compiled wrappers."""
        self.__dict__["_compiled"] = {name: torch.compile(self.model.get_submodule(name) if name else self.model)
                                      for name in self.compile_targets}

    def disable_compile(self) -> None:
        self.__dict__["_compiled"] = {}

    def fast(self, name: str = "") -> nn.Module:
        """The compiled version of ``model.<name>`` when --compile is on, else the module."""
        compiled = self.__dict__.get("_compiled") or {}
        if name in compiled:
            return compiled[name]
        return self.model.get_submodule(name) if name else self.model

    def after_step(self, step: int, progress: float, d: Dist) -> dict:  # hooks (codebook restarts)
        return {}


def state_folder(args: argparse.Namespace) -> Path:
    return Path(args.state_dir) if getattr(args, "state_dir", None) else Path(args.out) / STATE_DIR


def fit(trainer: Trainer, args: argparse.Namespace, d: Dist, *, image_size: int,
        replay_fields: dict, process: Callable, export: Callable[[nn.Module, nn.Module, dict], dict],
        desc: str) -> dict:
    """Train ``trainer`` with the options in ``args`` (see ``__main__``); returns a summary."""
    device = d.device
    trainer.to(device)
    ema = EMA(trainer.model, args.ema) if args.ema > 0 else None
    opt = make_optimizer(trainer, args.lr, args.weight_decay)
    state = dict(step=0, train_seconds=0.0, consumed=0, runs=0)
    if args.resume:
        state.update(load_train_state(Path(args.resume), trainer, ema, opt))
        if d.is_main:
            print(f"resumed from {args.resume} at step {state['step']}", flush=True)
    state["runs"] = int(state.get("runs", 0)) + 1
    step0, prior_seconds = int(state["step"]), float(state["train_seconds"])
    if ema is not None:
        ema.model.to(device)

    if getattr(args, "compile", False):
        trainer.enable_compile()
    model_for_step: nn.Module = trainer
    if d.enabled:
        model_for_step = DDP(trainer, device_ids=[device.index] if device.type == "cuda" else None,
                             find_unused_parameters=True)

    per_rank = max(1, args.batch_size // d.world)
    stream = RenderStream(image_size, args.render_batch, args.workers, d, start=int(state["consumed"]),
                          seed=args.seed, mode=trainer.data_mode)
    replay = GPUReplay(args.buffer, replay_fields, device)
    rng = torch.Generator(device=device)
    rng.manual_seed(args.seed * 7919 + 1000 * d.rank + step0)

    budget = args.minutes * 60 if args.minutes else None
    horizon = (args.schedule_minutes * 60 if getattr(args, "schedule_minutes", None)
               else (prior_seconds + budget if budget else None))
    log = Logger(Path(args.out) / "train_log.jsonl", d, total=args.steps, initial=step0, desc=desc,
                 progress=not args.no_progress)
    if step0 == 0:
        log.write(dict(kind="args", **{k: v for k, v in vars(args).items()
                                        if isinstance(v, (int, float, str, bool, type(None)))}))
    meter = LossMeter()
    save_every = args.save_every * 60 if args.save_every else None
    step = step0
    t_start = time.time()
    last_save = t_start
    last_log_t, last_log_step = t_start, step0
    records: list[dict] = []

    def progress_now() -> float:
        p = 0.0
        if args.steps:
            p = max(p, step / args.steps)
        if horizon:
            p = max(p, (prior_seconds + time.time() - t_start) / horizon)
        return p

    def save_state() -> None:
        if d.is_main and not args.no_state:
            save_train_state(state_folder(args), trainer, ema, opt,
                             {**state, "step": step, "consumed": stream.consumed,
                              "train_seconds": prior_seconds + time.time() - t_start})

    trainer.train()
    try:
        feed(stream, replay, process, max_batches=0, min_count=min(args.min_fill, args.buffer))
        while True:
            feed(stream, replay, process, max_batches=args.feed_batches)
            batch = replay.sample(per_rank, rng)
            if step % 10 == 0 or step == step0:  # the same on every rank
                progress = broadcast_float(progress_now(), d)
            lr = lr_at(step, progress, args.lr, args.warmup, args.min_lr_ratio)
            for g in opt.param_groups:
                g["lr"] = lr
            opt.zero_grad(set_to_none=True)
            try:
                with autocast(device):
                    losses = model_for_step(batch)
                losses["loss"].backward()
            except Exception as err:  # a failed torch.compile falls back to eager, once
                if step != step0 or not getattr(args, "compile", False):
                    raise
                print(f"torch.compile failed ({type(err).__name__}: {str(err)[:300]}); running eager",
                      flush=True)
                trainer.disable_compile()
                opt.zero_grad(set_to_none=True)
                with autocast(device):
                    losses = model_for_step(batch)
                losses["loss"].backward()
            if args.grad_clip > 0:
                losses["grad_norm"] = torch.nn.utils.clip_grad_norm_(trainer.parameters(), args.grad_clip)
            opt.step()
            step += 1
            if ema is not None:
                ema.update(trainer.model, step)
            extra = trainer.after_step(step, progress, d)
            meter.add(losses)
            log.step()

            if step % args.log_every == 0:
                now = time.time()
                rec = dict(kind="train", step=step, lr=lr, minutes=(prior_seconds + now - t_start) / 60,
                           samples_per_s=(step - last_log_step) * args.batch_size / max(now - last_log_t, 1e-9),
                           buffer=replay.count, rendered=replay.added * d.world, reuse=round(replay.reuse, 2),
                           **meter.mean(d), **extra)
                last_log_t, last_log_step = now, step
                records.append(rec)
                log.write(rec)
                log.show(rec)
            stop = bool(args.steps and step >= args.steps)
            if budget is not None and step % 10 == 0:
                stop = stop or (time.time() - t_start) > budget
            if d.enabled and step % 10 == 0:
                stop = broadcast_flag(stop, d)
            if save_every and time.time() - last_save > save_every:
                save_state()
                if d.is_main:
                    export(unwrap(trainer).model, ema.model if ema else None, dict(step=step, final=False,
                                                                                  replay=replay))
                last_save = time.time()
            if stop:
                break
    finally:
        stream.close()
        log.close()
    elapsed = time.time() - t_start
    state["train_seconds"] = prior_seconds + elapsed
    save_state()
    summary = dict(kind="summary", step=step, steps_this_run=step - step0, minutes_this_run=elapsed / 60,
                   minutes_total=(prior_seconds + elapsed) / 60, rendered=replay.added * d.world,
                   samples_seen=(step - step0) * args.batch_size, reuse=round(replay.reuse, 2),
                   final_losses=records[-1] if records else {})
    if d.is_main:
        summary.update(export(trainer.model, ema.model if ema else None,
                              dict(step=step, final=True, replay=replay)) or {})
        log.write(summary)
        print({k: v for k, v in summary.items() if k != "final_losses"}, flush=True)
    return summary
