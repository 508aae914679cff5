"""Tab 1: reconstruct an image with one or two tokenizers; metrics, error heatmap, OCR."""
from __future__ import annotations

import gradio as gr

from ..analysis.ablation import colorize, compression_ratio, diff_maps, reconstruct
from .common import Ctx, decode_note, event, image_input, psnr, seeded, show, ssim, upscale_to
from .inputs import FIT_MODES, model_image


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
        row = {"tokenizer": name, "PSNR (dB)": round(psnr(rec, x), 2), "SSIM": round(ssim(rec, x), 4),
               "tokens": tok.num_tokens, "token dim": tok.token_dim,
               "compression": f"{ratio:.0f}×", "latency (ms)": round(1000 * times["total_s"], 1),
               "encode (ms)": round(1000 * times["encode_s"], 1),
               "decode (ms)": round(1000 * times["decode_s"], 1)}
        if do_ocr and ctx.ocr.available:
            from ..analysis.ablation import to_uint8

            if ref_text is None:
                ref_text = ctx.ocr.read(to_uint8(x[0]))
            rec_text = ctx.ocr.read(to_uint8(rec[0]))
            row["OCR original"] = ref_text
            row["OCR reconstruction"] = rec_text
            row["T-NED"] = round(ctx.ocr.similarity(rec_text, ref_text), 3) if ref_text.strip() else None
        rows.append(row)
        vmax = 0.5
        outs.append((show(rec[0]), upscale_to(colorize(heat, vmax), 256)))
        notes.append(f"**{name}** ({tok.describe()}): input {desc}. Compression {how}. "
                     f"Mean |error| {float(heat.mean()):.4f} (heatmap scale 0 → black, ≥ {vmax} → yellow)."
                     + (" " + decode_note(tok) if decode_note(tok) else ""))
    if do_ocr and not ctx.ocr.available:
        notes.append(f"_OCR: {ctx.ocr.error or 'not available'}_")
    elif do_ocr and ref_text is not None and not ref_text.strip():
        notes.append("_OCR found no text in the original, so no T-NED._")
    b = outs[1] if len(outs) > 1 else (None, None)
    table = _table(rows)
    return (original_shown, outs[0][0], outs[0][1], b[0], b[1], table, "\n\n".join(notes))


def _table(rows: list[dict]):
    cols = []
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
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
                heat_a = gr.Image(label="|error| A", interactive=False, height=256)
            with gr.Row():
                gr.HTML("<div style='flex:1'></div>")
                rec_b = gr.Image(label="Reconstruction (tokenizer B)", interactive=False, height=256)
                heat_b = gr.Image(label="|error| B", interactive=False, height=256)
    table = gr.Dataframe(label="Metrics", interactive=False, wrap=True, elem_id="rec-table")
    notes = gr.Markdown(elem_id="rec-notes")

    def fn(image, a, b, ocr_on, fit):
        return run_reconstruct(ctx, image, a, b, ocr_on, fit)

    btn.click(event(seeded(fn)), [image, ctx.tok_a, ctx.tok_b, do_ocr, fit, ctx.decode_seed],
              [orig, rec_a, heat_a, rec_b, heat_b, table, notes], api_name="reconstruct",
              concurrency_limit=4)
    return image
