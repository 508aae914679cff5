"""Shared pieces of the UI: error handling, ZeroGPU, number formatting, the app context, gradio guards."""
from __future__ import annotations

import functools
import importlib.util
import inspect
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import gradio as gr
from gradio.utils import NamedString
from gradio_client import utils as client_utils

from ..loading import CheckpointError
from ..sampling.oom import is_out_of_memory, release_memory
from ..sampling.settings import decode_options, decode_settings
from .inputs import InputError, check_number, parse_int
from .manager import ModelManager

log = logging.getLogger("softvq_demo.ui")
ROOT = Path(__file__).resolve().parents[2]
EXAMPLES_DIR = ROOT / "assets" / "examples"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


# --------------------------------------------------------------------------- ZeroGPU
try:  # optional, ZeroGPU Spaces only: functions that use the GPU are decorated with spaces.GPU
    import spaces  # type: ignore

    def gpu(fn=None, *, duration: int = 60):
        if fn is None:
            return lambda f: spaces.GPU(duration=duration)(f)
        return spaces.GPU(duration=duration)(fn)

    ON_SPACES = True
except ImportError:  # anywhere else: a no-op
    def gpu(fn=None, *, duration: int = 60):
        if fn is None:
            return lambda f: f
        return fn

    ON_SPACES = False


# --------------------------------------------------------------------------- errors
def handler(fn: Callable) -> Callable:
    """Wrap an event handler: user mistakes and model errors become a readable gr.Error; nothing
    else escapes as a stack trace to the browser, and the server keeps serving."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except (InputError, CheckpointError, ValueError, KeyError, IndexError) as err:
            msg = str(err).strip("'\"") or type(err).__name__
            raise gr.Error(msg, print_exception=False) from None
        except Exception as err:
            if not is_out_of_memory(err):  # a bug: log it for the operator, keep the UI message short
                log.exception("handler %s failed", fn.__name__)
                raise gr.Error(f"internal error ({type(err).__name__}: {str(err)[:200]}); the server "
                               "is still running — try other settings", print_exception=False) from None
            log.warning("handler %s: out of memory (%s)", fn.__name__, err)
        release_memory()  # outside the except block: its traceback held the failed call's tensors
        raise gr.Error("out of memory: try fewer images or a smaller batch", print_exception=False)

    return wrapper


def event(fn: Callable, duration: int = 60) -> Callable:
    """handler + ZeroGPU decoration (the order matters: spaces.GPU must see the final function)."""
    return gpu(handler(fn), duration=duration)


# --------------------------------------------------------------------------- OCR
def ocr_missing() -> Optional[str]:
    """Why OCR cannot run here (its optional engine is not installed), or None when it can."""
    if importlib.util.find_spec("rapidocr_onnxruntime") is None:
        return "OCR unavailable: rapidocr-onnxruntime is not installed"
    return None


# --------------------------------------------------------------------------- app context
@dataclass
class Ctx:
    """What every tab needs: the shared manager and the header's model pickers."""

    manager: ModelManager
    tok_a: Any = None
    tok_b: Any = None
    gen: Any = None
    decode_seed: Any = None  # header seed of stochastic decoders (FlexTok); see ``seeded``
    ocr_error: Optional[str] = field(default_factory=ocr_missing)  # None: OCR can run
    examples: list = field(default_factory=list)

    @property
    def ocr_on(self) -> bool:
        return self.ocr_error is None

    def tokenizer(self, name):
        return self.manager.tokenizer(name)


def list_examples(folder: Path = EXAMPLES_DIR) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def image_input(label: str, **kwargs) -> gr.Image:
    """An upload box whose value reaches handlers as the raw uploaded path: validation (format,
    pixel cap before decoding, modes, EXIF) is ours, so every failure has a readable message."""
    comp = gr.Image(label=label, type="filepath", image_mode=None, sources=["upload", "clipboard"],
                    **kwargs)
    original = comp.preprocess

    def preprocess(payload):
        if payload is None:
            return None
        path = getattr(payload, "path", None)
        if path and not (getattr(payload, "url", None) or "").startswith("data:"):
            return str(path)
        return original(payload)

    comp.preprocess = preprocess  # type: ignore[method-assign]
    return comp


def guard_numbers(blocks: gr.Blocks) -> int:
    """Every number box and slider refuses NaN, ±inf, huge and non-numeric values with a message
    naming the field (gradio's own checks miss NaN, or fail with an internal conversion error).
    Returns how many components were guarded."""
    count = 0
    for comp in blocks.blocks.values():
        if not isinstance(comp, (gr.Number, gr.Slider)) or getattr(comp, "_softvq_guarded", False):
            continue
        original = comp.preprocess
        name = str(comp.label or comp.elem_id or "number")

        def preprocess(payload, _original=original, _name=name,
                       _allow_none=isinstance(comp, gr.Number)):
            try:
                check_number(payload, _name, allow_none=_allow_none)
            except InputError as err:
                raise gr.Error(str(err), print_exception=False) from None
            return _original(payload)

        comp.preprocess = preprocess  # type: ignore[method-assign]
        comp._softvq_guarded = True   # type: ignore[attr-defined]
        count += 1
    return count


def guard_files(blocks: gr.Blocks) -> int:
    """File upload boxes pass their paths without gradio 6's stray temp file.

    ``gr.File(type="filepath")`` creates an empty ``NamedTemporaryFile(delete=False)`` in the cache
    for every file of every request and never uses or deletes it (nor does ``delete_cache``, which
    only knows the files it handed out): 160 empty files after the load test. This keeps gradio's
    file-type check and returns the uploaded path, as gradio does, without that file."""
    count = 0
    for comp in blocks.blocks.values():
        if not isinstance(comp, gr.File) or comp.type != "filepath" or \
                getattr(comp, "_softvq_guarded", False):
            continue

        def single(f, _comp=comp):
            if _comp.file_types and not client_utils.is_valid_file(f.path, _comp.file_types):
                raise gr.Error("Invalid file type. Please upload a file that is one of these formats: "
                               f"{_comp.file_types}", print_exception=False)
            return NamedString(f.path)

        comp._process_single_file = single  # type: ignore[method-assign]
        comp._softvq_guarded = True         # type: ignore[attr-defined]
        count += 1
    return count


# --------------------------------------------------------------------------- stochastic decoders
# FlexTok decodes by sampling from noise. One header field, the decode seed, is the last input of
# every event that decodes; ``seeded`` runs the handler with it in effect (context-local, so users
# never see each other's seed), so all decodes of one request share their noise.
DECODE_SEED_MAX = 2**31 - 1


def seeded(fn: Callable) -> Callable:
    """``fn`` taking one more input: the decode seed, after its regular inputs (before a
    ``gr.Progress`` parameter, whose place gradio finds from the signature), in effect while ``fn``
    runs."""
    sig = inspect.signature(fn)
    params = list(sig.parameters.values())
    at = next((i for i, p in enumerate(params) if isinstance(p.default, gr.Progress)), len(params))
    seed_param = inspect.Parameter("decode_seed", inspect.Parameter.POSITIONAL_OR_KEYWORD)

    def wrapper(*args, **kwargs):
        args = list(args)
        seed = args.pop(at) if len(args) > at else kwargs.pop("decode_seed", 0)
        seed = parse_int(seed if seed is not None else 0, "decode seed", 0, DECODE_SEED_MAX)
        with decode_options(seed=seed):
            return fn(*args, **kwargs)

    wrapper.__signature__ = sig.replace(parameters=params[:at] + [seed_param] + params[at:])
    wrapper.__name__ = getattr(fn, "__name__", "handler")
    wrapper.__doc__ = fn.__doc__
    return wrapper


def decode_note(tok) -> str:
    """How a stochastic decoder drew this reconstruction ("" for deterministic decoders)."""
    if not getattr(tok, "stochastic_decode", False):
        return ""
    o = decode_settings()
    guidance = "no guidance" if o["guidance_scale"] == 1 else \
        f"guidance {o['guidance_scale']:g}" + (" (APG)" if o["apg"] else " (CFG)")
    return (f"Sampled from noise: decode seed **{o['seed']}**, {o['steps']} flow steps, {guidance} "
            "(release settings); pick another decode seed (🎲 in the header) and run again to redraw.")
