"""FlexTok (Bachmann et al., arXiv 2502.13967): 1D tokens of flexible length, decoded by flow.

An image is encoded by a frozen SD-style VAE (``flextok_vae.py``) into latents; a transformer reads
the latent patches plus N learned *registers* (causal among themselves), and each register output
is quantised by FSQ (levels [8, 8, 8, 5, 5, 5] released: 64 000 codes, one id per token). Any prefix
of k ids decodes: a rectified-flow transformer denoises VAE latents conditioned on the k register
codes (positions ≥ k hold a learned mask token), optionally with classifier-free guidance (a
learned null condition) or its norm-guided variant APG; the VAE decodes the result.

Checkpoint-compatible with apple/ml-flextok (``FlexTokFromHub``): ``config.json`` is the official
hydra config dict and the state-dict keys are the official ones (``vae.vae.*``,
``encoder.module_dict.<name>.*``, ``decoder.module_dict.<name>.*``). Like the official
``SequentialModuleDictWrapper``, the encoder and decoder are ordered dicts of small modules that
read and write named entries of a shared ``data`` dict, run **in config order** (the order is the
semantics: e.g. the decoder's register posemb runs before the nested-dropout mask token). Each
``_target_`` is mapped to a module here by name; nothing is instantiated from the config (no hydra),
and an unknown target is refused. Images of a batch share one size, so every entry is a batched
tensor rather than the official per-image lists.

Reference: ../shared/reference/flextok/SPEC.md (official behaviour with file/line citations).
"""
from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Any, Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .base import Encoded, Tokenizer, int_in_range
from .flextok_modules import (ModuleSequence, NestedDropout, NullCondition, PatchEmbedder,
                              PositionEmbedding, Registers, _target_name)
from .flextok_vae import AutoencoderKL
from .registry import Companion, Family, register_family

# The VAE that ``StableDiffusionVAE`` builds when its config names no Hub repo (vae_wrapper.py
# VAE_BASE_CFG); ``latent_channels`` and the fixtures' ``vae_config_overrides`` are merged over it.
VAE_BASE_CONFIG: dict[str, Any] = {
    "_class_name": "AutoencoderKL", "in_channels": 3, "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "act_fn": "silu",
    "norm_num_groups": 32, "sample_size": 256,
}

# Sampler settings of the release (the official README's detokenize call).
RELEASE_SAMPLING = {"steps": 20, "guidance_scale": 7.5, "apg": True}
DEFAULT_SEED = 0
# APG constants of the official ``normalized_guidance`` (cfg_utils.py).
APG_MOMENTUM = -0.5
APG_NORM_THRESHOLD = 2.5


# --------------------------------------------------------------------------- FSQ
class FSQ(nn.Module):
    """Finite scalar quantisation (Mentzer et al. 2023) as ``quantize_fsq.py`` does it.

    Each dimension d is bounded to L_d levels and rounded; values lie on the grid
    (c − L//2)/(L//2), c ∈ 0..L−1, and the id is Σ c_d·basis_d with basis = cumprod([1] + L[:-1])
    (dimension 0 least significant). No parameters."""

    def __init__(self, levels: list[int]):
        super().__init__()
        self.levels = [int_in_range("FSQ levels", v, 2, 1024) for v in levels]
        if not 1 <= len(self.levels) <= 16 or math.prod(self.levels) > 2 ** 31:
            raise ValueError(f"FSQ levels {levels} give an unsupported codebook")
        self.basis = [math.prod(self.levels[:i]) for i in range(len(self.levels))]
        self.codebook_size = math.prod(self.levels)

    def _tensor(self, values: list, ref: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype, device=ref.device)

    def bound(self, z: torch.Tensor) -> torch.Tensor:
        levels = self._tensor(self.levels, z)
        half_l = (levels - 1) * (1 + 1e-3) / 2
        offset = torch.where(levels % 2 == 0, 0.5, 0.0)
        shift = torch.atanh(offset / half_l)
        return torch.tanh(z + shift) * half_l - offset

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """B×N×d pre-quantisation values → (values, ids B×N, rounding margins B×N×d)."""
        z = z.float()
        b = self.bound(z)
        rounded = b.round()
        half_width = self._tensor([v // 2 for v in self.levels], z)
        values = (b + (rounded - b)) / half_width  # the official straight-through arithmetic
        codes = (rounded + half_width).long()
        ids = (codes * self._tensor(self.basis, z, torch.long)).sum(-1)
        margin = 0.5 - (b - rounded).abs()  # distance to the nearest rounding boundary
        return values, ids, margin

    def ids_to_values(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.long()
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.codebook_size):
            raise ValueError(f"FSQ ids must lie in 0..{self.codebook_size - 1}")
        basis = self._tensor(self.basis, ids, torch.long)
        levels = self._tensor(self.levels, ids, torch.long)
        codes = (ids[..., None] // basis) % levels
        half_width = levels // 2
        return (codes - half_width).float() / half_width.float()

    def level_values(self, d: int) -> list[float]:
        """The grid values dimension d can take."""
        L = self.levels[d]
        return [(c - L // 2) / (L // 2) for c in range(L)]


# --------------------------------------------------------------------------- sampler options
_DECODE_OPTIONS: contextvars.ContextVar[dict] = contextvars.ContextVar("flextok_decode_options",
                                                                       default={})


@contextlib.contextmanager
def decode_options(**options) -> Iterator[None]:
    """Defaults for every ``FlexTok.decode`` inside the block (seed, steps, guidance_scale, apg).

    For analyses that call ``tok.decode`` for you (ablation, k-sweeps): with one seed for the whole
    block every decode starts from the same noise, so differences come from the tokens alone.
    Context-local (each app request thread has its own)."""
    unknown = set(options) - {"seed", "steps", "guidance_scale", "apg"}
    if unknown:
        raise TypeError(f"unknown decode option(s): {', '.join(sorted(unknown))}")
    token = _DECODE_OPTIONS.set({**_DECODE_OPTIONS.get(), **{k: v for k, v in options.items()
                                                              if v is not None}})
    try:
        yield
    finally:
        _DECODE_OPTIONS.reset(token)


def decode_settings() -> dict[str, Any]:
    """The sampler settings a ``FlexTok.decode`` with no arguments uses here and now: the
    release's, overridden by any ``decode_options`` in effect."""
    return {**RELEASE_SAMPLING, "seed": DEFAULT_SEED, **_DECODE_OPTIONS.get()}


def noise_from_seed(seed: int, batch: int, shape: tuple[int, int, int], *, per_image: bool = False,
                    device=None, dtype=torch.float32) -> torch.Tensor:
    """Initial VAE-latent noise B×C×h×w from ``seed``.

    Default: one draw shared by every image of the batch, so a batch of variants of one image
    (ablations, prefixes) is decoded from the same noise and any chunking gives the same result.
    ``per_image=True``: one draw per image in batch order from one generator, exactly what the
    official ``MinRFPipeline`` draws with ``generator=torch.Generator().manual_seed(seed)``."""
    gen = torch.Generator().manual_seed(int(seed))
    if per_image:
        noise = torch.cat([torch.randn((1, *shape), generator=gen) for _ in range(batch)])
    else:
        noise = torch.randn((1, *shape), generator=gen).expand(batch, *shape)
    return noise.to(device=device, dtype=dtype)


# --------------------------------------------------------------------------- the tokenizer
class FlexTok(Tokenizer):
    family = "flextok"
    prefix_decodable = True
    stochastic_decode = True  # decode samples from noise: the app shows and varies its seed
    # A faster stand-in for ``sample_latents`` on this tokenizer, always used
    # (sampling.flextok_fast.enable_fast_decode); None: ask ``fast_decode_hook``.
    fast_sampler = None
    # hook(tok, batch, steps, guidance_scale, apg) -> a ``sample_latents`` stand-in, or None for
    # the reference sampler. Installed by sampling.flextok_fast (the models import no sampler):
    # on CUDA it picks the fast path where sampling.policy says it pays.
    fast_decode_hook: Optional[Callable[..., Optional[Callable[..., torch.Tensor]]]] = None
    # config.json's module order is execution order: save it unsorted (loading.save_pretrained).
    config_order_matters = True

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        self.config = {k: v for k, v in config.items() if k != VAE_CONFIG_KEY}
        for key in ("vae", "encoder", "decoder", "regularizer", "pipeline"):
            if not isinstance(config.get(key), dict):
                raise ValueError(f"FlexTok config: no {key!r} object")
        self.vae_options = config["vae"]
        self.vae = nn.Module()  # keys vae.vae.* as the official StableDiffusionVAE wrapper
        self.vae.vae = AutoencoderKL(flextok_vae_config(config))
        self.scaling_factor = float(self.vae_options.get("scaling_factor") or self.vae.vae.scaling_factor)
        self.sample_posterior = bool(self.vae_options.get("sample_posterior", True))
        self.encoder = ModuleSequence(config["encoder"], "encoder")
        self.decoder = ModuleSequence(config["decoder"], "decoder")
        reg = config["regularizer"]
        if _target_name(reg, "regularizer") != "FSQ":
            raise ValueError(f"regularizer {reg['_target_']!r} is not supported (FSQ only)")
        self.fsq = FSQ(list(reg["levels"]))
        self.data_keys = {  # data-dict names that the wrapper, FSQ and pipeline configs define
            "vae_latents": self.vae_options.get("vae_latents_write_key", "vae_latents"),
            "pre_fsq": reg["latents_read_key"], "quants": reg["quants_write_key"],
            "noised": config["pipeline"]["noised_images_read_key"],
            "timesteps": config["pipeline"]["timesteps_read_key"],
            "velocity": config["pipeline"]["reconst_write_key"],
            "cond": config["pipeline"].get("latents_read_key", reg["quants_write_key"]),
        }
        self.data_keys.update(self._decoder_flag_keys())
        registers = [m for m in self.encoder.module_dict.values() if isinstance(m, Registers)]
        patches = [m for m in self.encoder.module_dict.values() if isinstance(m, PatchEmbedder)]
        grids = [m for m in self.encoder.module_dict.values() if isinstance(m, PositionEmbedding)]
        if len(registers) != 1 or len(patches) != 1 or len(grids) != 1:
            raise ValueError("FlexTok encoder: expected one register, patch and position module")
        if grids[0].posembs.dim() != 4 or grids[0].posembs.shape[-2] != grids[0].posembs.shape[-1]:
            raise ValueError("FlexTok encoder: only a square 2D patch grid (max_sizes [n, n]) is supported")
        self.num_tokens = registers[0].n
        self.token_dim = len(self.fsq.levels)
        self.codebook_size = self.fsq.codebook_size
        self.num_codebooks = 1
        self.latent_channels = self.vae.vae.latent_channels
        self.latent_size = grids[0].posembs.shape[-1] * patches[0].p
        self.image_size = self.latent_size * self.vae.vae.downsample_factor
        self.last_decode: dict[str, Any] = {}
        if self.vae.vae.decoder.conv_in.weight.is_meta:  # the loader builds on meta first
            self.check_runs()

    def check_runs(self) -> None:
        """Run encode and one decoder step on meta tensors (no compute): a config whose modules
        read what no earlier module wrote, or get the wrong shapes, fails here, at load time.
        (huggingface_hub's own save_pretrained sorts config keys, which reorders the modules.)"""
        try:
            with torch.device("meta"), torch.no_grad():
                enc = self.encode(torch.zeros(1, 3, self.image_size, self.image_size))
                if tuple(enc.latents.shape) != (1, self.num_tokens, self.token_dim):
                    raise ValueError(f"encoder gives {tuple(enc.latents.shape)} FSQ inputs")
                shape = (1, self.latent_channels, self.latent_size, self.latent_size)
                v = self.velocity(torch.zeros(shape), torch.ones(1), enc.latents[:, :1])
                if tuple(v.shape) != shape:
                    raise ValueError(f"decoder gives {tuple(v.shape)}, expected {shape}")
        except (KeyError, RuntimeError, ValueError, TypeError, IndexError) as err:
            what = f"missing data entry {err}" if isinstance(err, KeyError) else str(err).splitlines()[0]
            raise ValueError("FlexTok config.json does not run in its module order "
                             f"({type(err).__name__}: {what}); the modules must be listed in execution "
                             "order (a config saved with sorted keys is not)") from None

    def _decoder_flag_keys(self) -> dict[str, str]:
        keys = {}
        for m in self.decoder.module_dict.values():
            if isinstance(m, NestedDropout):
                keys["keep_k"] = m.keep_read
            if isinstance(m, NullCondition):
                keys["drop_flag"] = m.flag_read
        if "keep_k" not in keys:
            raise ValueError("FlexTok decoder: no MaskedNestedDropout module (needed for prefixes)")
        return keys

    # ------------------------------------------------------------------ properties
    @property
    def is_discrete(self) -> bool:
        return True

    @property
    def fsq_levels(self) -> list[int]:
        return list(self.fsq.levels)

    @property
    def has_null_condition(self) -> bool:
        return "drop_flag" in self.data_keys

    def describe(self) -> str:
        return (f"flextok · {self.image_size}px · 1..{self.num_tokens} tokens · FSQ {self.fsq.levels} "
                f"({self.codebook_size} codes) · rectified-flow decoder over a "
                f"{self.latent_channels}-channel VAE")

    def _dtype(self) -> torch.dtype:
        return self.vae.vae.decoder.conv_in.weight.dtype

    # ------------------------------------------------------------------ encode
    def vae_encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images → the scaled VAE latents the encoder reads (posterior mode, or a draw from the
        global RNG when the config says ``sample_posterior``, as the official wrapper does)."""
        mean, logvar = self.vae.vae.encode(images.to(self._dtype()))
        z = self.vae.vae.sample(mean, logvar) if self.sample_posterior else mean
        return z * self.scaling_factor

    def encode(self, images: torch.Tensor) -> Encoded:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images B×3×H×W, got {tuple(images.shape)}")
        if images.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"this tokenizer takes {self.image_size}×{self.image_size} images, "
                             f"got {images.shape[-2]}×{images.shape[-1]}")
        latents = self.vae_encode(images)
        data = self.encoder({self.data_keys["vae_latents"]: latents})
        pre = data[self.data_keys["pre_fsq"]]
        values, ids, margin = self.fsq(pre)
        return Encoded(latents=values.to(pre.dtype), indices=ids,
                       extras={"pre_fsq": pre, "fsq_margin": margin, "vae_latents": latents})

    # ------------------------------------------------------------------ decode
    def token_values(self, tokens: torch.Tensor) -> torch.Tensor:
        """FSQ values B×k×d from ids B×k (or values, passed through), checked for shape."""
        if not torch.is_floating_point(tokens):
            if tokens.ndim != 2:
                raise ValueError(f"expected token ids B×k, got {tuple(tokens.shape)}")
            tokens = self.fsq.ids_to_values(tokens)
        if tokens.ndim != 3 or tokens.shape[-1] != self.token_dim:
            raise ValueError(f"expected FSQ values B×k×{self.token_dim}, got {tuple(tokens.shape)}")
        self.check_token_count(tokens.shape[1])
        return tokens

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, values: torch.Tensor,
                 keep_k: Optional[torch.Tensor] = None, uncond: Optional[torch.Tensor] = None,
                 decoder: Optional[nn.Module] = None) -> torch.Tensor:
        """One decoder call: the predicted velocity (≈ noise − clean latents) at x_t, time t (B,).

        ``values``: B×N×d conditioning codes (a prefix shorter than N is padded); ``keep_k`` (B,)
        how many are real (default: all given); ``uncond`` (B,) bool: the null condition.
        ``decoder``: a copy of ``self.decoder`` to run instead (the fast path's bf16 copy)."""
        decoder = self.decoder if decoder is None else decoder
        dtype = next(decoder.parameters()).dtype
        b, k = values.shape[:2]
        if k < self.num_tokens:
            values = torch.cat([values, values.new_zeros(b, self.num_tokens - k, values.shape[-1])], 1)
        if keep_k is None:
            keep_k = torch.full((b,), k, dtype=torch.long, device=values.device)
        data = {self.data_keys["cond"]: values.to(dtype), self.data_keys["keep_k"]: keep_k,
                self.data_keys["noised"]: x_t.to(dtype), self.data_keys["timesteps"]: t}
        if uncond is not None:
            if not self.has_null_condition:
                raise ValueError("this FlexTok has no null condition: guidance is unavailable")
            data[self.data_keys["drop_flag"]] = uncond
        return decoder(data)[self.data_keys["velocity"]]

    def sample_latents(self, values: torch.Tensor, noise: torch.Tensor, steps: int,
                       guidance_scale: float = 1.0, apg: bool = False,
                       progress: Optional[Callable[[int, int], None]] = None) -> torch.Tensor:
        """The official ``MinRFPipeline``: Euler from t = 1 (noise) to 0 on a uniform grid,
        x ← x − v/T; guidance (scale ≠ 1) adds a null-condition pass, combined by CFG or APG."""
        b, k = values.shape[:2]
        keep_k = torch.full((b,), k, dtype=torch.long, device=values.device)
        guided = guidance_scale != 1
        if guided:  # conditional and unconditional halves in one decoder call
            values2, keep2 = torch.cat([values, values]), torch.cat([keep_k, keep_k])
            flags = torch.arange(2 * b, device=values.device) >= b
        x = noise.to(self._dtype())
        momentum = torch.zeros_like(x, dtype=torch.float32)
        for i in range(steps, 0, -1):
            t = torch.full((b,), i / steps, device=x.device)
            if guided:
                v_c, v_u = self.velocity(torch.cat([x, x]), torch.cat([t, t]), values2, keep2,
                                         flags).float().chunk(2)
                if apg:
                    v, momentum = apg_velocity(v_c, v_u, guidance_scale, momentum)
                else:
                    v = v_u + guidance_scale * (v_c - v_u)
            else:
                v = self.velocity(x, t, values, keep_k).float()
            x = (x.float() - (1.0 / steps) * v).to(x.dtype)
            if progress is not None:
                progress(steps - i + 1, steps)
        return x

    def vae_decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.vae.decode(latents.to(self._dtype()) / self.scaling_factor)

    def decode(self, latents: torch.Tensor, noise: Optional[torch.Tensor] = None,
               seed: Optional[int] = None, steps: Optional[int] = None,
               guidance_scale: Optional[float] = None, apg: Optional[bool] = None) -> torch.Tensor:
        """Decode a prefix: FSQ values B×k×d (``encode(...).latents[:, :k]``) or ids B×k → images
        B×3×H×W ≈[-1, 1] (not clamped).

        Sampler settings left as None come from ``decode_options`` if one is in effect, else the
        release's (20 steps, guidance 7.5 with APG). ``guidance_scale=1`` runs no guidance pass.
        ``noise`` (B×C×h×w) is the initial VAE-latent noise; without it the noise is drawn from
        ``seed`` (default 0; see ``noise_from_seed``). What was used is in ``self.last_decode``
        (``fast``: whether the steps ran on the fast sampler, ``fast_decode_hook``)."""
        values = self.token_values(latents)
        b = values.shape[0]
        opts = decode_settings()
        steps = int_in_range("steps", opts["steps"] if steps is None else steps, 1, 1000)
        scale = float(opts["guidance_scale"] if guidance_scale is None else guidance_scale)
        if not math.isfinite(scale) or abs(scale) > 1e4:
            raise ValueError(f"guidance_scale must be a finite number, got {scale}")
        apg = bool(opts["apg"] if apg is None else apg)
        shape = (self.latent_channels, self.latent_size, self.latent_size)
        if noise is None:
            seed = int_in_range("seed", opts["seed"] if seed is None else seed, 0, 2 ** 63 - 1)
            noise = noise_from_seed(seed, b, shape, device=values.device)
        else:
            seed = None
            if tuple(noise.shape) != (b, *shape):
                raise ValueError(f"noise must be {b}×{'×'.join(map(str, shape))}, got {tuple(noise.shape)}")
        sampler = None
        if self.fast_sampler is not None:
            sampler = self.fast_sampler.sample_latents
        elif FlexTok.fast_decode_hook is not None:
            sampler = FlexTok.fast_decode_hook(self, b, steps, scale, apg)
        self.last_decode = {"seed": seed, "steps": steps, "guidance_scale": scale,
                            "apg": apg and scale != 1, "tokens": values.shape[1],
                            "fast": sampler is not None}
        x = (sampler or self.sample_latents)(values, noise.to(values.device), steps, scale, apg)
        return self.vae_decode(x)


def apg_velocity(v_c: torch.Tensor, v_u: torch.Tensor, scale: float, momentum: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive projected guidance (Sadat et al. 2024) as ``normalized_guidance`` does it, per image:
    momentum-averaged difference (momentum −0.5), its norm clipped to 2.5, and only its component
    orthogonal to v_c (projection in float64) added, times (scale − 1). Returns (v, momentum)."""
    momentum = (v_c - v_u) + APG_MOMENTUM * momentum
    dims = tuple(range(1, v_c.dim()))
    norm = momentum.norm(p=2, dim=dims, keepdim=True)
    diff = momentum * torch.minimum(torch.ones_like(norm), APG_NORM_THRESHOLD / norm)
    unit = F.normalize(v_c.double().flatten(1), dim=1).view_as(v_c)
    diff64 = diff.double()
    parallel = (diff64 * unit).sum(dim=dims, keepdim=True) * unit
    orthogonal = (diff64 - parallel).to(v_c.dtype)
    return v_c + (scale - 1) * orthogonal, momentum


# --------------------------------------------------------------------------- config, registry
# Key under which the loader hands over the diffusers config of a VAE named by ``vae.hf_hub_path``
# (read from that repo/folder); never part of ``FlexTok.config``.
VAE_CONFIG_KEY = "_vae_repo_config"


def flextok_vae_config(config: dict[str, Any]) -> dict[str, Any]:
    """The diffusers config of the VAE a FlexTok config describes: the VAE repo's own config when
    ``vae.hf_hub_path`` names one (the loader supplies it), else VAE_BASE_CONFIG with
    ``latent_channels`` and any ``vae_config_overrides``."""
    vae = config["vae"]
    if _target_name(vae, "vae") != "StableDiffusionVAE":
        raise ValueError(f"vae {vae['_target_']!r} is not supported (StableDiffusionVAE only)")
    if vae.get("hf_hub_path"):
        repo_config = config.get(VAE_CONFIG_KEY)
        if not isinstance(repo_config, dict):
            raise ValueError(f"this FlexTok's VAE lives in {vae['hf_hub_path']!r}: load it with "
                             "load_tokenizer, which fetches that VAE's config.json")
        return dict(repo_config)
    out = dict(VAE_BASE_CONFIG)
    out["latent_channels"] = vae.get("latent_channels", 4)
    overrides = vae.get("vae_config_overrides") or {}
    if not isinstance(overrides, dict):
        raise ValueError("vae.vae_config_overrides must be an object")
    out.update(overrides)
    return out


def vae_companion(config: dict[str, Any]) -> Optional[str]:
    """The VAE repo or folder a FlexTok config loads its VAE from (``vae.hf_hub_path``), if any."""
    vae = config.get("vae") or {}
    path = vae.get("hf_hub_path") if isinstance(vae, dict) else None
    return str(path) if path else None


def _is_flextok(config: dict) -> bool:
    enc = config.get("encoder")
    return isinstance(enc, dict) and "module_dict" in enc and "regularizer" in config \
        and "vae" in config


def _validate(config: dict) -> None:
    if config.get("decoder", {}).get("module_dict") is None:
        raise ValueError("FlexTok config: decoder has no module_dict")


def _attach_vae_config(config: dict, vae_config: dict) -> dict:
    if vae_config.get("_class_name") != "AutoencoderKL":
        raise ValueError(f"{config['vae']['hf_hub_path']!r} is not an AutoencoderKL (diffusers layout)")
    return {**config, VAE_CONFIG_KEY: vae_config}


register_family(Family("flextok", "tokenizer", _is_flextok, FlexTok, _validate,
                       companion=Companion(vae_companion, _attach_vae_config, "vae.vae.")))
