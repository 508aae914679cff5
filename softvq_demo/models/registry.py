"""Registry of model families: which class a ``config.json`` describes and how to build it.

Like timm's ``create_model``, one entry point (``build_model``) turns a config into a module; each
model file registers its family with a detector that recognises its config layout.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import nn


@dataclass(frozen=True)
class Companion:
    """A second repo or folder that a model's config names (FlexTok's VAE, ``vae.hf_hub_path``):
    its config.json completes the build config, and its weights fill the keys under ``prefix``
    that the model's own checkpoint lacks (the model's own tensors win, as in the official load)."""
    source: Callable[[dict], "str | None"]      # config -> repo id or folder, None if not used
    attach: Callable[[dict, dict], dict]        # (config, companion config) -> config to build
    prefix: str                                 # state-dict prefix of its tensors in the model


@dataclass(frozen=True)
class Family:
    name: str                                  # "softvq", "sit", "titok", "maskgit"
    kind: str                                  # "tokenizer" | "generator"
    detect: Callable[[dict], bool]             # does this config.json describe this family?
    build: Callable[[dict], nn.Module]         # config -> module with random/empty weights
    validate: Callable[[dict], None] | None = None  # raise ValueError on absurd/inconsistent configs
    companion: Companion | None = None          # a second repo/folder the config names


FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    FAMILIES[family.name] = family
    return family


def detect_family(config: dict[str, Any], kind: str | None = None) -> Family:
    matches = [f for f in FAMILIES.values() if (kind is None or f.kind == kind) and f.detect(config)]
    if not matches:
        others = [f.name for f in FAMILIES.values() if f.detect(config)]
        if others:
            raise ValueError(f"this config.json describes a {others[0]} model, not a {kind}")
        raise ValueError("config.json matches no known model family "
                         f"({', '.join(sorted(FAMILIES))})")
    return matches[0]


def build_model(config: dict[str, Any], kind: str | None = None) -> nn.Module:
    """Build the module a config describes (weights random; use loading.py to fill them)."""
    family = detect_family(config, kind)
    if family.validate is not None:
        family.validate(config)
    return family.build(config)
