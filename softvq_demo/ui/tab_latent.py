"""Tab 4: latent map — encode a set, project with PCA/UMAP, click a point to see the image."""
from __future__ import annotations

import gradio as gr

from ..analysis import latent_map as L
from ..analysis.codec import decode, encode
from ..analysis.pictures import show
from . import datasets
from .common import Ctx, decode_note, event, seeded
from .inputs import InputError, parse_choice, parse_int

# Browser side: clicking a point of the plotly map writes its image index into a hidden textbox
# (#lm-click, "image:token") and fires its input event, which runs `show_point` on the server.
CLICK_JS = """
() => {
  window.__softvqClickHook = true;
  const bind = () => {
    document.querySelectorAll('#lm-plot .js-plotly-plot').forEach((gd) => {
      if (gd.__lmBound || !gd.on) return;
      gd.__lmBound = true;
      gd.on('plotly_click', (ev) => {
        if (!ev || !ev.points || !ev.points.length) return;
        const cd = ev.points[0].customdata;
        const idx = Array.isArray(cd) ? cd[0] + ':' + cd[1] : cd;   // image index : token index
        const box = document.querySelector('#lm-click textarea, #lm-click input');
        if (!box) return;
        box.value = String(idx) + '#' + Date.now();
        box.dispatchEvent(new Event('input', {bubbles: true}));
      });
    });
  };
  new MutationObserver(bind).observe(document.body, {childList: true, subtree: true});
  bind();
}
"""


def compute_map(ctx: Ctx, tok_name: str, source: str, count, files, view: str, method: str,
                color: str, progress=None):
    tok = ctx.tokenizer(tok_name)
    source = parse_choice(source, "image set", list(datasets.SOURCES))
    view = parse_choice(view, "view", list(L.VIEWS))
    method = parse_choice(method, "projection", list(L.METHODS))
    color = parse_choice(color, "colour", list(L.COLOR_BY))
    count = parse_int(count, "number of images", 2, 4096)
    step = progress or (lambda f, m: None)
    step(0.0, "loading images")
    s = datasets.get(source, tok.image_size, count, files)
    if s.images.shape[0] < 2:
        raise InputError("need at least 2 images for a map")
    set_key = (source, count, L.tensor_key(s.images) if source == "upload" else None)
    lat = ctx.manager.cached((tok_name, "latents", set_key),
                             lambda: L.encode_set(tok, s.images, progress=lambda f, m: step(0.1 + 0.4 * f, m)))
    step(0.5, f"projecting with {method.upper()}")
    key = (tok_name, "map", set_key, view, method)
    hit = ctx.manager.cache.get(key)
    cached = hit is not None
    lm = hit if cached else ctx.manager.cache.put(key, L.latent_map(lat, view, method, labels=s.labels,
                                                                     captions=s.names))
    step(1.0, "done")
    fig = L.scatter_figure(lm, color)   # refuses a colouring the map cannot show, with a message
    md = (f"{s.note}: {lat.shape[0]} images × {lat.shape[1]} tokens × {lat.shape[2]} dims. "
          f"{method.upper()} {'(cached) ' if cached else ''}: {lm.extras.get('note', '')}. "
          "Click a point (or type an image index) to see the image and its reconstruction.")
    state = {"tok": tok_name, "source": source, "count": count, "files": files, "n": lat.shape[0],
             "set_key": set_key, "view": view}
    return fig, md, state, gr.update(maximum=lat.shape[0] - 1)


def show_point(ctx: Ctx, state: dict, index):
    if not state:
        raise InputError("compute a map first")
    text = str(index).split("#")[0].strip()
    if not text:
        raise InputError("no point selected")
    image_part, _, token_part = text.partition(":")
    i = parse_int(image_part, "image index", 0, state["n"] - 1)
    tok = ctx.tokenizer(state["tok"])
    s = datasets.one(state["source"], tok.image_size, state["count"], state["files"], i)  # not all
    lat = ctx.manager.cache.get((state["tok"], "latents", state["set_key"]))
    if lat is None:
        lat = encode(tok, s.images[0:1]).latents
        i_lat = 0
    else:
        i_lat = i
    rec = decode(tok, lat[i_lat:i_lat + 1])[0]
    label = f" · class {s.labels[0]}" if s.labels else ""
    point = f"Image {i}"
    if state.get("view") == "token" and token_part.strip():
        t = parse_int(token_part, "token index", 0, lat.shape[1] - 1)
        point = f"Token {t} of image {i}"
    note = decode_note(tok)
    return show(s.images[0]), show(rec), f"{point}: {s.names[0]}{label}" + (
        f". {note}" if note else ""), i


def build(ctx: Ctx):
    state = gr.State({})
    with gr.Row():
        source = gr.Radio(list(datasets.SOURCES), value="examples", label="Image set")
        count = gr.Slider(2, 2048, value=200, step=1, label="images (max)")
        files = gr.File(label="Upload a batch", file_count="multiple", file_types=["image"], height=100)
    with gr.Row():
        view = gr.Radio([("pooled per image", "image"), ("per token", "token")], value="image",
                        label="Points")
        method = gr.Radio([("PCA (instant)", "pca"), ("UMAP", "umap")], value="pca", label="Projection")
        color = gr.Radio(list(L.COLOR_BY), value="class", label="Colour by",
                         info="token: per-token view only · class: image sets with classes")
        btn = gr.Button("Compute map", variant="primary", elem_id="lm-run")
    with gr.Row():
        with gr.Column(scale=3):
            plot = gr.Plot(label="Latent map", elem_id="lm-plot")
            md = gr.Markdown(elem_id="lm-notes")
        with gr.Column(scale=1):
            # visible in the DOM (the click script writes into it) but hidden by CSS
            click = gr.Textbox(elem_id="lm-click", elem_classes=["lm-hidden"], show_label=False,
                               container=False)
            index = gr.Number(0, label="image index", precision=0, minimum=0, elem_id="lm-index")
            show_btn = gr.Button("Show image", elem_id="lm-show")
            orig = gr.Image(label="Image", interactive=False, height=200, elem_id="lm-orig")
            rec = gr.Image(label="Reconstruction", interactive=False, height=200)
            caption = gr.Markdown(elem_id="lm-caption")

    def fn(tok, source, count, files, view, method, color, progress=gr.Progress()):
        return compute_map(ctx, tok, source, count, files, view, method, color,
                           progress=lambda f, m: progress(f, desc=m))

    btn.click(event(fn, duration=180), [ctx.tok_a, source, count, files, view, method, color],
              [plot, md, state, index], api_name="latent_map", concurrency_limit=2)
    point = event(seeded(lambda st, i: show_point(ctx, st, i)))
    show_btn.click(point, [state, index, ctx.decode_seed], [orig, rec, caption, index],
                   api_name="latent_point")
    click.change(point, [state, click, ctx.decode_seed], [orig, rec, caption, index])
    return CLICK_JS
