"""Tab 5: class-conditional generation with timings."""
from __future__ import annotations

import functools

import gradio as gr

from ..sampling import SIT_DEFAULTS, pair_warning, sit_defaults
from ..analysis.pictures import show
from .common import Ctx, event, handler
from .inputs import InputError, parse_choice, parse_float, parse_int

SIT_METHODS = ["euler", "heun", "sde"]
MASKGIT_DECAY = ["linear", "constant", "power-cosine"]


@functools.lru_cache(maxsize=1)
def imagenet_names() -> list[str]:
    try:
        from timm.data import ImageNetInfo
        info = ImageNetInfo()
        return [info.index_to_description(i).split(",")[0] for i in range(info.num_classes())]
    except Exception:
        return []


def class_names(gen) -> list[str]:
    names = getattr(gen, "class_names", None)
    if names:
        return [str(n) for n in names]
    if gen.num_classes == 1000 and imagenet_names():
        return imagenet_names()
    return [f"class {i}" for i in range(gen.num_classes)]


def class_choices(gen) -> list[tuple[str, int]]:
    return [(f"{i}: {n}", i) for i, n in enumerate(class_names(gen))]


def run_generate(ctx: Ctx, gen_name: str, labels, cfg, g_low, g_high, steps, sampler, seed, batch,
                 progress=None):
    gen = ctx.manager.generator(gen_name)
    tok_name = ctx.manager.pair_tokenizer(gen_name)
    if tok_name is None:
        raise InputError(f"no loaded tokenizer can decode {gen_name}'s tokens: load its tokenizer "
                         "(see the model list)")
    tok = ctx.tokenizer(tok_name)
    if labels is None or (isinstance(labels, (list, tuple)) and not labels):
        raise InputError("pick at least one class")
    labels = labels if isinstance(labels, (list, tuple)) else [labels]
    ids = [parse_int(l, "class", 0, gen.num_classes - 1) for l in labels]
    batch = parse_int(batch, "batch size", 1, 16)
    steps = parse_int(steps, "steps", 1, 500)
    seed = parse_int(seed if seed is not None else 0, "seed", 0, 2**31 - 1)
    cfg = parse_float(cfg, "CFG scale", 0.0, 20.0)
    y = [ids[i % len(ids)] for i in range(batch)]
    from ..sampling.oom import generate_with_fallback as generate  # halves the batch on CUDA OOM

    cb = None
    if progress is not None:
        cb = lambda i, n: progress((i, n), desc="sampling", unit="steps")  # noqa: E731
    if gen.family == "sit":
        sampler = parse_choice(sampler, "sampler", SIT_METHODS)
        lo = parse_float(g_low, "guidance interval start", 0.0, 1.0)
        hi = parse_float(g_high, "guidance interval end", 0.0, 1.0)
        if lo > hi:
            raise InputError(f"guidance interval [{lo}, {hi}] is empty: start must be ≤ end")
        out = generate(gen, tok, y, seed=seed, progress=cb, steps=steps, method=sampler, cfg_scale=cfg,
                       guidance_low=lo, guidance_high=hi)
        how = f"{sampler}, {steps} steps, CFG {cfg} on t ∈ [{lo}, {hi}]"
    else:
        decay = sampler if sampler in MASKGIT_DECAY else "linear"
        out = generate(gen, tok, y, seed=seed, progress=cb, steps=steps, guidance_scale=cfg,
                       guidance_decay=decay)
        how = f"MaskGIT, {steps} steps, guidance {cfg} ({decay} decay)"
    names = class_names(gen)
    gallery = [(show(out.images[i], 192), f"{y[i]}: {names[y[i]]}") for i in range(len(y))]
    t = out.timings
    table = {"headers": ["device", "generator (s)", "decode (s)", "total (s)", "images / s",
                         "ms / step", "network evals"],
             "data": [[t.get("device"), round(t["generator_s"], 3), round(t["decode_s"], 3),
                       round(t["total_s"], 3), round(t["images_per_s"], 2), round(t["ms_per_step"], 2),
                       t.get("network_evals", "–")]]}
    md = f"{gen_name} → {tok_name}: {len(y)} image(s), {how}, seed {seed}."
    if t.get("oom_retries"):
        md += (f"\n\n⚠️ Out of device memory at batch {len(y)}: generated in batches of "
               f"{t['batch_used']} instead ({t['oom_retries']} retr{'y' if t['oom_retries'] == 1 else 'ies'}).")
    warning = pair_warning(tok, gen)
    if warning:
        md += f"\n\n⚠️ {warning}."
    return gallery, table, md


def sampler_defaults(gen) -> tuple[str, float, int]:
    """(sampler or guidance decay, CFG scale, steps) a generator samples with by default: a SiT's
    own config.json "sampling" entry over the package defaults; MaskGIT's release settings."""
    if gen is None:
        return "euler", SIT_DEFAULTS["cfg_scale"], SIT_DEFAULTS["steps"]
    if gen.family == "sit":
        d = sit_defaults(gen)
        return d["method"], float(d["cfg_scale"]), int(d["steps"])
    return (getattr(gen, "guidance_decay", "linear"), float(getattr(gen, "guidance_scale", 3.0)),
            int(getattr(gen, "num_steps", 8)))


def build(ctx: Ctx):
    gens = ctx.manager.names("generator")
    first_gen = ctx.manager.generator(gens[0]) if gens else None
    method0, cfg0, steps0 = sampler_defaults(first_gen)
    with gr.Row():
        with gr.Column(scale=1):
            init = class_choices(first_gen) if first_gen is not None else []
            classes = gr.Dropdown(init, value=[init[0][1]] if init else [], multiselect=True,
                                  allow_custom_value=True, label="Classes", elem_id="gen-classes",
                                  info="one or more (type to search); the batch cycles through them")
            with gr.Row():
                cfg = gr.Slider(0, 10, value=cfg0, step=0.05, label="CFG scale")
                steps = gr.Slider(1, 250, value=steps0, step=1, label="steps")
            with gr.Row():
                g_low = gr.Slider(0, 1, value=0.0, step=0.05, label="guidance from t =")
                g_high = gr.Slider(0, 1, value=0.7, step=0.05, label="guidance to t =")
            sampler = gr.Radio(SIT_METHODS + MASKGIT_DECAY, value=method0, label="Sampler",
                               info="SiT: euler / heun / sde · MaskGIT: guidance decay")
            with gr.Row():
                seed = gr.Number(0, label="seed", precision=0, minimum=0)
                batch = gr.Slider(1, 16, value=4, step=1, label="batch size")
            btn = gr.Button("Generate", variant="primary", elem_id="gen-run")
        with gr.Column(scale=2):
            gallery = gr.Gallery(label="Samples", columns=4, height=420, object_fit="contain",
                                 elem_id="gen-gallery")
            timing = gr.Dataframe(label="Timing", interactive=False, elem_id="gen-timing")
            md = gr.Markdown(elem_id="gen-notes")

    def fn(gen, labels, cfg, lo, hi, steps, sampler, seed, batch, progress=gr.Progress()):
        return run_generate(ctx, gen, labels, cfg, lo, hi, steps, sampler, seed, batch, progress)

    btn.click(event(fn, duration=120), [ctx.gen, classes, cfg, g_low, g_high, steps, sampler, seed, batch],
              [gallery, timing, md], api_name="generate", concurrency_limit=2)

    def on_gen(gen_name):
        """A new generator: its class names and its family's sampler defaults."""
        if not gen_name:
            return gr.update(choices=[], value=[]), gr.update(), gr.update(), gr.update()
        gen = ctx.manager.generator(gen_name)
        choices = class_choices(gen)
        first = [choices[0][1]] if choices else []
        method, scale, n = sampler_defaults(gen)
        return (gr.update(choices=choices, value=first), gr.update(value=method),
                gr.update(value=scale), gr.update(value=n))

    return [classes, sampler, cfg, steps], handler(on_gen)
