"""Tab 3: codebook — soft posteriors (SoftVQ) or hard indices (TiTok), and usage over a set."""
from __future__ import annotations

import gradio as gr
import torch

from ..analysis import codebook as C
from ..analysis import fsq as F
from ..analysis.codec import encode
from . import datasets
from .common import Ctx, event, handler, image_input
from .inputs import InputError, model_image, parse_choice, parse_int


def posteriors(ctx: Ctx, image, tok_name: str, top):
    tok = ctx.tokenizer(tok_name)
    x, desc, _ = model_image(image, tok.image_size)
    top = parse_int(top, "top codewords", 1, 64)
    enc = encode(tok, x)
    if getattr(tok, "fsq_levels", None):  # FlexTok: FSQ has no codebook to show (issue 18)
        return fsq_levels_view(tok_name, tok, enc.indices, desc)
    if enc.probs is not None:
        stats = C.token_stats(enc.probs[0])
        fig = C.posterior_figure(enc.probs[0], tok.num_codebooks, top,
                                 title=f"{tok_name}: soft posteriors (tokens × top {top} codewords)")
        efig = C.entropy_figure(enc.probs[0])
        v = tok.codebook_size
        md = (f"**{tok_name}**: {tok.num_tokens} tokens in {tok.num_codebooks} group(s) of "
              f"{tok.num_tokens // tok.num_codebooks}, each a softmax mixture of {v} codewords. "
              f"Mean entropy {float(stats.entropy_bits.mean()):.2f} bits (max {C.math.log2(v):.1f}); "
              f"mean effective codewords {float(stats.effective.mean()):.2f}; mean top-codeword "
              f"probability {float(stats.top_prob.mean()):.3f}. Input: {desc}.")
        return fig, efig, md
    if enc.indices is not None:
        fig = C.indices_figure(enc.indices[0], title=f"{tok_name}: token indices (hard VQ)",
                               num_codebooks=tok.num_codebooks)
        distinct = len(set(enc.indices[0].tolist()))
        md = (f"**{tok_name}** is a hard VQ tokenizer: each token is exactly one of "
              f"{tok.codebook_size} codewords (entropy 0). This image uses {distinct} distinct "
              f"codewords over {tok.num_tokens} tokens. Input: {desc}. (No posteriors, so no "
              "entropy plot and no top-codewords setting.)")
        return fig, None, md
    raise InputError(f"{tok_name} has continuous tokens without a codebook: nothing to show here")


def fsq_levels_view(tok_name: str, tok, indices: torch.Tensor, desc: str):
    """One image's FSQ tokens: how often each dimension takes each level (no codebook heatmap:
    FSQ's codes are fixed grid points, not learned codewords)."""
    hist = F.level_histogram(indices[0], tok.fsq_levels)
    fig = F.level_histogram_figure(hist, title=f"{tok_name}: FSQ level usage of this image's "
                                               f"{hist.num_tokens} tokens (dotted: uniform use)")
    distinct = len(set(indices[0].tolist()))
    md = (f"**{tok_name}** quantises each token with FSQ: {len(tok.fsq_levels)} scalars rounded to "
          f"{tok.fsq_levels} fixed levels, so its {tok.codebook_size} codes are grid points, not a "
          f"learned codebook. This image uses {distinct} distinct codes over {tok.num_tokens} "
          f"tokens; per dimension, the entropy of its level use (bits, 95% bootstrap CI over tokens): "
          + "; ".join(f"dim {r['dimension']} {r['entropy (bits)']} ({r['95% CI']}) of "
                      f"{r['max (uniform)']}" for r in hist.summary())
          + f". Input: {desc}.")
    return fig, None, md


def usage(ctx: Ctx, tok_name: str, source: str, count, files, progress=None):
    tok = ctx.tokenizer(tok_name)
    source = parse_choice(source, "image set", list(datasets.SOURCES))
    count = parse_int(count, "number of images", 1, 2048)
    if not tok.codebook_size:
        raise InputError(f"{tok_name} has no codebook")
    step = progress or (lambda f, m: None)
    step(0.0, "loading images")
    s = datasets.get(source, tok.image_size, count, files)
    parts = []
    for i in range(0, s.images.shape[0], 64):
        parts.append(encode(tok, s.images[i:i + 64]))
        step(min(1.0, (i + 64) / s.images.shape[0]), f"encoded {min(i + 64, s.images.shape[0])}"
             f"/{s.images.shape[0]}")
    enc = type(parts[0])(latents=torch.cat([p.latents for p in parts]),
                         probs=None if parts[0].probs is None else torch.cat([p.probs for p in parts]),
                         indices=None if parts[0].indices is None else
                         torch.cat([p.indices for p in parts]))
    if enc.indices is None:
        raise InputError(f"{tok_name} gives no indices")
    if getattr(tok, "fsq_levels", None):
        hist = F.level_histogram(enc.indices, tok.fsq_levels)
        fig = F.level_histogram_figure(hist, title=f"{tok_name}: FSQ level usage over {s.note}")
        rows = hist.summary()
        return fig, {"headers": list(rows[0].keys()), "data": [list(r.values()) for r in rows]}
    u = C.codebook_usage(enc.indices, tok.codebook_size, tok.num_codebooks, enc.probs)
    fig = C.usage_figure(u, title=f"{tok_name}: codebook usage over {s.note}")
    table = {"headers": list(u.summary()[0].keys()), "data": [list(r.values()) for r in u.summary()]}
    return fig, table


def build(ctx: Ctx):
    with gr.Row():
        with gr.Column(scale=1):
            image = image_input("Image", height=240, elem_id="cb-input")
            if ctx.examples:
                gr.Examples(ctx.examples, inputs=[image], label="Examples", examples_per_page=8)
            top = gr.Slider(4, 64, value=16, step=1, label="top codewords per group")
            btn = gr.Button("Show posteriors", variant="primary", elem_id="cb-run")
        with gr.Column(scale=2):
            post = gr.Plot(label="Posteriors / indices", elem_id="cb-post")
            ent = gr.Plot(label="Entropy per token", elem_id="cb-entropy")
            md = gr.Markdown(elem_id="cb-notes")
    with gr.Accordion("Codebook usage over a set of images", open=True):
        with gr.Row():
            source = gr.Radio(list(datasets.SOURCES), value="examples", label="Image set")
            count = gr.Slider(1, 1024, value=64, step=1, label="images (max)")
            files = gr.File(label="Upload a batch", file_count="multiple", file_types=["image"],
                            height=100)
            ubtn = gr.Button("Compute usage", elem_id="cb-usage-run")
        ufig = gr.Plot(label="Usage", elem_id="cb-usage")
        utable = gr.Dataframe(label="Per codebook", interactive=False)

    btn.click(event(lambda im, t, k: posteriors(ctx, im, t, k)), [image, ctx.tok_a, top],
              [post, ent, md], api_name="codebook", concurrency_limit=4)

    def follow_model(tok_name):
        """The entropy plot and the top-codewords setting only mean something for soft
        posteriors (SoftVQ): hidden for hard-VQ and continuous tokenizers."""
        if not tok_name:
            return gr.update(), gr.update()
        tok = ctx.tokenizer(tok_name)
        soft = tok.family == "softvq" and bool(tok.codebook_size)
        return gr.update(visible=soft), gr.update(visible=soft)

    ctx.tok_a.change(handler(follow_model), [ctx.tok_a], [top, ent], api_name=False)

    def ufn(t, s, c, f, progress=gr.Progress()):
        return usage(ctx, t, s, c, f, progress=lambda x, m: progress(x, desc=m))

    ubtn.click(event(ufn, duration=120),
               [ctx.tok_a, source, count, files], [ufig, utable], api_name="codebook_usage",
               concurrency_limit=2)
    return follow_model, [top, ent]
