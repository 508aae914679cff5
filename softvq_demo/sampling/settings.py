"""Each generator family's sampler settings, once, as data: name, label, default, range, choices.

The Generate tab's sliders, the CLI's options, the evaluation, the benchmarks and the samplers'
own checks all read these tables, so a range or a default is changed in one place.

    from softvq_demo.sampling import settings
    settings.defaults(gen)                 # {"steps": 50, "method": "euler", "cfg_scale": 1.75, ...}
    settings.check("sit", {"steps": 0})    # ValueError: steps must be an integer in [1, 1000] ...
    settings.guidance_key(gen)             # "cfg_scale" (SiT) / "guidance_scale" (MaskGIT)
    settings.unguided(gen)                 # the options that switch classifier-free guidance off

SiT defaults are a quick interactive setting (the paper's numbers use sde / 250 steps / CFG 1.75
on t ∈ [0, 0.7]: :data:`SIT_PAPER`); a SiT's config.json may override them in its optional
"sampling" dict. MaskGIT samples by default with its release settings from its config.json
(``model.generator``: num_steps, guidance_scale, guidance_decay, randomize_temperature).
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Optional

from ..models import flextok as _flextok
from ..models.maskgit import GUIDANCE_DECAYS

# Stochastic tokenizer decoders (FlexTok, issue 18) sample from noise: ``decode_options(seed=…)``
# sets the seed / steps / guidance of every decode inside the block (context-local, one per app
# request), ``decode_settings()`` says which are in effect. Re-exported here so that ui reaches
# them through sampling (ui → sampling → models), as docs/ARCHITECTURE.md's arrows say.
decode_options = _flextok.decode_options
decode_settings = _flextok.decode_settings

METHODS = ("euler", "heun", "sde")   # SiT: ODE (Euler, Heun) or SDE (Euler–Maruyama)


@dataclass(frozen=True)
class Setting:
    """One sampler option: ``kind`` int / float / str; a range (``low``..``high``) or ``choices``."""

    name: str
    label: str
    kind: type
    default: Any = None          # None: the model's own value (MaskGIT's release settings)
    low: Optional[float] = None
    high: Optional[float] = None
    step: Optional[float] = None  # the slider's increment
    choices: tuple = ()
    help: str = ""

    def check(self, value: Any) -> Any:
        """The value in its kind, or a ValueError naming the setting and its range."""
        if self.choices:
            if not isinstance(value, str) or value not in self.choices:
                raise ValueError(f"unknown {self.label} {value!r} ({self.name}): use one of "
                                 f"{', '.join(self.choices)}")
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{self.name} must be a number, got {value!r}")
        if self.kind is int and not isinstance(value, numbers.Integral):
            raise ValueError(f"{self.name} must be an integer in [{self.low:g}, {self.high:g}], "
                             f"got {value!r}")
        value = self.kind(value)
        if not math.isfinite(value) or not self.low <= value <= self.high:
            what = "an integer" if self.kind is int else "a finite number"
            raise ValueError(f"{self.name} must be {what} in [{self.low:g}, {self.high:g}], "
                             f"got {value!r}")
        return value


SIT: dict[str, Setting] = {s.name: s for s in (
    Setting("steps", "steps", int, 50, 1, 1000, 1, help="integration steps (sde: at least 2)"),
    Setting("method", "sampler", str, "euler", choices=tuple(METHODS),
            help="euler / heun (ODE) or sde (Euler–Maruyama)"),
    Setting("cfg_scale", "CFG scale", float, 1.75, 0.0, 20.0, 0.05,
            help="classifier-free guidance scale (1 = no guidance)"),
    Setting("guidance_low", "guidance from t =", float, 0.0, 0.0, 1.0, 0.05,
            help="guidance applies for t in [low, high]"),
    Setting("guidance_high", "guidance to t =", float, 0.7, 0.0, 1.0, 0.05),
)}

MASKGIT: dict[str, Setting] = {s.name: s for s in (
    Setting("steps", "steps", int, None, 1, 1000, 1, help="unmasking steps"),
    Setting("guidance_scale", "CFG scale", float, None, 0.0, 20.0, 0.05,
            help="classifier-free guidance scale"),
    Setting("guidance_decay", "guidance decay", str, None, choices=GUIDANCE_DECAYS,
            help="how the guidance scale changes over the steps"),
    Setting("randomize_temperature", "temperature", float, None, 0.0, 20.0, 0.1,
            help="Gumbel noise temperature of the first step (the last is greedy)"),
)}

FAMILIES: dict[str, dict[str, Setting]] = {"sit": SIT, "maskgit": MASKGIT}

# The generator attribute behind each MaskGIT setting (read from config.json's model.generator).
_MASKGIT_ATTRS = {"steps": "num_steps", "guidance_scale": "guidance_scale",
                  "guidance_decay": "guidance_decay", "randomize_temperature": "randomize_temperature"}

SIT_DEFAULTS = {k: s.default for k, s in SIT.items()}
SIT_PAPER = dict(SIT_DEFAULTS, steps=250, method="sde")  # the setting behind the papers' gFIDs


def family_settings(family: str) -> dict[str, Setting]:
    try:
        return FAMILIES[family]
    except KeyError:
        raise ValueError(f"no sampler settings for generator family {family!r}") from None


def defaults(generator) -> dict:
    """The options a generator samples with when none are given.

    SiT: :data:`SIT_DEFAULTS` under its config.json's optional "sampling" dict (unknown keys are
    ignored); MaskGIT: its release settings (the generator's attributes)."""
    if generator.family == "sit":
        extra = (getattr(generator, "config", None) or {}).get("sampling") or {}
        return {**SIT_DEFAULTS, **{k: v for k, v in extra.items() if k in SIT}}
    if generator.family == "maskgit":
        return {k: getattr(generator, attr) for k, attr in _MASKGIT_ATTRS.items()}
    family_settings(generator.family)
    return {}


def check(family: str, options: dict) -> dict:
    """Validate sampler options of a family; returns them converted (int steps, float scales).
    Unknown names raise, so that a misspelt option never silently does nothing."""
    table = family_settings(family)
    out = {}
    for name, value in options.items():
        if name not in table:
            raise ValueError(f"unknown {family} sampler option {name!r}: use "
                             f"{', '.join(table)}")
        out[name] = table[name].check(value)
    if family == "sit":
        if out.get("method") == "sde" and out.get("steps", 2) < 2:
            raise ValueError(f"steps must be at least 2 for sde, got {out['steps']}")
        lo, hi = out.get("guidance_low"), out.get("guidance_high")
        if lo is not None and hi is not None and lo > hi:
            raise ValueError("guidance interval must satisfy 0 <= low <= high <= 1, "
                             f"got [{lo}, {hi}]")
    return out


def resolve(generator, options: dict) -> dict:
    """The generator's defaults under the given options (None = not given), checked."""
    given = {k: v for k, v in options.items() if v is not None}
    return check(generator.family, {**defaults(generator), **given})


def guidance_key(generator) -> str:
    """The option that sets the classifier-free guidance scale."""
    family_settings(generator.family)
    return {"sit": "cfg_scale", "maskgit": "guidance_scale"}[generator.family]


def unguided(generator) -> dict:
    """Options that switch classifier-free guidance off. SiT: scale 1; MaskGIT: scale 0 under the
    linear / constant decays (logits + 0·(cond − uncond)), 1 under power-cosine (its scale is
    1 + (s − 1)·w(t))."""
    if generator.family == "sit":
        return dict(cfg_scale=1.0)
    if generator.family == "maskgit":
        return dict(guidance_scale=1.0 if generator.guidance_decay == "power-cosine" else 0.0)
    family_settings(generator.family)
    return {}


__all__ = ["Setting", "SIT", "MASKGIT", "FAMILIES", "METHODS", "SIT_DEFAULTS", "SIT_PAPER",
           "family_settings", "defaults", "check", "resolve", "guidance_key", "unguided"]
