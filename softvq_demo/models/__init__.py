"""Model families. Importing this package registers every family with the registry."""
from .base import Encoded, Generator, Tokenizer
from .registry import FAMILIES, build_model, detect_family, register_family
from . import softvq, sit, titok, maskgit  # noqa: F401  (registration side effects)
from . import flextok_vae, flextok  # noqa: F401,E402  (registration side effects)

__all__ = ["Encoded", "Generator", "Tokenizer", "FAMILIES", "build_model", "detect_family",
           "register_family"]
