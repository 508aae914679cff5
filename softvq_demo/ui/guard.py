"""The public app's boundary with gradio: what a request may carry, and what a reply may say.

Everything a browser or a script sends passes here before gradio or a handler sees it:

- ``guard_inputs(demo)``: one check of every input of every event (``Blocks.preprocess_data``):
  the number of values; Image and File inputs only name files this server wrote (its uploads, the
  bundled examples, its own results), never a ``data:`` URL or any other path; choices, texts and
  lists have a type and a length limit. Failures name the field.
- ``install_error_messages()``: every error sent to a client is short (≤ 300 characters) and shows
  no traceback, object repr, server path or long echo of the input (``gradio.utils.error_payload``).
- ``install_cancellation()``: a client's cancel marks its event; the long loops of the library call
  ``softvq_demo.cancel.raise_if_cancelled()`` and stop within a step.
- ``install_http_limits()``: request bodies are bounded (JSON and uploads), unknown endpoints and bad
  function indices answer 4xx instead of 500 (an ASGI middleware on gradio's app).
- ``install_cache_sweep()``, ``record_cache_names()``: gradio's cache expiry walks snapshots, keeps
  a file named again within the TTL (a re-upload of the same bytes has the same path), and also
  deletes files no live set names (decoded ``data:`` files, stray temp files) and empty folders.
- ``tune_allocator()``: large buffers go back to the OS when freed (glibc).

Patches gradio internals: tested with the gradio range in ``GRADIO_TESTED`` (requirements.txt pins
it); ``check_gradio()`` logs a warning outside it, and tests/test_redteam.py re-checks each patch.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
import stat
import threading
import time
from pathlib import Path
from typing import Any, Optional

import gradio as gr
import torch
from gradio import helpers, queueing, routes, utils
from gradio import processing_utils as pu
from gradio.context import LocalContext
from gradio.exceptions import Error, InvalidPathError
from gradio.utils import get_upload_folder
from pydantic import ValidationError

from .. import cancel
from .cache import install_cache_sweep, record_cache_names
from .inputs import InputError, check_number, short, tune_allocator

log = logging.getLogger("softvq_demo.ui")

GRADIO_TESTED = ((6, 0), (6, 32))      # [from, to): tested on 6.31.0
ROOT = Path(__file__).resolve().parents[2]
EXAMPLES_DIR = ROOT / "assets" / "examples"

MAX_MESSAGE = 300                      # characters in any error a client sees
MAX_TEXT = 10_000                      # characters in a text box / dropdown value
MAX_LIST = 256                         # items in a multi-select or a multi-file input
MAX_FILE_BYTES = 50_000_000            # one uploaded file (= data.images.MAX_BYTES)
MAX_UPLOAD_BYTES = 300_000_000         # one upload request (several files)
MAX_BODY_BYTES = 2_000_000             # any other request body (JSON)


def check_gradio() -> bool:
    """True when the installed gradio is in the tested range (else a warning is logged)."""
    nums = tuple(int(p) for p in re.findall(r"\d+", gr.__version__)[:2])
    ok = GRADIO_TESTED[0] <= nums < GRADIO_TESTED[1]
    if not ok:
        log.warning("gradio %s is outside the tested range %s..%s: the app's patches of gradio "
                    "internals may not hold", gr.__version__, GRADIO_TESTED[0], GRADIO_TESTED[1])
    return ok


# --------------------------------------------------------------------------- messages
_PATH = re.compile(r"(?<![\w.:/])(?:~|\.{1,2})?/(?:[^\s/'\"<>,;:()\[\]]+/)+[^\s/'\"<>,;:()\[\]]*")
_REPR = re.compile(r"<[^<>]*\bobject at 0x[0-9a-fA-F]+>|\bat 0x[0-9a-fA-F]{6,}")
_QUOTED = re.compile(r"""(['"])([^'"\n]{41,})\1""")


def scrub_paths(text: str) -> str:
    """Server paths → their last component (for text the public config shows: model notes)."""
    return _PATH.sub(lambda m: Path(m.group(0).rstrip("/")).name[:40] or "a path", str(text))


def clean_message(text: Any, limit: int = MAX_MESSAGE) -> str:
    """A message as a client may see it: no traceback, object repr or server path, quoted values
    cut to 40 characters, at most ``limit`` characters in all."""
    text = str(text if text is not None else "")
    cut = text.find("Traceback (most recent call last)")
    if cut >= 0:
        text = text[:cut]
    text = scrub_paths(_REPR.sub("a value", text))
    text = _QUOTED.sub(lambda m: f"{m.group(1)}{m.group(2)[:37]}...{m.group(1)}", text)
    text = re.sub(r"\s+", " ", text).strip()
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return text or "the request could not be processed"


def _public_error(error: BaseException) -> str:
    """What a client is told about an exception that reached gradio's error reply."""

    if isinstance(error, InvalidPathError):
        return "file refused: it was not uploaded by a user of this server"
    if isinstance(error, Error):
        return clean_message(error.message)
    try:
        if isinstance(error, ValidationError):
            return "a value has the wrong form for its field"
    except ImportError:  # pragma: no cover
        pass
    return clean_message(f"the request could not be processed ({type(error).__name__}: {error})")


def install_error_messages() -> None:
    """Every error payload gradio sends (queue and direct calls) carries a clean message."""

    if getattr(utils.error_payload, "_softvq_clean", False):
        return
    original = utils.error_payload

    @functools.wraps(original)
    def error_payload(error, show_error):
        content = original(error, show_error)
        if error is not None:
            content["error"] = _public_error(error)
            content.setdefault("visible", True)
        return content

    error_payload._softvq_clean = True  # type: ignore[attr-defined]
    utils.error_payload = error_payload
    queueing.error_payload = error_payload


# --------------------------------------------------------------------------- inputs
def field_name(block) -> str:
    label = getattr(block, "label", None) or getattr(block, "elem_id", None) or type(block).__name__
    return clean_message(label, 60)


def _refuse(block, why: str):
    raise gr.Error(clean_message(f"{field_name(block)}: {why}"), print_exception=False)


def _real(path: str) -> Optional[str]:
    try:
        return os.path.realpath(path)
    except (OSError, ValueError):
        return None


class FilePolicy:
    """Which files a request may name: the ones this server wrote (gradio's record of uploads and
    of the files it handed out, incl. cached examples; or, failing the record, a cache file whose
    folder is its keyed hash) and the bundled examples. Gradio names them
    ``<cache>/<sha256 keyed by a per-server secret>/<name>``: a path cannot be guessed from a file's
    content, so a session can only name another session's file if it was given its URL."""

    def __init__(self, blocks: gr.Blocks, extra_dirs=(EXAMPLES_DIR,)):
        self.blocks = blocks
        self.extra_dirs = [os.path.realpath(d) for d in extra_dirs]

    def written_by_server(self, real: str) -> bool:
        for fileset in list(self.blocks.temp_file_sets):
            try:
                if real in fileset:
                    return True
            except RuntimeError:   # changed size mid-test: copy and look again
                if real in set(fileset):
                    return True
        for comp in list(self.blocks.blocks.values()):
            if real in getattr(comp, "keep_in_cache", ()):
                return True
        return False

    def allowed(self, path: Any) -> bool:
        if not isinstance(path, str) or not path or len(path) > 4096 or "\0" in path:
            return False
        # gradio's record first, without touching the file: an upload's path is recorded (and
        # returned to the client) before a background task has moved the file there
        if self.written_by_server(os.path.abspath(path)):
            return True
        real = _real(path)
        if real is None:
            return False
        try:
            if not stat.S_ISREG(os.lstat(path).st_mode):   # no links, folders, devices, fifos
                return False
        except (OSError, ValueError):
            return False
        if any(real.startswith(d + os.sep) for d in self.extra_dirs):
            return True
        return self.signed_by_server(real)

    @staticmethod
    def signed_by_server(real: str) -> bool:
        """A file in gradio's cache whose folder is the sha256 of (this server's secret seed +
        its bytes): gradio names every upload and every cached result so, and nobody without the
        seed can. Covers files gradio's record has dropped (its expiry sweep removes a path it
        finds missing, which happens while an upload is still being moved into place)."""

        root = os.path.realpath(get_upload_folder())
        if not real.startswith(root + os.sep):
            return False
        try:
            if os.path.getsize(real) > MAX_UPLOAD_BYTES:
                return False
            return Path(real).parent.name == pu.hash_file(real)
        except OSError:
            return False


def _check_file(block, payload, policy: FilePolicy) -> None:
    if not isinstance(payload, dict):
        _refuse(block, "expected an uploaded file")
    url = payload.get("url")
    if isinstance(url, str) and url.strip().lower().startswith("data:"):
        _refuse(block, "inline data: URLs are not accepted; upload the file instead")
    path = payload.get("path")
    if not isinstance(path, str) or not path.strip():
        _refuse(block, "no file given (an uploaded file has a path)")
    if not policy.allowed(path):
        _refuse(block, "file refused: it was not uploaded by a user of this server (or it "
                       "expired): upload it again")


def _scalar(v) -> bool:
    return v is None or isinstance(v, (str, int, float)) and not isinstance(v, bool)


def check_value(block, value, policy: FilePolicy) -> None:
    """One input value, by its component type (raises gr.Error naming the field)."""
    if isinstance(block, gr.Image):
        if value is not None:
            _check_file(block, value, policy)
    elif isinstance(block, gr.File):
        if value is None:
            return
        items = value if isinstance(value, list) else [value]
        if len(items) > MAX_LIST:
            _refuse(block, f"{len(items)} files: at most {MAX_LIST} at a time")
        seen = set()
        for item in items:
            _check_file(block, item, policy)
            seen.add(item.get("path"))
        if len(seen) < len(items):
            _refuse(block, "the same file is listed more than once")
    elif isinstance(block, (gr.Dropdown, gr.Radio)):
        multi = isinstance(block, gr.Dropdown) and bool(getattr(block, "multiselect", False))
        items = value if (multi and isinstance(value, list)) else [value]
        if multi and len(items) > MAX_LIST:
            _refuse(block, f"{len(items)} choices: at most {MAX_LIST}")
        for v in items:
            if not _scalar(v):
                _refuse(block, "expected a choice (text or number)" + (" or a list of them" if multi else ""))
            if isinstance(v, str) and len(v) > MAX_TEXT:
                _refuse(block, f"value of {len(v):,} characters (at most {MAX_TEXT:,})")
        if not getattr(block, "allow_custom_value", False):
            choices = [c[1] if isinstance(c, (tuple, list)) else c for c in (block.choices or [])]
            bad = [v for v in items if v is not None and v not in choices]
            if bad:   # a short plain value is named (it says which); a long one never echoed
                v = bad[0]
                named = f"{v!r} is " if isinstance(v, str) and len(v) <= 40 and v.isprintable() \
                    and "/" not in v else ""
                _refuse(block, f"{named}not in the list of choices")
    elif isinstance(block, gr.Textbox):
        if value is not None and not isinstance(value, str):
            _refuse(block, "expected text")
        if isinstance(value, str) and len(value) > MAX_TEXT:
            _refuse(block, f"{len(value):,} characters (at most {MAX_TEXT:,})")
    elif isinstance(block, gr.Dataset):
        n = len(getattr(block, "raw_samples", None) or getattr(block, "samples", None) or [])
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                  or not 0 <= value < n):
            _refuse(block, f"example index must be a whole number in 0..{max(n - 1, 0)}")
    elif isinstance(block, (gr.Number, gr.Slider)):
        try:
            check_number(value, field_name(block), allow_none=isinstance(block, gr.Number))
        except InputError as err:
            raise gr.Error(clean_message(err), print_exception=False) from None
        lo, hi = getattr(block, "minimum", None), getattr(block, "maximum", None)
        if value is not None and ((lo is not None and float(value) < lo) or
                                  (hi is not None and float(value) > hi)):
            _refuse(block, f"{short(value)} is out of range: choose "
                           f"{short(lo) if lo is not None else '−∞'}..{short(hi) if hi is not None else '∞'}")
    elif isinstance(block, gr.Checkbox):
        if value is not None and not isinstance(value, bool):
            _refuse(block, "expected true or false")


def _session_copy(block, state):
    """The session's own copy of a component (its choices may have been updated), as gradio uses."""
    try:
        if state is not None and block._id in state:
            return state[block._id]
    except Exception:  # noqa: BLE001 - fall back to the shared component
        pass
    return block


def _file_paths(fields) -> list[str]:
    paths = []
    for block, value in fields:
        if isinstance(block, (gr.Image, gr.File)) and value is not None:
            for item in value if isinstance(value, list) else [value]:
                paths.append(item["path"])
    return paths


async def _pending_moves(fields, wait_s: float = 2.0) -> None:
    """gradio answers an upload with its path, then moves the file there in a background task: a
    request sent at once can arrive first. Wait (without blocking the server) until the files are
    in place, at most ``wait_s``; a file still missing then fails in gradio's own read."""
    missing = [p for p in _file_paths(fields) if not os.path.exists(p)]
    deadline = time.monotonic() + wait_s
    while missing and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        missing = [p for p in missing if not os.path.exists(p)]


def guard_inputs(demo: gr.Blocks) -> FilePolicy:
    """Check every event's inputs before gradio processes them (see module doc)."""
    policy = FilePolicy(demo)
    if getattr(demo, "_softvq_inputs_guarded", False):
        return policy
    original = demo.preprocess_data

    async def preprocess_data(block_fn, inputs, state, explicit_call: bool = False):
        expected = block_fn.inputs
        if isinstance(inputs, list) and len(inputs) < len(expected) and all(
                isinstance(b, gr.Number) for b in expected[len(inputs):]):
            # trailing number inputs added later (the FlexTok decode seed) may be left out, as
            # gradio_client allows, so older API calls keep working: they take their defaults
            inputs = inputs + [b.value for b in expected[len(inputs):]]
        if not isinstance(inputs, list) or len(inputs) != len(expected):
            n = len(inputs) if isinstance(inputs, list) else 0
            api = [b for b in expected if not getattr(b, "skip_api", False)]   # state: not sent
            names = ", ".join(field_name(b) for b in api)
            raise gr.Error(clean_message(f"expected {len(api)} values ({names}), got {n}"),
                           print_exception=False)
        fields = [(_session_copy(b, state), v) for b, v in zip(expected, inputs)
                  if not getattr(b, "stateful", False)]   # state: the server's own, whatever sent
        # what is wrong with a value first, then whether its file is still here (an expired
        # upload must not hide a bad number in another field)
        for block, value in sorted(fields, key=lambda bv: isinstance(bv[0], (gr.Image, gr.File))):
            check_value(block, value, policy)
        await _pending_moves(fields)
        try:
            return await original(block_fn, inputs, state, explicit_call)
        except Exception as err:  # gradio's own validation: a user's mistake, answered quietly
            log.warning("refused input of %s: %s", getattr(block_fn, "name", "?"),
                        clean_message(f"{type(err).__name__}: {err}"))
            raise gr.Error(_public_error(err), print_exception=False) from None

    demo.preprocess_data = preprocess_data  # type: ignore[method-assign]
    demo._softvq_inputs_guarded = True      # type: ignore[attr-defined]
    return policy


# --------------------------------------------------------------------------- cancellation
_cancelled: dict[str, float] = {}
_cancel_lock = threading.Lock()
CANCEL_MEMORY_S = 3600


def _current_event_cancelled() -> bool:
    if not _cancelled:
        return False

    event_id = LocalContext.event_id.get(None)
    return event_id is not None and event_id in _cancelled


def mark_cancelled(event_ids) -> None:
    now = time.time()
    with _cancel_lock:
        for e in event_ids:
            _cancelled[str(e)] = now
        for e, t in list(_cancelled.items()):
            if now - t > CANCEL_MEMORY_S:
                _cancelled.pop(e, None)


def install_cancellation() -> None:
    """A client's cancel (gradio's /cancel route) marks the events it stops; code running for them
    raises ``Cancelled`` at its next ``raise_if_cancelled()``, and so does its next progress
    update. Gradio itself only cancels the asyncio task: the worker thread ran on."""


    cancel.register(_current_event_cancelled)
    if getattr(routes.cancel_tasks, "_softvq_marks", False):
        return

    def check_before_forward(module, args):
        # every module's forward looks too: one sampler step of a large model takes seconds on
        # a CPU, a layer milliseconds. Skipped while torch.compile traces (constant there).
        if _cancelled and not torch.compiler.is_compiling():
            cancel.raise_if_cancelled()

    torch.nn.modules.module.register_module_forward_pre_hook(check_before_forward)
    original = routes.cancel_tasks

    async def cancel_tasks(task_ids):
        event_ids = await original(task_ids)
        mark_cancelled(event_ids or [])
        return event_ids

    cancel_tasks._softvq_marks = True  # type: ignore[attr-defined]
    routes.cancel_tasks = cancel_tasks

    progress_call = helpers.Progress.__call__

    @functools.wraps(progress_call)
    def call(self, *args, **kwargs):
        cancel.raise_if_cancelled()
        return progress_call(self, *args, **kwargs)

    helpers.Progress.__call__ = call  # type: ignore[method-assign]


# --------------------------------------------------------------------------- HTTP limits
class _BodyTooLarge(Exception):
    pass


class RequestLimits:
    """ASGI middleware: bounded bodies, 4xx for unknown endpoints, bad indices and malformed
    requests (gradio answers these with a bare 500)."""

    def __init__(self, app, blocks: Optional[gr.Blocks] = None):
        self.app = app
        self.blocks = blocks

    def _api_names(self) -> set:
        blocks = self.blocks
        if blocks is None:
            return set()
        return {str(f.api_name) for f in blocks.fns.values() if f.api_name}

    async def _reply(self, send, status: int, text: str):
        body = clean_message(text).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        upload = path.rstrip("/").endswith("/upload")
        limit = MAX_UPLOAD_BYTES if upload else MAX_BODY_BYTES
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                return await self._reply(send, 400, "invalid Content-Length")
            if n > limit:
                return await self._reply(send, 413, f"request body too large ({n / 1e6:.1f} MB; "
                                                    f"limit {limit / 1e6:.0f} MB)")
        m = re.search(r"/call/([^/]+)/?$", path)
        if m and scope.get("method") == "POST" and self.blocks is not None:
            if m.group(1).lstrip("/") not in self._api_names():
                return await self._reply(send, 404, "unknown endpoint")
        received = 0

        async def counted_receive():
            nonlocal received
            message = await receive()
            if message.get("type") == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge()
            return message

        if not upload and scope.get("method") in ("POST", "PUT", "PATCH"):
            # read the (small) body here, so that a too large one is answered 413 whatever the
            # route does with errors while reading it; the route then reads the copy
            parts, more = [], True
            while more:
                message = await receive()
                if message.get("type") != "http.request":
                    return
                parts.append(message.get("body", b""))
                received += len(parts[-1])
                if received > limit:
                    return await self._reply(send, 413, f"request body too large (limit "
                                                        f"{limit / 1e6:.0f} MB)")
                more = message.get("more_body", False)
            body, replayed = b"".join(parts), False

            async def replayed_receive():   # the buffered body, then the real stream
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()
            app_receive = replayed_receive
        else:
            app_receive = counted_receive

        started = False

        async def tracked_send(message):
            nonlocal started
            if message.get("type") == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, app_receive, tracked_send)
        except _BodyTooLarge:
            if not started:
                await self._reply(send, 413, f"request body too large (limit {limit / 1e6:.0f} MB)")
        except Exception as err:
            if started:
                raise
            log.warning("refused %s %s: %s: %s", scope.get("method"), path, type(err).__name__,
                        clean_message(err))
            status = 404 if isinstance(err, (KeyError, IndexError)) else 400
            await self._reply(send, status, "invalid request" + (
                " (unknown function index?)" if status == 404 else ""))


def install_http_limits(demo: gr.Blocks) -> None:
    """Add ``RequestLimits`` to the FastAPI app gradio creates at launch for ``demo``."""

    create = routes.App.create_app
    if getattr(create, "_softvq_limits", False):
        return

    @functools.wraps(create)
    def create_app(blocks, *args, **kwargs):
        app = create(blocks, *args, **kwargs)
        app.add_middleware(RequestLimits, blocks=blocks)
        return app

    create_app._softvq_limits = True  # type: ignore[attr-defined]
    routes.App.create_app = staticmethod(create_app)  # type: ignore[method-assign]


def launch_settings() -> dict:
    """Keyword arguments for ``demo.launch`` that bound uploads."""
    return {"max_file_size": MAX_FILE_BYTES}


def install(demo: gr.Blocks) -> None:
    """Everything above, for one app (called by ``build_app`` after the tabs are built)."""
    check_gradio()
    install_error_messages()
    install_cancellation()
    install_http_limits(demo)
    install_cache_sweep()
    record_cache_names(demo)
    tune_allocator()
    guard_inputs(demo)
