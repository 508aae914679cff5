"""Training CLI for the embedded textscenes models.

    python -m softvq_demo.train tokenizer --family softvq --out checkpoints/textscenes-softvq-32 --minutes 8
    python -m softvq_demo.train tokenizer --family titok  --tokens 128 --out checkpoints/textscenes-titok-128 --minutes 8
    python -m softvq_demo.train generator --family sit     --tokenizer checkpoints/textscenes-softvq-32 \
        --out checkpoints/textscenes-sit --minutes 8
    python -m softvq_demo.train generator --family maskgit --tokenizer checkpoints/textscenes-titok-128 \
        --out checkpoints/textscenes-maskgit --minutes 8
    torchrun --nproc_per_node 4 -m softvq_demo.train tokenizer ...        # DDP over 4 GPUs

``--out`` receives config.json + model.safetensors (the official layout, loadable with
load_tokenizer/load_generator), train_log.jsonl, training.json and, unless ``--no-state``, the
resumable state in ``--state-dir`` (default OUT/train_state). ``--resume FOLDER`` continues from
a state folder (or an out folder holding one); ``--init-from FOLDER`` starts from exported weights
with a fresh optimizer. ``--minutes`` stops cleanly and saves when the time is up.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

import torch

from .common import cleanup_distributed, setup_distributed
from .generator import train_generator
from .tokenizer import train_tokenizer


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("run")
    g.add_argument("--out", required=True, help="folder for config.json + model.safetensors + logs")
    g.add_argument("--preset", default="default", choices=["default", "tiny"])
    g.add_argument("--minutes", type=float, default=None, help="wall-clock budget of this run")
    g.add_argument("--steps", type=int, default=None, help="total steps (across resumes)")
    g.add_argument("--schedule-minutes", type=float, default=None,
                   help="cosine horizon in minutes (default: earlier minutes + --minutes)")
    g.add_argument("--resume", default=None, help="training-state folder to continue from")
    g.add_argument("--init-from", default=None, help="exported model folder to start from")
    g.add_argument("--state-dir", default=None, help="where the resumable state goes (OUT/train_state)")
    g.add_argument("--no-state", action="store_true", help="do not write a resumable state")
    g.add_argument("--save-every", type=float, default=2.0, help="minutes between saves (0: only at end)")
    g.add_argument("--device", default=None, help="cuda | cpu (default: cuda when available)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    g.add_argument("--no-progress", action="store_true")
    g.add_argument("--log-every", type=int, default=100)
    g.add_argument("--compile", action="store_true", help="torch.compile the networks (eager if it fails)")
    g.add_argument("--export-dtype", default="fp32", choices=["fp32", "fp16"],
                   help="dtype of the exported model.safetensors (fp16 halves the file; loaders "
                        "copy it into fp32 models)")
    o = p.add_argument_group("optimisation")
    o.add_argument("--batch-size", type=int, default=128, help="global batch (split over ranks)")
    o.add_argument("--lr", type=float, default=4e-4)
    o.add_argument("--min-lr-ratio", type=float, default=0.05)
    o.add_argument("--warmup", type=int, default=500)
    o.add_argument("--weight-decay", type=float, default=0.05)
    o.add_argument("--grad-clip", type=float, default=1.0)
    o.add_argument("--ema", type=float, default=0.999, help="EMA decay (0: none)")
    d = p.add_argument_group("data")
    d.add_argument("--workers", type=int, default=4, help="DataLoader workers rendering textscenes")
    d.add_argument("--render-batch", type=int, default=64)
    d.add_argument("--buffer", type=int, default=100_000, help="replay buffer capacity (examples)")
    d.add_argument("--min-fill", type=int, default=2048, help="examples buffered before step 1")
    d.add_argument("--feed-batches", type=int, default=4, help="rendered batches moved in per step at most")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m softvq_demo.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("tokenizer", help="train a SoftVQ-VAE or TiTok tokenizer on textscenes")
    t.add_argument("--family", required=True, choices=["softvq", "titok"])
    _common(t)
    a = t.add_argument_group("architecture (override the preset)")
    for name in ("width", "depth", "dec-width", "dec-depth", "heads", "patch-size", "image-size", "tokens",
                 "codebook-size", "token-dim"):
        a.add_argument(f"--{name}", type=int, default=None)
    l = t.add_argument_group("losses")
    l.add_argument("--tau", type=float, default=0.07, help="SoftVQ softmax temperature")
    l.add_argument("--text-weight", type=float, default=16.0, help="extra L1/L2 weight inside the text mask")
    l.add_argument("--l2-weight", type=float, default=1.0)
    l.add_argument("--grad-weight", type=float, default=0.5, help="L1 on image gradients")
    l.add_argument("--entropy-weight", type=float, default=0.01, help="SoftVQ entropy term")
    l.add_argument("--commit", type=float, default=0.25, help="TiTok commitment beta")
    l.add_argument("--vq-weight", type=float, default=1.0, help="TiTok codebook+commitment weight")
    l.add_argument("--restart-every", type=int, default=200, help="TiTok dead-code restart period")
    e = t.add_argument_group("evaluation at export")
    e.add_argument("--eval-n", type=int, default=256, help="held-out images for the export check")
    e.add_argument("--stats-n", type=int, default=8192, help="images for vq_mean/vq_std (SoftVQ)")

    g = sub.add_parser("generator", help="train SiT (on SoftVQ) or MaskGIT (on TiTok)")
    g.add_argument("--family", required=True, choices=["sit", "maskgit"])
    g.add_argument("--tokenizer", required=True, help="frozen tokenizer folder or catalogue name")
    _common(g)
    a = g.add_argument_group("architecture (override the preset)")
    for name in ("width", "depth", "heads"):
        a.add_argument(f"--{name}", type=int, default=None)
    l = g.add_argument_group("losses / sampling defaults")
    l.add_argument("--label-dropout", type=float, default=0.1, help="CFG label dropout")
    l.add_argument("--label-smoothing", type=float, default=0.1, help="MaskGIT")
    l.add_argument("--dropout", type=float, default=0.1, help="MaskGIT BERT dropout")
    l.add_argument("--num-steps", type=int, default=16, help="MaskGIT default sampling steps")
    l.add_argument("--guidance-scale", type=float, default=3.0, help="MaskGIT default CFG scale")
    l.add_argument("--guidance-decay", default="linear", help="MaskGIT CFG schedule")
    l.add_argument("--temperature", type=float, default=2.0, help="MaskGIT randomize_temperature")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.minutes and not args.steps:
        raise SystemExit("give --minutes and/or --steps")
    if args.threads:
        torch.set_num_threads(args.threads)
    d = setup_distributed(args.device)
    torch.manual_seed(args.seed + 1000 * d.rank)
    try:
        if args.command == "tokenizer":
            train_tokenizer(args, d)
        else:
            train_generator(args, d)
    finally:
        cleanup_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
