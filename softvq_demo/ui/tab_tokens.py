"""Tab 2: token lab — per-token ablation, top-k / first-k, swaps, interpolation."""
from __future__ import annotations

import math

import gradio as gr
import numpy as np
import torch

from ..analysis import ablation as A
from ..analysis.baseline import default_baseline
from ..analysis.codec import decode, encode
from ..analysis.pictures import colorize, map_grid, number_cells, show, upscale_to, with_colorbar
from ..analysis.prefix import prefix_strip
from ..sampling.settings import decode_settings
from .common import Ctx, decode_note, event, handler, image_input, seeded
from .inputs import InputError, model_image, parse_choice, parse_int, parse_token_list

MODES = list(A.REPLACEMENTS)


def prepare(ctx: Ctx, state: dict, image_a, image_b, tok_name: str, mode: str, seed) -> dict:
    """Encode A (and B), ablate every token of A; reuses the user's state when nothing changed."""
    mode = parse_choice(mode, "replacement", MODES)
    seed = parse_int(seed if seed is not None else 0, "seed", 0, 2**31 - 1)
    # a stochastic decoder's seed is in the key
    key = (str(image_a), str(image_b), tok_name, mode, seed, str(decode_settings()))
    if state and state.get("key") == key:
        return state
    tok = ctx.tokenizer(tok_name)
    xa, desc, _ = model_image(image_a, tok.image_size)
    xb = model_image(image_b, tok.image_size)[0] if image_b else None
    enc = encode(tok, xa if xb is None else torch.cat([xa, xb]))
    la = enc.latents[0]
    lb = enc.latents[1] if xb is not None else None
    if mode == "other" and lb is None:
        raise InputError("replacement 'another image's token' needs image B")
    base = default_baseline(tok) if mode == "mean" else None   # the one documented baseline
    res = A.ablate_tokens(tok, la, mode, mean=base, other=lb, seed=seed)
    return {"key": key, "tok": tok_name, "xa": xa, "xb": xb, "la": la, "lb": lb, "desc": desc,
            "res": res, "image_a": image_a, "decode_note": decode_note(tok)}


def ablation_view(st: dict, selected: int = 0):
    res: A.AblationResult = st["res"]
    n = res.num_tokens
    cols = int(math.ceil(math.sqrt(n)))
    vmax = float(res.maps.max())
    grid = number_tiles(upscale_to(map_grid(res.maps, columns=cols, pad=GRID_PAD, tile=grid_tile(res)),
                                   GRID_DISPLAY), res)
    order = res.ranking()
    top = ", ".join(f"{i} ({float(res.effect[i]):.3g})" for i in order[:5])
    md = (f"**{n} tokens ablated** ({res.baseline_label}) in one batched pass: "
          f"{1000 * res.seconds:.0f} ms. Most important: {top}. Least: {order[-1]} "
          f"({float(res.effect[order[-1]]):.3g}). Grid: token i at row i // {cols}, column i % {cols} "
          f"(numbered); one shared colour scale; click a cell to select it. Input: {st['desc']}.")
    if st.get("decode_note"):
        md += " " + st["decode_note"]
    return with_colorbar(grid, vmax, MAP_UNIT), A.effect_bar_figure(res.effect, selected), md


def token_view(st: dict, i: int):
    res: A.AblationResult = st["res"]
    i = parse_int(i, "token", 0, res.num_tokens - 1)
    vmax = float(res.maps.max())
    heat = with_colorbar(upscale_to(colorize(res.maps[i], vmax), 256), vmax, MAP_UNIT)
    rank = res.ranking().index(i) + 1
    md = (f"Token **{i}**: mean |Δ| {float(res.effect[i]):.3g}, rank {rank} of {res.num_tokens}, "
          f"max |Δ| {float(res.maps[i].max()):.3f} ({MAP_UNIT}; colour scale shared with the grid).")
    return show(res.base), show(res.ablated[i]), heat, md, A.effect_bar_figure(res.effect, i)


def subset_view(ctx: Ctx, st: dict, order_name: str, k):
    tok = ctx.tokenizer(st["tok"])
    res: A.AblationResult = st["res"]
    n = res.num_tokens
    k = parse_int(k, "k", 0, n)
    order_name = parse_choice(order_name, "order", ["most important", "first"])
    ranked = res.ranking()
    keep = sorted(ranked[:k]) if order_name == "most important" else list(range(k))
    img = A.reconstruct_subset(tok, res.latents, res.replacement, keep)
    ks = sorted(set([0, 1, 2, 4, 8, 16, 32, 64, 128, 256, n, k]) & set(range(n + 1)))
    curves = {"most important first": A.k_sweep(tok, res.latents, res.replacement, ranked, ks, res.base),
              "first k (token order)": A.k_sweep(tok, res.latents, res.replacement, list(range(n)),
                                                 ks, res.base)}
    err = float(A.diff_maps(img[None], res.base[None]).mean())
    md = (f"Kept {k}/{n} tokens ({order_name}): {', '.join(map(str, keep)) or 'none'}; the rest are "
          f"replaced ({res.baseline_label}). Mean |Δ| vs full reconstruction {err:.3g}.")
    return show(img), A.sweep_figure(curves), md


def prefix_view(ctx: Ctx, st: dict, tok_b: str):
    """The prefix strips of image A for tokenizer A (this tab's) and B (the header's): its
    reconstruction from the first k tokens and from its k most important ones, k = 1, 2, 4, … N."""
    names = [st["tok"]] + ([tok_b] if tok_b and tok_b not in ("none", st["tok"]) else [])
    galleries, notes = [], []
    for name in names:
        tok = ctx.tokenizer(name)
        if name == st["tok"]:
            lat, res = st["la"], st["res"]
        else:
            x = model_image(st["image_a"], tok.image_size)[0]
            lat = encode(tok, x).latents[0]
            res = A.ablate_tokens(tok, lat)
        strip = prefix_strip(tok, lat, res.ranking(), ranking_source="this image's ablation effect")
        cells = [(show(img, 128), label) for img, label in zip(strip.first, strip.first_labels)]
        cells += [(show(img, 128), label) for img, label in zip(strip.top, strip.top_labels)]
        galleries.append(gr.update(value=cells, columns=len(strip.ks), label=f"{name}: top row "
                                   f"{strip.rows()[0][0]}; bottom row {strip.rows()[1][0]}",
                                   visible=True))
        notes.append(f"**{name}**: {'; '.join(strip.notes) or 'a true prefix decode'}. "
                     f"{strip.baseline.label}."
                     + (" " + decode_note(tok) if decode_note(tok) else ""))
    while len(galleries) < 2:
        galleries.append(gr.update(value=None, visible=False))
        notes.append("_Pick a tokenizer B in the header to compare._")
    return galleries[0], galleries[1], "\n\n".join(notes)


def swap_view(ctx: Ctx, st: dict, tokens_text):
    if st["lb"] is None:
        raise InputError("swapping needs image B: upload a second image")
    tok = ctx.tokenizer(st["tok"])
    n = st["la"].shape[0]
    idx = parse_token_list(tokens_text, n)
    lat = A.swap_tokens(st["la"], st["lb"], idx)
    imgs = decode(tok, torch.stack([st["la"], st["lb"], lat]))
    return show(imgs[0]), show(imgs[1]), show(imgs[2]), \
        f"Swapped {len(idx)} token(s) from B into A: {', '.join(map(str, idx))}."


def interp_view(ctx: Ctx, st: dict, steps, method):
    if st["lb"] is None:
        raise InputError("interpolation needs image B: upload a second image")
    tok = ctx.tokenizer(st["tok"])
    steps = parse_int(steps, "steps", 2, 16)
    method = parse_choice(method, "method", ["linear", "slerp"])
    lat, ts = A.interpolate_latents(st["la"], st["lb"], steps, method)
    imgs = decode(tok, lat)
    return [(show(imgs[i], 192), f"t = {t:.2f}") for i, t in enumerate(ts)]


# A session's ablation result (tensors, several MB for large models) is dropped this long after its
# last use; prepare() recomputes it when needed, so expiry costs time, never a wrong answer.
STATE_TTL_S = 900


def build(ctx: Ctx):
    state = gr.State({}, time_to_live=STATE_TTL_S)
    with gr.Row():
        with gr.Column(scale=1):
            with gr.Row():
                img_a = image_input("Image A", height=200, elem_id="lab-a")
                img_b = image_input("Image B (for swaps, interpolation, 'another image')", height=200,
                                    elem_id="lab-b")
            if ctx.examples:
                with gr.Row():
                    gr.Examples(ctx.examples, inputs=[img_a], label="Examples for A", examples_per_page=6)
                    gr.Examples(ctx.examples[::-1], inputs=[img_b], label="Examples for B",
                                examples_per_page=6)
            with gr.Row():
                mode = gr.Radio(MODES, value="mean", label="Replace the ablated token with",
                                info="zero · dataset mean token · noise · image B's token")
                seed = gr.Number(0, label="noise seed", precision=0, minimum=0)
            btn = gr.Button("Ablate every token", variant="primary", elem_id="lab-run")
        with gr.Column(scale=2):
            with gr.Row():
                with gr.Column():
                    gr.Markdown("**Per-token difference maps** (numbered; click a cell)")
                    grid = gr.Image(show_label=False, interactive=False, height=384,
                                    elem_id="lab-grid")
                bars = gr.Plot(label="Effect of each token", elem_id="lab-bars")
            summary = gr.Markdown(elem_id="lab-summary")
    with gr.Row():
        token = gr.Slider(0, 255, value=0, step=1, label="Selected token", elem_id="lab-token")
    with gr.Row():
        base = gr.Image(label="Full reconstruction", interactive=False, height=256)
        ablated = gr.Image(label="With the selected token ablated", interactive=False, height=256)
        heat = gr.Image(label="Its difference map", interactive=False, height=256)
    token_md = gr.Markdown()
    with gr.Accordion("Reconstruct from a subset of tokens", open=True):
        with gr.Row():
            order = gr.Radio(["most important", "first"], value="most important", label="Keep")
            k = gr.Slider(0, 256, value=4, step=1, label="k tokens")
            sub_btn = gr.Button("Reconstruct from k tokens", elem_id="lab-subset")
        with gr.Row():
            sub_img = gr.Image(label="k-token reconstruction", interactive=False, height=256)
            sweep = gr.Plot(label="Error versus k")
        sub_md = gr.Markdown()
    with gr.Accordion("Prefix strip: how each tokenizer spends its tokens (image A)", open=True):
        gr.Markdown("Reconstructions of image A from its **first k** tokens (top row) and from its "
                    "**k most important** tokens by this image's ablation effect (bottom row), "
                    "k = 1, 2, 4, … N, for tokenizer A and the header's tokenizer B. A tokenizer "
                    "that cannot decode fewer tokens gets the others replaced by the baseline.")
        prefix_btn = gr.Button("Show the prefix strips", elem_id="lab-prefix")
        strip_a = gr.Gallery(label="Tokenizer A", height=300, object_fit="contain",
                             elem_id="lab-strip-a")
        strip_b = gr.Gallery(label="Tokenizer B", height=300, object_fit="contain",
                             elem_id="lab-strip-b")
        prefix_md = gr.Markdown(elem_id="lab-prefix-md")
    with gr.Accordion("Swap tokens from B into A", open=True):
        with gr.Row():
            swap_tokens = gr.Textbox("0-3", label="Tokens to take from B", info="e.g. 0, 3, 5-7 or all")
            swap_btn = gr.Button("Swap", elem_id="lab-swap")
        with gr.Row():
            rec_a = gr.Image(label="A", interactive=False, height=200)
            rec_b = gr.Image(label="B", interactive=False, height=200)
            swapped = gr.Image(label="A with B's tokens", interactive=False, height=200)
        swap_md = gr.Markdown()
    with gr.Accordion("Interpolate between A and B", open=True):
        with gr.Row():
            steps = gr.Slider(2, 16, value=6, step=1, label="steps")
            method = gr.Radio(["linear", "slerp"], value="linear", label="interpolation")
            interp_btn = gr.Button("Interpolate", elem_id="lab-interp")
        gallery = gr.Gallery(label="A → B", columns=8, height=220, object_fit="contain")

    common_in = [state, img_a, img_b, ctx.tok_a, mode, seed]

    def do_ablate(state, a, b, tok, mode, seed):
        """Ablate all tokens; the most important one is selected and shown large."""
        st = prepare(ctx, state, a, b, tok, mode, seed)
        n = st["res"].num_tokens
        top = st["res"].ranking()[0]
        g, _, md = ablation_view(st, top)
        b_img, a_img, h_img, t_md, fig = token_view(st, top)
        return (st, g, fig, md, gr.update(maximum=n - 1, value=top), gr.update(maximum=n),
                b_img, a_img, h_img, t_md)

    btn.click(event(seeded(do_ablate)), common_in + [ctx.decode_seed],
              [state, grid, bars, summary, token, k, base, ablated, heat, token_md],
              api_name="ablate", concurrency_limit=2)

    def do_token(state, a, b, tok, mode, seed, i):
        st = prepare(ctx, state, a, b, tok, mode, seed)
        return (st,) + token_view(st, i)

    token_out = [state, base, ablated, heat, token_md, bars]
    token.release(event(seeded(do_token)), common_in + [token, ctx.decode_seed], token_out,
                  api_name="select_token")

    def grid_click(state, evt: gr.SelectData):
        if not state or "res" not in state:
            raise InputError("run the ablation first")
        return gr.update(value=grid_cell(state["res"], evt.index[0], evt.index[1]))

    grid.select(handler(grid_click), [state], [token]).then(
        event(seeded(do_token)), common_in + [token, ctx.decode_seed], token_out)

    def do_subset(state, a, b, tok, mode, seed, order, k):
        st = prepare(ctx, state, a, b, tok, mode, seed)
        return (st,) + subset_view(ctx, st, order, k)

    sub_btn.click(event(seeded(do_subset)), common_in + [order, k, ctx.decode_seed],
                  [state, sub_img, sweep, sub_md],
                  api_name="subset", concurrency_limit=2)

    def do_prefix(state, a, b, tok, mode, seed, tok_b):
        st = prepare(ctx, state, a, b, tok, mode, seed)
        return (st,) + prefix_view(ctx, st, tok_b)

    prefix_btn.click(event(seeded(do_prefix), duration=120),
                     common_in + [ctx.tok_b, ctx.decode_seed],
                     [state, strip_a, strip_b, prefix_md], api_name="prefix_strip",
                     concurrency_limit=2)

    def do_swap(state, a, b, tok, mode, seed, tokens):
        if not b:
            raise InputError("swapping needs image B: upload a second image")
        parse_token_list(tokens, ctx.tokenizer(tok).num_tokens)   # refused before any encoding
        st = prepare(ctx, state, a, b, tok, mode, seed)
        return (st,) + swap_view(ctx, st, tokens)

    swap_btn.click(event(seeded(do_swap)), common_in + [swap_tokens, ctx.decode_seed],
                   [state, rec_a, rec_b, swapped, swap_md],
                   api_name="swap", concurrency_limit=2)

    def do_interp(state, a, b, tok, mode, seed, steps, method):
        st = prepare(ctx, state, a, b, tok, mode, seed)
        return st, interp_view(ctx, st, steps, method)

    interp_btn.click(event(seeded(do_interp)), common_in + [steps, method, ctx.decode_seed],
                     [state, gallery],
                     api_name="interpolate", concurrency_limit=2)


GRID_PAD = 3
GRID_WIDTH = 400  # target width of the tiled difference maps, in pixels
GRID_DISPLAY = 384
MAP_UNIT = "|Δ| vs full reconstruction (0–1 pixel units)"


def number_tiles(grid: np.ndarray, res: A.AblationResult, display: int = GRID_DISPLAY,
                 pad: int = GRID_PAD) -> np.ndarray:
    """The displayed grid with each tile's token index in its top-left corner."""
    n = res.maps.shape[0]
    tile = grid_tile(res)
    cols = int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    f = max(1, int(math.ceil(display / (rows * (tile + pad) + pad))))
    return number_cells(grid, n, cols, tile * f, pad * f)


def grid_tile(res: A.AblationResult) -> int:
    """Side of each tile: the maps shrunk so that the grid is about GRID_WIDTH wide."""
    n, h, _ = res.maps.shape
    cols = int(math.ceil(math.sqrt(n)))
    return max(8, min(h, GRID_WIDTH // cols - GRID_PAD))


def grid_cell(res: A.AblationResult, x: float, y: float, display: int = GRID_DISPLAY,
              pad: int = GRID_PAD) -> int:
    """Token index under pixel (x, y) of the grid image shown by ``ablation_view``."""
    n = res.maps.shape[0]
    h = w = grid_tile(res)
    cols = int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    f = max(1, int(math.ceil(display / (rows * (h + pad) + pad))))
    c = int((x / f - pad) // (w + pad))
    r = int((y / f - pad) // (h + pad))
    c, r = min(max(c, 0), cols - 1), min(max(r, 0), rows - 1)
    return min(r * cols + c, n - 1)

