"""Tab 1: reconstruct an image with one or two tokenizers; metrics, error heatmap, OCR."""
from __future__ import annotations

import gradio as gr

from ..analysis.ablation import diff_maps
from ..analysis.codec import compression_ratio, reconstruct
from ..analysis.pictures import colorize, show, to_uint8, upscale_to, with_colorbar
from ..analysis import metrics, ocr
from .common import Ctx, decode_note, event, image_input, seeded
from .inputs import FIT_MODES, model_image


NOTHING_READ = "(nothing read)"
ERROR_VMAX = 0.5    # fixed colour scale of the error maps, so A and B compare by eye
ERROR_UNIT = "|error|, mean over RGB (0–1 pixel units)"
# The metrics table's columns, shown as headers before the first run too.
COLUMNS = ["tokenizer", "PSNR (dB)", "SSIM", "tokens", "token dim", "compression", "latency (ms)",
           "encode (ms)", "decode (ms)", "OCR original", "OCR reconstruction", "T-NED"]


def run_reconstruct(ctx: Ctx, image, tok_a: str, tok_b: str, do_ocr: bool = True,
                    fit: str = "center-crop"):
    """Returns (original, recon A, heat A, recon B, heat B, metrics table rows, notes markdown)."""
    names = [tok_a] + ([tok_b] if tok_b and tok_b != "none" and tok_b != tok_a else [])
    outs, rows, notes = [], [], []
    original_shown = None
    ref_text = None
    for name in names:
        tok = ctx.tokenizer(name)
        x, desc, _ = model_image(image, tok.image_size, fit)
        rec, enc, times = reconstruct(tok, x)
        heat = diff_maps(rec, x)[0]
        if original_shown is None:
            original_shown = show(x[0])
        ratio, how = compression_ratio(tok)
        row = {"tokenizer": name, "PSNR (dB)": round(float(metrics.psnr(rec, x)), 2),
               "SSIM": round(float(metrics.ssim(rec, x)), 4),
               "tokens": tok.num_tokens, "token dim": tok.token_dim,
               "compression": f"{ratio:.0f}×", "latency (ms)": round(1000 * times["total_s"], 1),
               "encode (ms)": round(1000 * times["encode_s"], 1),
               "decode (ms)": round(1000 * times["decode_s"], 1)}
        if do_ocr and ctx.ocr_on:
            if ref_text is None:
                ref_text = ocr.read_string(to_uint8(x[0]))
            rec_text = ocr.read_string(to_uint8(rec[0]))
            row["OCR original"] = ref_text.strip() or NOTHING_READ
            row["OCR reconstruction"] = rec_text.strip() or NOTHING_READ
            row["T-NED"] = round(ocr.tned(rec_text, ref_text), 3) if ref_text.strip() else None
        rows.append(row)
        outs.append((show(rec[0]), with_colorbar(upscale_to(colorize(heat, ERROR_VMAX), 256), ERROR_VMAX,
                                                 ERROR_UNIT)))
        notes.append(f"**{name}** ({tok.describe()}): input {desc}. Compression {how}. "
                     f"Mean |error| {float(heat.mean()):.4f} ({ERROR_UNIT}; the map's colours are "
                     f"capped at {ERROR_VMAX})."
                     + (" " + decode_note(tok) if decode_note(tok) else ""))
    if do_ocr and not ctx.ocr_on:
        notes.append(f"_{ctx.ocr_error}_")
    elif do_ocr and ref_text is not None and not ref_text.strip():
        notes.append("_OCR found no text in the original, so no T-NED._")
    b = outs[1] if len(outs) > 1 else (None, None)
    table = _table(rows)
    return (original_shown, outs[0][0], outs[0][1], b[0], b[1], table, "\n\n".join(notes))


def _table(rows: list[dict]):
    cols = [c for c in COLUMNS if any(c in r for r in rows)]
    return {"headers": cols, "data": [[r.get(c) for c in cols] for r in rows]}


def build(ctx: Ctx):
    with gr.Row():
        with gr.Column(scale=1):
            image = image_input("Image (upload, paste, or pick an example below)", height=280,
                                elem_id="rec-input")
            if ctx.examples:
                gr.Examples(ctx.examples, inputs=[image], label="Examples", examples_per_page=12)
            with gr.Row():
                fit = gr.Radio(list(FIT_MODES), value="center-crop", label="Fit to the model's size")
                do_ocr = gr.Checkbox(True, label="Read text (OCR) and compute T-NED")
            btn = gr.Button("Reconstruct", variant="primary", elem_id="rec-run")
        with gr.Column(scale=2):
            with gr.Row():
                orig = gr.Image(label="Model input (resized/cropped)", interactive=False, height=256)
                rec_a = gr.Image(label="Reconstruction (tokenizer A)", interactive=False, height=256,
                                 elem_id="rec-a")
                heat_a = gr.Image(label="|error| A (colour bar: 0–1 pixel units)", interactive=False,
                                  height=256)
            with gr.Row():
                gr.HTML("<div style='flex:1'></div>")
                rec_b = gr.Image(label="Reconstruction (tokenizer B)", interactive=False, height=256)
                heat_b = gr.Image(label="|error| B (colour bar: 0–1 pixel units)", interactive=False,
                                  height=256)
    table = gr.Dataframe(value={"headers": COLUMNS, "data": [[None] * len(COLUMNS)]}, label="Metrics",
                         interactive=False, wrap=False, elem_id="rec-table")
    notes = gr.Markdown(elem_id="rec-notes")

    def fn(image, a, b, ocr_on, fit):
        return run_reconstruct(ctx, image, a, b, ocr_on, fit)

    btn.click(event(seeded(fn)), [image, ctx.tok_a, ctx.tok_b, do_ocr, fit, ctx.decode_seed],
              [orig, rec_a, heat_a, rec_b, heat_b, table, notes], api_name="reconstruct",
              concurrency_limit=4)
    return image
