"""Model families. Importing this package registers every family with the registry."""
from .base import Encoded, Generator, Tokenizer
from .registry import FAMILIES, build_model, detect_family, register_family
from . import softvq, sit  # noqa: F401  (registration side effects)
import importlib as _importlib
import pathlib as _pathlib

for _name in ("titok", "maskgit"):  # TODO(lead): plain imports once these files have landed
    if (_pathlib.Path(__file__).parent / f"{_name}.py").exists():
        _importlib.import_module(f".{_name}", __name__)

__all__ = ["Encoded", "Generator", "Tokenizer", "FAMILIES", "build_model", "detect_family",
           "register_family"]
