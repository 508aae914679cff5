"""gradio's file cache, kept bounded and consistent under concurrent users.

- ``atomic_image_cache()``: result images are written to a temporary file and renamed into place
  (lossless PNG), so two users getting the same picture never see a half-written file.
- ``install_cache_sweep()``: gradio's expiry (``delete_cache``) walks snapshots of its sets and never
  raises; then files no live set names (decoded ``data:`` files, stray temp files) and empty hash
  folders go too.
- ``record_cache_names(demo)``: every temp-file set records when each path was last named, so a
  file named again within the TTL (the same bytes re-uploaded get the same path) is not deleted.

Patches gradio internals: the tested range is ``guard.GRADIO_TESTED``.
"""
from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

import gradio as gr
from gradio import processing_utils, route_utils
from gradio.utils import get_upload_folder

log = logging.getLogger("softvq_demo.ui")


def atomic_image_cache() -> None:
    """Make gradio write result images into its cache atomically.

    gradio names a result image by the hash of its bytes and rewrites that file in place
    (``write_bytes``) on every request that returns the same image. Two users getting the same
    picture at once (the same example, the same seed) then race: one can be served the file while
    the other has just truncated it — an empty image, seen in the 16-client load test. Here the
    bytes go to a temporary file renamed over the target, which also refreshes its age for
    ``delete_cache`` (gradio's own ``save_file_to_cache`` does the same for files)."""
    pu = processing_utils
    if getattr(pu.save_pil_to_cache, "_softvq_atomic", False):
        return

    def save_pil_to_cache(img, cache_dir: str, name: str = "image", format: str = "webp") -> str:
        # gr.Image's default webp is PIL's lossy quality 80: reconstructions and error maps would
        # carry compression artefacts of up to ~8/255. Researchers compare pixels: PNG, lossless.
        if format.lower() == "webp":
            format = "png"
        data = pu.encode_pil_to_bytes(img, format)
        folder = Path(cache_dir) / pu.hash_bytes(data)
        folder.mkdir(exist_ok=True, parents=True)
        target = (folder / f"{name}.{format}").resolve()
        fd, part = tempfile.mkstemp(dir=folder, prefix=".part-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(part, target)
        finally:
            if os.path.exists(part):
                os.remove(part)
        return str(target)

    save_pil_to_cache._softvq_atomic = True  # type: ignore[attr-defined]
    pu.save_pil_to_cache = save_pil_to_cache


# --------------------------------------------------------------------------- cache
# gradio names a cached file by the hash of its bytes, so the same upload (or result) again gets
# the same path. Its expiry judged that path by the file's age alone: a re-upload of bytes whose
# old copy had just expired was deleted between its upload and its request ("file not found", 1
# request in 128 under load). Here every live set records when each path was last named, and a file
# goes only when both it and its last naming are older than the TTL; the check and the removal
# hold one lock that the naming takes too.
CACHE_LOCK = threading.RLock()


class RecordedSet(set):
    """A set of cache paths that remembers when each was last added (gradio's temp-file sets)."""

    def __init__(self, items=()):
        super().__init__(items)
        now = time.time()
        self.named_at = {p: now for p in self}

    def add(self, item) -> None:
        with CACHE_LOCK:
            super().add(item)
            self.named_at[item] = time.time()

    def update(self, *others) -> None:
        with CACHE_LOCK:
            now = time.time()
            for other in others:
                for item in list(other):
                    super().add(item)
                    self.named_at[item] = now

    def forget(self, items, named_before: float) -> None:
        """Drop these paths unless one was named again at or after ``named_before``."""
        with CACHE_LOCK:
            for item in items:
                if self.named_at.get(item, 0.0) < named_before:
                    self.discard(item)
                    self.named_at.pop(item, None)


def record_cache_names(blocks: gr.Blocks) -> None:
    """Swap every temp-file set of the app (uploads, each component's results) for a RecordedSet,
    keeping each set's identity across ``temp_file_sets`` and its owner."""
    swapped: dict[int, RecordedSet] = {}

    def recorded(old):
        if isinstance(old, RecordedSet):
            return old
        if id(old) not in swapped:
            swapped[id(old)] = RecordedSet(old)
        return swapped[id(old)]

    with CACHE_LOCK:
        if isinstance(getattr(blocks, "upload_file_set", None), set):
            blocks.upload_file_set = recorded(blocks.upload_file_set)
        for comp in list(blocks.blocks.values()):
            if isinstance(getattr(comp, "temp_files", None), set):
                comp.temp_files = recorded(comp.temp_files)
        blocks.temp_file_sets = [recorded(s) for s in blocks.temp_file_sets]


def _last_named(blocks, path: str) -> float:
    return max((getattr(s, "named_at", {}).get(path, 0.0) for s in list(blocks.temp_file_sets)),
               default=0.0)


def _remove_if_expired(blocks, path: str, age: float, now: float) -> bool:
    """Delete ``path`` if its file and its last naming are both older than ``age`` s. True when
    the file is gone (deleted now, or missing already)."""
    with CACHE_LOCK:
        try:
            changed = Path(path).lstat()
        except FileNotFoundError:
            return True
        except OSError:
            return False
        # mtime: when the bytes were written (an upload's temp file, a result's atomic replace)
        if now - max(changed.st_mtime, _last_named(blocks, path)) <= age:
            return False
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
        except OSError as err:
            log.debug("cache expiry: %s: %s", os.path.basename(path), err)
            return False
        return True


def expire_named_files(blocks, age: Optional[int]) -> None:
    """gradio's expiry of the files its sets name, made safe: it walks snapshots (gradio's own
    walked the live sets that request threads add to; one "Set changed size during iteration"
    ended its schedule for good and the cache only grew), keeps ``keep_in_cache`` files and
    anything named within ``age`` s, and never raises. ``age=None`` (shutdown) deletes all."""
    try:
        keep: set = set()
        for component in list(blocks.blocks.values()):
            keep.update(getattr(component, "keep_in_cache", set()))
        started = time.time()
        for temp_set in list(blocks.temp_file_sets):
            gone = [f for f in list(temp_set) if f not in keep and
                    _remove_if_expired(blocks, f, -1.0 if age is None else age, started)]
            if isinstance(temp_set, RecordedSet):
                temp_set.forget(gone, named_before=started)
            else:
                temp_set.difference_update(gone)
    except Exception as err:  # the schedule must survive whatever happens in one sweep
        log.warning("cache expiry failed (will retry): %s", err)


def sweep_cache(blocks: gr.Blocks, age: Optional[float], cache_dir: Optional[str] = None) -> int:
    """Delete cache files older than ``age`` s that no live set of gradio names (decoded data: URLs,
    stray temp files, files of a set already expired) and hash folders left empty. Returns the
    number of files deleted; never raises."""
    removed = 0
    try:
        root = Path(cache_dir or get_upload_folder())
        if not root.is_dir() or age is None:
            return 0
        live: set = set()
        for fileset in list(blocks.temp_file_sets):
            live.update(os.path.realpath(f) for f in list(fileset))
        for comp in list(blocks.blocks.values()):
            live.update(os.path.realpath(f) for f in list(getattr(comp, "keep_in_cache", ())))
        now = time.time()
        for folder in list(root.iterdir()):
            if not folder.is_dir() or folder.is_symlink():
                continue
            try:   # before deleting in it (that makes it new); a fresh folder may be in use
                folder_old = now - folder.lstat().st_mtime > min(age, 60)
            except OSError:
                continue
            for f in list(folder.rglob("*")):
                try:
                    if f.is_file() and os.path.realpath(f) not in live and \
                            f.exists() and _remove_if_expired(blocks, str(f), age, now):
                        removed += 1
                except OSError:
                    continue
            try:
                # an upload is recorded before a background task moves it into its (existing)
                # folder: never remove a folder a recorded path points into, looked up just now
                with CACHE_LOCK:
                    if folder_old and not any(folder.iterdir()) and not _named_in(blocks, folder):
                        folder.rmdir()
            except OSError:
                continue
    except Exception as err:  # the schedule must survive whatever happens in one sweep
        log.warning("cache sweep failed (will retry): %s", err)
    return removed


def _named_in(blocks, folder: Path) -> bool:
    folder_text = os.path.abspath(folder) + os.sep
    for fileset in list(blocks.temp_file_sets):
        if any(os.path.abspath(f).startswith(folder_text) for f in list(fileset)):
            return True
    return False


def install_cache_sweep() -> None:
    """gradio's cache schedule (``delete_cache``) runs ``expire_named_files`` then ``sweep_cache``."""
    if getattr(route_utils.delete_files_created_by_app, "_softvq_sweeps", False):
        return

    def delete_files_created_by_app(blocks, age):
        expire_named_files(blocks, age)
        sweep_cache(blocks, age)

    delete_files_created_by_app._softvq_sweeps = True  # type: ignore[attr-defined]
    route_utils.delete_files_created_by_app = delete_files_created_by_app
