"""What the GPU benchmark runs: its SiT cases and sampler settings, model builders with random
weights in the released architectures, and small helpers (sync, FLOP counting, step counts)."""
from __future__ import annotations

import gc
from typing import Any, Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..models.maskgit import build
from ..models.sit import SiT, sit_config
from ..models.softvq import SoftVQModel
from ..models.titok import TiTok
from ..released import softvq_config, titok_config
from ..sampling.flow import time_grid
from ..sampling.settings import SIT_DEFAULTS, SIT_PAPER

# --------------------------------------------------------------------------- configurations
# SiT cases: (name, image px, tokens, token dim, 1D/2D)
SIT_NETS = [("SoftVQ 32 tok", 256, 32, 64, "1D"), ("SoftVQ 64 tok", 256, 64, 32, "1D"),
            ("SD-VAE 32x32x4 /2", 256, 256, 16, "2D"), ("SD-VAE 64x64x4 /2", 512, 1024, 16, "2D")]
SIT_TINY = [("tiny 8 tok", 256, 8, 8, "1D"), ("tiny 16 tok", 256, 16, 4, "1D"),
            ("tiny 32 tok /2", 256, 32, 2, "2D"), ("tiny 64 tok /2", 512, 64, 2, "2D")]
SETTINGS = {"50 euler": dict(SIT_DEFAULTS), "250 sde": dict(SIT_PAPER)}  # interactive / the paper's
SETTINGS_TINY = {"10 euler": dict(SETTINGS["50 euler"], steps=10),
                 "25 sde": dict(SETTINGS["250 sde"], steps=25)}
CONFIGS = ("naive", "official-eager", "official", "fast")


# --------------------------------------------------------------------------- helpers
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def schedule(steps: int, method: str, cfg_scale: float, guidance_low: float, guidance_high: float
             ) -> tuple[int, int]:
    """(unguided, guided) step counts of a run."""
    grid = time_grid(steps, method)
    g = sum(1 for t in grid[:-1] if cfg_scale > 1.0 and guidance_low <= t <= guidance_high)
    return len(grid) - 1 - g, g


def count_flops(fn: Callable[[], Any]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def build_sit(tokens: int, dim: int, device: torch.device, tiny: bool, seed: int = 0):
    """SiT-XL/1 (or a tiny SiT) with random weights: DiT's init, then the adaLN-Zero layers and
    the final projection made non-zero (a zero network would hide unwritten outputs and time
    kernels on zeros)."""
    if tiny:
        cfg = sit_config("SiT-S/1", tokens, dim, num_classes=10, depth=2, hidden_size=64, num_heads=4)
    else:
        cfg = sit_config("SiT-XL/1", tokens, dim)
    with torch.device(device):
        torch.manual_seed(seed)
        gen = SiT(cfg)
    with torch.no_grad():
        g = torch.Generator(device=device).manual_seed(seed)
        hidden = gen.hidden_size
        for layer in [b.adaLN_modulation[1] for b in gen.blocks] + [gen.final_layer.adaLN_modulation[1]]:
            layer.weight.normal_(0.0, 0.02, generator=g)
            layer.bias.normal_(0.0, 0.3, generator=g)
        gen.final_layer.linear.weight.normal_(0.0, hidden ** -0.5, generator=g)
        gen.final_layer.linear.bias.normal_(0.0, 0.02, generator=g)
    return gen.eval().requires_grad_(False)


def build_softvq(size: str, device: torch.device, tiny: bool, seed: int = 0):
    with torch.device(device):
        torch.manual_seed(seed)
        tok = SoftVQModel(softvq_config(size, tiny))
    with torch.no_grad():
        for name, p in tok.named_parameters():
            if name.endswith(("ls1.gamma", "ls2.gamma")):
                p.fill_(1.0)  # DINOv2's 1e-5 LayerScale would make every block a near-identity
    return tok.eval().requires_grad_(False)


def build_titok(name: str, device: torch.device, tiny: bool, seed: int = 0):
    with torch.device(device):
        torch.manual_seed(seed)
        tok = TiTok(titok_config(name, tiny))
    return tok.eval().requires_grad_(False)


def build_maskgit(name: str, device: torch.device, tiny: bool, seed: int = 0):
    with torch.device(device):
        torch.manual_seed(seed)
        gen = build(titok_config(name, tiny))
    return gen.eval().requires_grad_(False)
