"""Tab 6: which tokens carry text — ablation inside vs outside text boxes, OCR damage."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import gradio as gr
import numpy as np
import torch

from ..analysis import ocr as O
from ..analysis import text_tokens as T
from ..analysis.ablation import REPLACEMENTS
from ..analysis.baseline import default_baseline
from ..analysis.codec import encode
from ..analysis.deletion import deletion_curves, deletion_figure
from ..analysis.importance import importance_figure, text_importance, textscenes_set
from ..analysis.pictures import (amplified_difference, colorize, overlay, show, to_uint8, upscale_to,
                                 with_colorbar)
from ..analysis.prefix import doubling_ks
from ..analysis.tokbench import GroundTruthText, OriginalOCR
from ..data.textscenes import TextScenes
from .common import Ctx, decode_note, event, handler, image_input, seeded
from .inputs import InputError, model_image, parse_choice, parse_int

MODES = list(REPLACEMENTS[:3])   # zero, the dataset mean token, noise (no second image here)
SHARE = 0.8                      # the text-token pick rule's share of the total effect
SCORE_HELP = ("**Score** (the ranking): with OCR, the drop in T-NED when the token is ablated "
              "(T-NED = 1 − edit distance / length between the OCR of the ablated reconstruction "
              "and of the original) plus 0.1 × its in-box |Δ| relative to the strongest token's, "
              "which only breaks ties; without OCR, its in-box |Δ| (relative) × √concentration. "
              "**Concentration**: the share of the token's change inside the boxes divided by the "
              "boxes' share of the image (1 = no preference for text).")

DISPLAY = 384


def _canvas(x: torch.Tensor, boxes, size: int) -> np.ndarray:
    img = to_uint8(x[0])
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
    if not ctx.ocr_on:
        raise InputError(f"{ctx.ocr_error}: draw a box (two clicks) or type one")
    boxes = O.detect_boxes(to_uint8(x[0]))
    if not boxes:
        gr.Warning("the detector found no text: draw a box (two clicks) or type one")
    return T.format_boxes(boxes), _canvas(x, boxes, tok.image_size), \
        f"{len(boxes)} text box(es) found on the {tok.image_size}×{tok.image_size} model input ({desc})."


def textscenes_sample(ctx: Ctx, tok_name: str, index):
    """A held-out textscenes image (as a PNG path for the upload box) and its ground-truth box."""
    tok = ctx.tokenizer(tok_name)
    i = parse_int(index, "sample", 0, 1999)
    s = TextScenes("heldout", size=i + 1, image_size=tok.image_size).sample(i)
    path = sample_png(f"heldout-{tok.image_size}-{i}", s.pil)
    return path, T.format_boxes([s.box]), f"held-out textscenes #{i}: “{s.text}” (ground-truth box)"


def sample_png(name: str, render) -> str:
    """A PNG rendered once per name in one temp folder (one file per sample and size, however
    many requests ask for it; written atomically, so concurrent requests never see half a file)."""
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
    lat = encode(tok, x).latents[0]
    base = default_baseline(tok, "zero" if mode == "zero" else "mean")
    ocr = use_ocr and ctx.ocr_on
    ref = O.read_string(to_uint8(x[0])) if ocr else None
    res = T.analyze_text_tokens(tok, lat, mask, mode=mode, mean=base if mode == "mean" else None,
                                read_text=O.read_string if ocr else None,
                                similarity=O.tned if ocr else None, reference_text=ref,
                                progress=progress)
    if k > 0:
        toks, rule = res.text_tokens(k), f"the top {k} by score (k set by hand)"
    else:
        pick = res.pick(SHARE)
        toks, rule = pick.tokens, pick.rule + f" (they carry {pick.reached:.0%})"
    keep, drop = T.keep_and_drop(tok, res.ablation.latents, res.ablation.replacement, toks)
    rows = [{c: v for c, v in r.items() if c not in HIDDEN_COLUMNS} for r in res.rows()]
    table = {"headers": list(rows[0].keys()), "data": [list(r.values()) for r in rows]}
    fig = T.text_effect_figure(res, title=f"{name}: effect inside vs outside the text")
    lines = [f"**{name}** text tokens: {', '.join(map(str, toks)) or 'none'} — rule: {rule}. "
             f"{res.ablation.baseline_label}."]
    if ocr:
        kt, dt = O.read_string(to_uint8(keep)), O.read_string(to_uint8(drop))
        lines.append(f"OCR original: {_q(ref)} · reconstruction: {_q(res.base_text)} (T-NED "
                     f"{res.base_similarity:.3f}) · keep only text tokens: {_q(kt)} (T-NED "
                     f"{O.tned(kt, ref):.3f}) · drop only text tokens: {_q(dt)} (T-NED "
                     f"{O.tned(dt, ref):.3f}).")
    else:
        lines.append(f"_Ranking by pixels only: {ctx.ocr_error or 'OCR off'}._")
    if decode_note(tok):
        lines.append(decode_note(tok))
    # Faithfulness on this image: ablating its own top-k vs k random vs its bottom-k tokens
    curves = deletion_curves(tok, x, [res.ranking()], scorer=OriginalOCR(x) if ocr else None,
                             masks=mask[None], baseline=base if mode != "noise" else None,
                             ks=doubling_ks(tok.num_tokens), random_draws=3,
                             ranking_source="this image's own ranking")
    dfig = deletion_figure({name: curves}, "t_ned_drop" if ocr else "inbox_error",
                           title=f"{name}: deletion curves on this image")
    # overlay: where the top text token acts
    top = res.ranking()[0]
    heat = colorize(res.ablation.maps[top])
    ov = T.mask_overlay(overlay(to_uint8(x[0]), heat), mask, color=(0, 255, 0), alpha=0.2)
    return (upscale_to(ov, 256), table, fig, upscale_to(to_uint8(keep), 256),
            upscale_to(to_uint8(drop), 256), "\n\n".join(lines), dfig), res


DIFF_UNIT = "|Δ| vs full reconstruction (0–1 pixel units)"
AMPLIFY = 4.0


def ranked_token_view(res, row: int, row_value=None):
    """A row of the ranked table → that token's ablation: the reconstruction without it, its |Δ|
    map (colour bar in pixel units) and the signed difference amplified ×4 around grey.
    ``row_value`` (the clicked row as shown, [rank, token, …]) wins over ``row``: the browser may
    have sorted the table."""
    if res is None:
        raise InputError("run 'Find the text tokens' first, then click a row of the table")
    ranking = res.ranking()
    if row_value is not None and len(row_value) > 1:
        i = parse_int(row_value[1], "token", 0, len(ranking) - 1)
        row = ranking.index(i)
    else:
        row = parse_int(row, "table row", 0, len(ranking) - 1)
        i = ranking[row]
    ab = res.ablation
    vmax = max(float(ab.maps[i].max()), 1e-3)
    heat = with_colorbar(upscale_to(colorize(ab.maps[i], vmax), 256), vmax, DIFF_UNIT)
    amp = upscale_to(amplified_difference(ab.ablated[i], ab.base, AMPLIFY), 256)
    md = (f"Token **{i}** (rank {row + 1} of {len(ranking)}): ablated with the "
          f"{ab.baseline_label.removeprefix('baseline: ')}; mean |Δ| {float(ab.effect[i]):.3g}, "
          f"max {float(ab.maps[i].max()):.3f}. Right: the signed difference (ablated − full) ×{AMPLIFY:g} "
          "around mid-grey, so small changes show.")
    return show(ab.ablated[i]), heat, amp, md


# Columns left out of the on-screen table so the OCR columns fit without scrolling sideways.
HIDDEN_COLUMNS = ("effect outside", "in/out")


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
    out_a, res_a = analyse_one(ctx, tok_a, image, boxes, tok.image_size, mode, k, use_ocr,
                               progress=_sub(progress, 0.0, 0.5, tok_a))
    if tok_b and tok_b not in ("none", tok_a):
        kb = min(k, ctx.tokenizer(tok_b).num_tokens)
        out_b, res_b = analyse_one(ctx, tok_b, image, boxes, tok.image_size, mode, kb, use_ocr,
                                   progress=_sub(progress, 0.5, 1.0, tok_b))
    else:
        out_b = (None, None, None, None, None, "_Pick a tokenizer B in the header to compare._", None)
        res_b = None
    # the per-side results stay in the session (gr.State) for clicks on the ranked tables
    return (_canvas(x, boxes, tok.image_size),) + out_a + out_b + (res_a, res_b)


def _sub(progress, lo, hi, name):
    if progress is None:
        return None
    return lambda f, m: progress(lo + (hi - lo) * f, desc=f"{name}: {m}")


def dataset_view(ctx: Ctx, tok_a: str, tok_b: str, count, mode: str, progress=None):
    """Dataset level, per tokenizer: token importance for text over ``count`` held-out textscenes
    images (mean ΔT-NED with bootstrap CIs, concentration beside), and how much that ranking is
    worth: deletion curves on the next ``count`` held-out images, which it was not computed on."""
    count = parse_int(count, "number of images", 1, 512)
    mode = parse_choice(mode, "replacement", MODES)
    names = [tok_a] + ([tok_b] if tok_b and tok_b not in ("none", tok_a) else [])
    importance, curves, lines = {}, {}, []
    for j, name in enumerate(names):
        tok = ctx.tokenizer(name)
        cb = _sub(progress, j / len(names), (j + 0.7) / len(names), name)
        ranked = textscenes_set(tok.image_size, count)
        unseen = textscenes_set(tok.image_size, count, start=count)
        base = default_baseline(tok, "zero" if mode == "zero" else "mean")
        scorer = GroundTruthText(ranked.boxes, ranked.texts) if ctx.ocr_on else None
        imp = text_importance(tok, ranked.images, ranked.masks, scorer=scorer, baseline=base,
                              progress=cb, note=ranked.note)
        importance[name] = imp
        curves[name] = deletion_curves(
            tok, unseen.images, imp.ranking(), masks=unseen.masks, baseline=base,
            scorer=GroundTruthText(unseen.boxes, unseen.texts) if ctx.ocr_on else None,
            ks=doubling_ks(tok.num_tokens), random_draws=3,
            ranking_source=f"importance over {ranked.note}, measured on {unseen.note}")
        metric = "t_ned_drop" if imp.has_text_scores else "inbox_error"
        top = imp.ranking()[:5]
        mean, se = imp.mean(metric), imp.se(metric)
        gap, gap_se = curves[name].gap(metric, "top", "random")
        pick = imp.pick(SHARE)
        lines.append(
            f"**{name}**: over {imp.num_images} images ({ranked.note}), ranked by {imp.ranked_by}: "
            + ", ".join(f"t{i} {mean[i]:.3f} ± {se[i]:.3f}" for i in top)
            + f" (mean ± s.e.). Most concentrated on text (not the same thing): "
            f"{', '.join(f't{i}' for i in imp.concentration_ranking()[:5])}. Text tokens by the "
            f"rule ({pick.rule}): {', '.join(map(str, pick.tokens)) or 'none'}. On {unseen.note}, "
            f"ablating the top-k lowers it by {gap:+.3f} ± {gap_se:.3f} more than k random tokens "
            f"(mean over k). {imp.baseline.label}."
            + (f" T-NED: {imp.protocol}." if imp.protocol else f" _{ctx.ocr_error or 'OCR off'}: "
               "pixels only._")
            + (" " + decode_note(tok) if decode_note(tok) else ""))
    metric = "t_ned_drop" if ctx.ocr_on else "inbox_error"
    return importance_figure(importance, top=16), "\n\n".join(lines), deletion_figure(curves, metric)


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
                clear = gr.Button("Clear boxes", elem_id="tt-clear")
            with gr.Row():
                mode = gr.Radio(MODES[:3], value="mean", label="Ablate by replacing with")
                k = gr.Slider(0, 256, value=0, step=1, label="text tokens (0 = by the rule)",
                              info=f"0: the fewest tokens carrying {SHARE:.0%} of the text effect")
            use_ocr = gr.Checkbox(True, label="Run OCR on every ablation (T-NED)")
            btn = gr.Button("Find the text tokens", variant="primary", elem_id="tt-run")
        with gr.Column(scale=1):
            canvas = gr.Image(label="Model input with text boxes — click two corners to draw a box",
                              interactive=False, height=384, elem_id="tt-canvas")
            box_md = gr.Markdown()
    gr.Markdown(SCORE_HELP, elem_id="tt-score-help")
    outs, selects = [], []
    results = (gr.State(None), gr.State(None))   # per-side TextTokenResult of the last run
    with gr.Row():
        for side in ("A", "B"):
            with gr.Column():
                gr.Markdown(f"### Tokenizer {side}")
                with gr.Row():
                    ov = gr.Image(label="Top token's effect", interactive=False, height=200)
                    keep = gr.Image(label="Text tokens only", interactive=False, height=200)
                    drop = gr.Image(label="Without them", interactive=False, height=200)
                md = gr.Markdown(elem_id=f"tt-md-{side.lower()}")
                fig = gr.Plot(label="Inside vs outside", elem_id=f"tt-plot-{side.lower()}")
                table = gr.Dataframe(label="Tokens ranked by score (see above)", interactive=False,
                                     max_height=300, wrap=True, elem_id=f"tt-table-{side.lower()}")
                gr.Markdown("Click a row of the table to see that token's ablation:")
                with gr.Row():
                    sel_abl = gr.Image(label="Without the clicked token", interactive=False, height=200)
                    sel_map = gr.Image(label="|Δ| map", interactive=False, height=200)
                    sel_amp = gr.Image(label=f"Signed difference ×{AMPLIFY:g}", interactive=False,
                                       height=200)
                sel_md = gr.Markdown(elem_id=f"tt-sel-{side.lower()}")
                dfig = gr.Plot(label="Deletion curves on this image", elem_id=f"tt-del-{side.lower()}")
                outs.append((ov, table, fig, keep, drop, md, dfig))
                selects.append((table, sel_abl, sel_map, sel_amp, sel_md))
    with gr.Accordion("Dataset level: which token indices carry text, and what that ranking is worth "
                      "(held-out textscenes, ground-truth boxes)", open=True):
        with gr.Row():
            count = gr.Slider(1, 256, value=16, step=1, label="textscenes images",
                              info="ranked on held-out #0…n−1, checked on #n…2n−1")
            dbtn = gr.Button("Rank and check", elem_id="tt-dataset")
        dfig_all = gr.Plot(label="Importance per token (mean with 95% CI; concentration beside)",
                           elem_id="tt-profile")
        dmd = gr.Markdown(elem_id="tt-profile-md")
        ddel = gr.Plot(label="Deletion curves on unseen images", elem_id="tt-deletion")

    det.click(event(lambda im, t: detect(ctx, im, t)), [image, ctx.tok_a], [boxes, canvas, box_md],
              api_name="detect_text")
    ts_btn.click(handler(lambda t, i: textscenes_sample(ctx, t, i)), [ctx.tok_a, ts_index],
                 [image, boxes, box_md], api_name="textscenes_sample")

    def on_clear(im, t):
        """Clear the boxes, keep the image: the canvas shows the model input without boxes."""
        canvas_img = None
        if im:
            tok, x, _, _ = prepare_boxes(ctx, im, t, "")
            canvas_img = _canvas(x, [], tok.image_size)
        return "", canvas_img, None, "boxes cleared"

    clear.click(handler(on_clear), [image, ctx.tok_a], [boxes, canvas, corner, box_md])

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
              [canvas] + flat + list(results), api_name="text_tokens", concurrency_limit=2)

    for (table, *views), res_state in zip(selects, results):
        def on_row(res, evt: gr.SelectData):
            row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
            return ranked_token_view(res, row, evt.row_value)

        table.select(handler(on_row), [res_state], views)

    def dfn(a, b, count, mode, progress=gr.Progress()):
        return dataset_view(ctx, a, b, count, mode, progress)

    dbtn.click(event(seeded(dfn), duration=240),
               [ctx.tok_a, ctx.tok_b, count, mode, ctx.decode_seed], [dfig_all, dmd, ddel],
               api_name="text_profile", concurrency_limit=1)
