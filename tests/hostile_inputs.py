"""Hostile inputs shared by the reliability and red-team tests: damaged and odd image files (a
fixed set and a hypothesis strategy), per-client pictures for the load test, and the raw-HTTP
calls both make (a body as written, NaN included, which gradio_client cannot send). Not a test
module."""
from __future__ import annotations

import colorsys
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
from hypothesis import strategies as st
from PIL import Image, ImageDraw

# Phrases that must never reach a user: a traceback, a repr, a server path, gradio's own failures.
UNCLEAR = ("Traceback", "internal error", "Could not preprocess", "object at 0x", 'File "')


def assert_clear(msg: str) -> str:
    assert msg and msg.strip(), "empty error message"
    for bad in UNCLEAR:
        assert bad not in msg, msg[:1500]
    assert len(msg) < 2500, msg[:300]
    return msg


# ----------------------------------------------------------------------------- raw HTTP
def post_call(api_root: str, api: str, data=None, *, raw_body: bytes | None = None,
              timeout: float = 120) -> tuple[str, object]:
    """POST ``{"data": data}`` to ``<api_root>call/<api>`` (``api_root`` is the server's
    ``…/gradio_api/``), NaN and ±Infinity written as JSON literals (a browser or a script can send
    them), or ``raw_body`` as it is; then read the event stream. Returns ('complete', outputs),
    ('error', message), ('http', 'status text') when the POST itself is refused, or ('none', None)
    when the stream ends without either event."""
    import httpx

    base = api_root + "call/" + api.strip("/")
    body = raw_body if raw_body is not None else json.dumps({"data": data}, allow_nan=True).encode()
    r = httpx.post(base, content=body, headers={"content-type": "application/json"}, timeout=timeout)
    if r.status_code != 200:
        return "http", f"{r.status_code} {r.text[:400]}"
    text = httpx.get(f"{base}/{r.json()['event_id']}", timeout=timeout).text
    event, payload = "none", None
    for block in text.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if lines.get("event") in ("complete", "error"):
            event, payload = lines["event"], lines.get("data")
    if event == "error":
        err = json.loads(payload) if payload and payload != "null" else None
        return "error", (err.get("error") if isinstance(err, dict) else str(err))
    return event, json.loads(payload) if payload else None


def upload_file(api_root: str, path, timeout: float = 120) -> dict:
    """Upload one file through ``<api_root>upload``; the FileData a request names it by."""
    import httpx

    with open(path, "rb") as fh:
        r = httpx.post(api_root + "upload", files={"files": (Path(path).name, fh)}, timeout=timeout)
    r.raise_for_status()
    return {"path": r.json()[0], "meta": {"_type": "gradio.FileData"}}


# ----------------------------------------------------------------------------- images
def png_stream(width: int, height: int, rows: int | None = None) -> bytes:
    """A greyscale PNG of zeros, compressed row by row (the pixels never sit in memory); with
    ``rows`` only that many rows of data follow the header (a bomb: the header is what counts)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    comp = zlib.compressobj(1)
    row = b"\0" * (width + 1)
    idat = b"".join(comp.compress(row) for _ in range(height if rows is None else rows)) + comp.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def photo(w: int = 96, h: int = 80, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, w, dtype=np.float32)[None, :, None] * np.ones((h, 1, 3), np.float32)
    return Image.fromarray(np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8))


def bad_images(folder: Path) -> dict:
    """name → (path, words one of which the message must contain; None: accepted)."""
    folder.mkdir(parents=True, exist_ok=True)
    good_png, good_jpg = encode(photo(), "PNG"), encode(photo(), "JPEG", quality=90)
    frames = [Image.new("RGB", (40, 40), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    gif = gif.getvalue()
    noisy_gif = encode(photo(64, 64, seed=1).convert("P"), "GIF")
    pal = Image.new("P", (40, 40), 1)
    pal.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)
    cases = {
        "truncated.png": (good_png[: len(good_png) // 2], ("truncated", "corrupt")),
        "truncated.jpg": (good_jpg[: len(good_jpg) // 3], ("truncated", "corrupt")),
        "truncated.gif": (noisy_gif[: len(noisy_gif) // 2], ("truncated", "corrupt")),
        "header-only.png": (good_png[:33], ("truncated", "corrupt")),
        "corrupt.png": (good_png[:40] + bytes(range(256)) * 8, ("corrupt", "truncated")),
        "corrupt.jpg": (good_jpg[:2] + b"\xff\xc0" + bytes(200), ("corrupt", "truncated", "not an image")),
        "notes.png": (b"hello, this is plain text\n" * 20, ("not an image",)),
        "page.jpg": (b"<!doctype html><html><body>hi</body></html>", ("not an image",)),
        "archive.gif": (b"PK\x03\x04" + bytes(300), ("not an image",)),
        "script.png": (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\nshowpage\n", ("not an image",)),
        "empty.png": (b"", ("empty",)),
        "bomb.png": (png_stream(60_000, 60_000, rows=1), ("too large",)),
        "10k.png": (png_stream(10_000, 10_000), ("too large",)),
        "1x1.png": (encode(Image.new("RGB", (1, 1), (255, 0, 0)), "PNG"), ("too small",)),
        "animated.gif": (gif, None),
        "cmyk.jpg": (encode(Image.new("CMYK", (64, 48), (0, 255, 255, 0)), "JPEG", quality=95), None),
        "gray16.png": (encode(Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)),
                              "PNG"), None),
        "palette.png": (encode(pal, "PNG"), None),
        "la.png": (encode(Image.new("LA", (50, 30), (0, 0)), "PNG"), None),
        "rgba.png": (encode(Image.new("RGBA", (50, 50), (0, 0, 255, 0)), "PNG"), None),
        "4k-ok.png": (png_stream(4000, 3000), None),
    }
    out = {}
    for name, (data, words) in cases.items():
        (folder / name).write_bytes(data)
        out[name] = (folder / name, words)
    return out


def client_image(i: int, folder: Path, clients: int = 16) -> Path:
    """Client i's own picture: its own size (so messages identify it), colour and label."""
    w, h = 100 + 9 * i, 84 + 5 * i
    r, g, b = (int(255 * c) for c in colorsys.hsv_to_rgb(i / clients, 0.8, 0.9))
    img = Image.new("RGB", (w, h), (r, g, b))
    d = ImageDraw.Draw(img)
    d.ellipse((10 + 3 * i, 10, 60 + 2 * i, 60), fill=(255 - r, 255 - g, 255 - b))
    d.text((8, h - 20), f"C{i:02d}", fill=(0, 0, 0))
    path = folder / f"client{i:02d}.png"
    img.save(path)
    return path


# ----------------------------------------------------------------------------- fuzzing
MODES_FORMATS = [("RGB", "PNG"), ("RGBA", "PNG"), ("L", "PNG"), ("LA", "PNG"), ("P", "PNG"),
                 ("I;16", "PNG"), ("1", "PNG"), ("RGB", "JPEG"), ("L", "JPEG"), ("CMYK", "JPEG"),
                 ("RGB", "GIF"), ("RGB", "WEBP"), ("RGBA", "WEBP"), ("RGB", "BMP"), ("RGB", "TIFF"),
                 ("CMYK", "TIFF"), ("I;16", "TIFF"), ("RGBA", "TIFF")]
MUTATIONS = ["none", "none", "truncate", "flip", "splice", "header", "swap-magic"]


@st.composite
def image_files(draw, max_side: int = 96):
    """Bytes of a real image in a random mode/format/size, then maybe damaged; with an extension
    that may lie about the format."""
    mode, fmt = draw(st.sampled_from(MODES_FORMATS))
    w, h = draw(st.integers(6, max_side)), draw(st.integers(6, max_side))   # a few below 8×8
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    if mode == "I;16":
        img = Image.fromarray(rgb[..., 0].astype(np.uint16) * 257)
    elif mode in ("RGBA", "LA"):
        img = Image.fromarray(np.dstack([rgb, rng.integers(0, 256, (h, w), dtype=np.uint8)])).convert(mode)
    else:
        img = Image.fromarray(rgb).convert(mode)
    kw = {}
    if fmt == "GIF" and draw(st.booleans()):   # animated
        kw = dict(save_all=True, append_images=[Image.fromarray(255 - rgb)], duration=40)
    data = encode(img, fmt, **kw)
    mutation = draw(st.sampled_from(MUTATIONS))
    if mutation == "truncate":
        data = data[: draw(st.integers(0, max(0, len(data) - 1)))]
    elif mutation == "flip":
        arr = bytearray(data)
        for pos in draw(st.lists(st.integers(0, len(arr) - 1), min_size=1, max_size=12)):
            arr[pos] = draw(st.integers(0, 255))
        data = bytes(arr)
    elif mutation == "splice":
        pos = draw(st.integers(0, len(data)))
        data = data[:pos] + draw(st.binary(min_size=1, max_size=64)) + data[pos:]
    elif mutation == "header":
        data = draw(st.binary(min_size=4, max_size=24)) + data[24:]
    elif mutation == "swap-magic":   # another format's magic in front of this one's body
        data = draw(st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a",
                                     b"RIFF\0\0\0\0WEBP", b"BM"])) + data[8:]
    ext = draw(st.sampled_from([".png", ".jpg", ".gif", ".webp", ".bmp", ".tif"]))
    return data, ext, dict(mode=mode, fmt=fmt, size=(w, h), mutation=mutation)
