"""Tab 6: which tokens carry text — ablation inside vs outside text boxes, OCR damage."""
from __future__ import annotations

import os

import gradio as gr
import numpy as np
import torch

from ..analysis import ablation as A
from ..analysis import text_tokens as T
from . import datasets
from .common import Ctx, decode_note, event, handler, image_input, seeded, upscale_to
from .inputs import InputError, model_image, parse_choice, parse_int
from .tab_tokens import MODES, dataset_mean

DISPLAY = 384


def _canvas(x: torch.Tensor, boxes, size: int) -> np.ndarray:
    img = A.to_uint8(x[0])
    if boxes:
        img = T.mask_overlay(img, T.boxes_to_mask(boxes, size, size))
    return upscale_to(img, DISPLAY)


def _scale(size: int) -> int:
    return max(1, int(np.ceil(DISPLAY / size)))


def prepare_boxes(ctx: Ctx, image, tok_name: str, boxes_text: str):
    tok = ctx.tokenizer(tok_name)
    x, desc, _ = model_image(image, tok.image_size)
    boxes = T.parse_boxes(boxes_text)
    return tok, x, desc, boxes


def detect(ctx: Ctx, image, tok_name: str):
    tok, x, desc, _ = prepare_boxes(ctx, image, tok_name, "")
    boxes = ctx.ocr.boxes(A.to_uint8(x[0]))
    if not boxes:
        gr.Warning("the detector found no text: draw a box (two clicks) or type one")
    return T.format_boxes(boxes), _canvas(x, boxes, tok.image_size), \
        f"{len(boxes)} text box(es) found on the {tok.image_size}×{tok.image_size} model input ({desc})."


def textscenes_sample(ctx: Ctx, tok_name: str, index):
    """A held-out textscenes image (as a PNG path for the upload box) and its ground-truth box."""
    from ..data.textscenes import TextScenes

    tok = ctx.tokenizer(tok_name)
    i = parse_int(index, "sample", 0, 1999)
    s = TextScenes("heldout", size=i + 1, image_size=tok.image_size).sample(i)
    path = sample_png(f"heldout-{tok.image_size}-{i}", s.pil)
    return path, T.format_boxes([s.box]), f"held-out textscenes #{i}: “{s.text}” (ground-truth box)"


def sample_png(name: str, render) -> str:
    """A PNG rendered once per name in one temp folder (one file per sample and size, however
    many requests ask for it; written atomically, so concurrent requests never see half a file)."""
    import tempfile
    from pathlib import Path

    folder = Path(tempfile.gettempdir()) / "softvq-textscenes"
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.png"
    if not path.is_file():
        fd, part = tempfile.mkstemp(dir=folder, prefix=name, suffix=".part")
        os.close(fd)
        try:
            render().save(part, format="PNG")
            os.replace(part, path)
        finally:
            if os.path.exists(part):
                os.remove(part)
    return str(path)


def click_box(ctx: Ctx, image, tok_name: str, boxes_text: str, corner, evt: gr.SelectData):
    tok, x, _, boxes = prepare_boxes(ctx, image, tok_name, boxes_text)
    f = _scale(tok.image_size)
    px, py = evt.index[0] / f, evt.index[1] / f
    if corner is None:
        return boxes_text, _canvas(x, boxes, tok.image_size), (px, py), \
            f"first corner at ({px:.0f}, {py:.0f}); click the opposite corner"
    x0, y0 = corner
    boxes = boxes + [(min(x0, px), min(y0, py), max(x0, px), max(y0, py))]
    return T.format_boxes(boxes), _canvas(x, boxes, tok.image_size), None, f"{len(boxes)} box(es)"


def analyse_one(ctx: Ctx, name: str, image, boxes_a, size_a: int, mode: str, k: int, use_ocr: bool,
                progress=None):
    tok = ctx.tokenizer(name)
    x, _, _ = model_image(image, tok.image_size)
    s = tok.image_size / size_a
    boxes = T.scale_boxes(boxes_a, s, s)
    mask = T.boxes_to_mask(boxes, tok.image_size, tok.image_size)
    lat = A.encode(tok, x).latents[0]
    mean, _ = dataset_mean(ctx, name, tok)
    if mean is None:  # no dataset on this install: the image's own mean token
        mean = lat.mean(0, keepdim=True).expand_as(lat).clone()
    ocr = ctx.ocr if (use_ocr and ctx.ocr.available) else None
    ref = ocr.read(A.to_uint8(x[0])) if ocr else None
    res = T.analyze_text_tokens(tok, lat, mask, mode=mode if mode != "other" else "zero", mean=mean,
                                read_text=ocr.read if ocr else None,
                                similarity=ocr.similarity if ocr else None, reference_text=ref,
                                progress=progress)
    toks = res.text_tokens(k if k > 0 else None)
    auto_note = ""
    if not toks:
        toks = res.text_tokens(3)
        auto_note = " (no token passed the threshold; showing the top 3)"
    keep, drop = T.keep_and_drop(tok, res.ablation.latents, res.ablation.replacement, toks)
    rows = res.rows()
    table = {"headers": list(rows[0].keys()), "data": [list(r.values()) for r in rows]}
    fig = T.text_effect_figure(res, title=f"{name}: effect inside vs outside the text")
    lines = [f"**{name}** text tokens{auto_note}: {', '.join(map(str, toks))}."]
    if ocr:
        kt, dt = ocr.read(A.to_uint8(keep)), ocr.read(A.to_uint8(drop))
        lines.append(f"OCR original: {_q(ref)} · reconstruction: {_q(res.base_text)} (T-NED "
                     f"{res.base_similarity:.3f}) · keep only text tokens: {_q(kt)} (T-NED "
                     f"{ocr.similarity(kt, ref):.3f}) · drop only text tokens: {_q(dt)} (T-NED "
                     f"{ocr.similarity(dt, ref):.3f}).")
    else:
        lines.append(f"_Ranking by pixels only: {ctx.ocr.error or 'OCR off'}._")
    if decode_note(tok):
        lines.append(decode_note(tok))
    # overlay: where the top text token acts
    top = res.ranking()[0]
    heat = A.colorize(res.ablation.maps[top])
    ov = T.mask_overlay(A.overlay(A.to_uint8(x[0]), heat), mask, color=(0, 255, 0), alpha=0.2)
    return (upscale_to(ov, 256), table, fig, upscale_to(A.to_uint8(keep), 256),
            upscale_to(A.to_uint8(drop), 256), "\n\n".join(lines))


def _q(text: str) -> str:
    """OCR text for markdown: quoted, or a note when nothing was read."""
    text = (text or "").strip().replace("`", "'")
    return f"`{text}`" if text else "_(nothing read)_"


def analyse(ctx: Ctx, image, tok_a: str, tok_b: str, boxes_text: str, mode: str, k, use_ocr: bool,
            progress=None):
    mode = parse_choice(mode, "replacement", MODES)
    tok, x, _, boxes = prepare_boxes(ctx, image, tok_a, boxes_text)
    if not boxes:
        raise InputError("no text boxes: detect them, draw one (two clicks on the image) or type "
                         "x0,y0,x1,y1")
    k = parse_int(k, "k", 0, tok.num_tokens)
    out_a = analyse_one(ctx, tok_a, image, boxes, tok.image_size, mode, k, use_ocr,
                        progress=_sub(progress, 0.0, 0.5, tok_a))
    if tok_b and tok_b not in ("none", tok_a):
        kb = min(k, ctx.tokenizer(tok_b).num_tokens)
        out_b = analyse_one(ctx, tok_b, image, boxes, tok.image_size, mode, kb, use_ocr,
                            progress=_sub(progress, 0.5, 1.0, tok_b))
    else:
        out_b = (None, None, None, None, None, "_Pick a tokenizer B in the header to compare._")
    return (_canvas(x, boxes, tok.image_size),) + out_a + out_b


def _sub(progress, lo, hi, name):
    if progress is None:
        return None
    return lambda f, m: progress(lo + (hi - lo) * f, desc=f"{name}: {m}")


def dataset_view(ctx: Ctx, tok_a: str, tok_b: str, count, mode: str, progress=None):
    count = parse_int(count, "number of images", 1, 512)
    mode = parse_choice(mode, "replacement", MODES)
    mode = "zero" if mode == "other" else mode
    names = [tok_a] + ([tok_b] if tok_b and tok_b not in ("none", tok_a) else [])
    profiles = {}
    for j, name in enumerate(names):
        tok = ctx.tokenizer(name)
        s = datasets.get("textscenes", tok.image_size, count, with_masks=True)
        mean, _ = dataset_mean(ctx, name, tok)
        cb = _sub(progress, j / len(names), (j + 1) / len(names), name)
        profiles[name] = T.text_profile(tok, s.images, s.masks, mode if mean is not None else "zero",
                                        mean=mean, progress=cb)
    fig = T.profile_figure(profiles)
    lines = []
    for name, p in profiles.items():
        top = p.ranking()[:5]
        lines.append(f"**{name}**: over {p.num_images} images, the token indices most concentrated on "
                     f"text are {', '.join(map(str, top))} (mean concentration "
                     f"{', '.join(f'{float(p.mean_concentration()[i]):.2f}' for i in top)}).")
    return fig, "\n\n".join(lines)


def build(ctx: Ctx):
    corner = gr.State(None)
    with gr.Row():
        with gr.Column(scale=1):
            image = image_input("Image with text", height=220, elem_id="tt-input")
            if ctx.examples:
                gr.Examples(ctx.examples, inputs=[image], label="Examples", examples_per_page=6)
            boxes = gr.Textbox(label="Text boxes (x0,y0,x1,y1 in model-input pixels; ';' between)",
                               elem_id="tt-boxes")
            with gr.Row():
                ts_index = gr.Number(0, label="textscenes sample", precision=0, minimum=0,
                                     maximum=1999)
                ts_btn = gr.Button("Load a held-out textscenes image", elem_id="tt-textscenes")
            with gr.Row():
                det = gr.Button("Detect text boxes (OCR)", elem_id="tt-detect")
                clear = gr.Button("Clear boxes")
            with gr.Row():
                mode = gr.Radio(MODES[:3], value="mean", label="Ablate by replacing with")
                k = gr.Slider(0, 256, value=0, step=1, label="text tokens (0 = automatic)")
            use_ocr = gr.Checkbox(True, label="Run OCR on every ablation (T-NED)")
            btn = gr.Button("Find the text tokens", variant="primary", elem_id="tt-run")
        with gr.Column(scale=1):
            canvas = gr.Image(label="Model input with text boxes — click two corners to draw a box",
                              interactive=False, height=384, elem_id="tt-canvas")
            box_md = gr.Markdown()
    outs = []
    with gr.Row():
        for side in ("A", "B"):
            with gr.Column():
                gr.Markdown(f"### Tokenizer {side}")
                with gr.Row():
                    ov = gr.Image(label="Top text token's effect (green: text region)",
                                  interactive=False, height=200)
                    keep = gr.Image(label="Keep only the text tokens", interactive=False, height=200)
                    drop = gr.Image(label="Drop only the text tokens", interactive=False, height=200)
                md = gr.Markdown(elem_id=f"tt-md-{side.lower()}")
                fig = gr.Plot(label="Inside vs outside", elem_id=f"tt-plot-{side.lower()}")
                table = gr.Dataframe(label="Tokens ranked by text score", interactive=False,
                                     max_height=300, elem_id=f"tt-table-{side.lower()}")
                outs.append((ov, table, fig, keep, drop, md))
    with gr.Accordion("Dataset level: which token indices carry text (textscenes, ground-truth masks)",
                      open=True):
        with gr.Row():
            count = gr.Slider(1, 256, value=16, step=1, label="textscenes images")
            dbtn = gr.Button("Profile the dataset", elem_id="tt-dataset")
        dfig = gr.Plot(label="Text concentration per token index", elem_id="tt-profile")
        dmd = gr.Markdown(elem_id="tt-profile-md")

    det.click(event(lambda im, t: detect(ctx, im, t)), [image, ctx.tok_a], [boxes, canvas, box_md],
              api_name="detect_text")
    ts_btn.click(handler(lambda t, i: textscenes_sample(ctx, t, i)), [ctx.tok_a, ts_index],
                 [image, boxes, box_md], api_name="textscenes_sample")
    clear.click(lambda: ("", None, None, "boxes cleared"), None, [boxes, canvas, corner, box_md])
    def on_image(im, t, b):
        if not im:
            return None
        tok, x, _, bx = prepare_boxes(ctx, im, t, b)
        return _canvas(x, bx, tok.image_size)

    image.change(handler(on_image), [image, ctx.tok_a, boxes], [canvas])

    def on_click(im, t, b, c, evt: gr.SelectData):
        return click_box(ctx, im, t, b, c, evt)

    canvas.select(handler(on_click), [image, ctx.tok_a, boxes, corner], [boxes, canvas, corner, box_md])

    def fn(im, a, b, bx, mode, k, use_ocr, progress=gr.Progress()):
        return analyse(ctx, im, a, b, bx, mode, k, use_ocr, progress=progress)

    flat = [c for o in outs for c in o]
    btn.click(event(seeded(fn), duration=240),
              [image, ctx.tok_a, ctx.tok_b, boxes, mode, k, use_ocr, ctx.decode_seed],
              [canvas] + flat, api_name="text_tokens", concurrency_limit=2)

    def dfn(a, b, count, mode, progress=gr.Progress()):
        return dataset_view(ctx, a, b, count, mode, progress)

    dbtn.click(event(seeded(dfn), duration=240), [ctx.tok_a, ctx.tok_b, count, mode, ctx.decode_seed],
               [dfig, dmd],
               api_name="text_profile", concurrency_limit=1)
