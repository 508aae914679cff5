"""Tab 5: class-conditional generation with timings."""
from __future__ import annotations

import functools

import gradio as gr

from ..analysis.pictures import show
from ..sampling import pair_warning, settings
from ..sampling.oom import generate_with_fallback
from .common import Ctx, event, handler
from .inputs import InputError, parse_choice, parse_float, parse_int

SIT = settings.SIT
MASKGIT = settings.MASKGIT
ALL_SAMPLER_CHOICES = list(SIT["method"].choices) + list(MASKGIT["guidance_decay"].choices)


@functools.lru_cache(maxsize=1)
def imagenet_names() -> list[str]:
    try:  # inside the fallback: a timm without ImageNetInfo gives no names, not a failed start
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
    seed = parse_int(seed if seed is not None else 0, "seed", 0, 2**31 - 1)
    table = settings.family_settings(gen.family)
    steps = parse_int(steps, "steps", table["steps"].low, table["steps"].high)
    scale = table[settings.guidance_key(gen)]
    cfg = parse_float(cfg, scale.label, scale.low, scale.high)
    y = [ids[i % len(ids)] for i in range(batch)]

    cb = None
    if progress is not None:
        cb = lambda i, n: progress((i, n), desc="sampling", unit="steps")  # noqa: E731
    if gen.family == "sit":
        sampler = parse_choice(sampler, "sampler", list(SIT["method"].choices))
        lo = parse_float(g_low, "guidance interval start", SIT["guidance_low"].low, SIT["guidance_low"].high)
        hi = parse_float(g_high, "guidance interval end", SIT["guidance_high"].low, SIT["guidance_high"].high)
        if lo > hi:
            raise InputError(f"guidance interval [{lo}, {hi}] is empty: start must be ≤ end")
        out = generate_with_fallback(gen, tok, y, seed=seed, progress=cb, steps=steps, method=sampler,
                                     cfg_scale=cfg, guidance_low=lo, guidance_high=hi)
        how = f"{sampler}, {steps} steps, CFG {cfg} on t ∈ [{lo}, {hi}]"
    else:  # MaskGIT: the "sampler" control is its guidance decay (no SiT methods, no interval)
        decay = parse_choice(sampler, "guidance decay", list(MASKGIT["guidance_decay"].choices))
        out = generate_with_fallback(gen, tok, y, seed=seed, progress=cb, steps=steps,
                                     guidance_scale=cfg, guidance_decay=decay)
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
    """(sampler or guidance decay, CFG scale, steps) a generator samples with by default
    (``sampling.settings.defaults``: a SiT's config.json "sampling" entry over the package
    defaults; MaskGIT's release settings)."""
    if gen is None:
        return SIT["method"].default, SIT["cfg_scale"].default, SIT["steps"].default
    d = settings.defaults(gen)
    if gen.family == "sit":
        return d["method"], float(d["cfg_scale"]), int(d["steps"])
    return d["guidance_decay"], float(d["guidance_scale"]), int(d["steps"])


def controls_for(gen) -> tuple:
    """gr.update()s that make the sampler controls fit a generator's family: SiT shows its
    sampler methods and the guidance interval; MaskGIT its guidance decays and no interval."""
    method, scale, n = sampler_defaults(gen)
    sit = gen is None or gen.family == "sit"
    table = SIT if sit else MASKGIT
    choice = table["method" if sit else "guidance_decay"]
    guide = table["cfg_scale" if sit else "guidance_scale"]
    return (gr.update(choices=list(choice.choices), value=method, label=choice.label.capitalize(),
                      info=choice.help),
            gr.update(value=scale, minimum=guide.low, maximum=guide.high, label=guide.label),
            gr.update(value=n, minimum=table["steps"].low, maximum=table["steps"].high),
            gr.update(visible=sit), gr.update(visible=sit))


def build(ctx: Ctx):
    gens = ctx.manager.names("generator")
    first_gen = ctx.manager.generator(gens[0]) if gens else None
    method0, cfg0, steps0 = sampler_defaults(first_gen)
    sit0 = first_gen is None or first_gen.family == "sit"
    table0 = SIT if sit0 else MASKGIT
    choice0 = table0["method" if sit0 else "guidance_decay"]
    guide0 = table0["cfg_scale" if sit0 else "guidance_scale"]
    with gr.Row():
        with gr.Column(scale=1):
            init = class_choices(first_gen) if first_gen is not None else []
            classes = gr.Dropdown(init, value=[init[0][1]] if init else [], multiselect=True,
                                  allow_custom_value=True, label="Classes", elem_id="gen-classes",
                                  info="one or more (type to search); the batch cycles through them")
            with gr.Row():
                cfg = gr.Slider(guide0.low, guide0.high, value=cfg0, step=guide0.step,
                                label=guide0.label, elem_id="gen-cfg")
                steps = gr.Slider(table0["steps"].low, table0["steps"].high, value=steps0, step=1,
                                  label="steps", elem_id="gen-steps")
            with gr.Row():
                lo, hi = SIT["guidance_low"], SIT["guidance_high"]
                g_low = gr.Slider(lo.low, lo.high, value=lo.default, step=lo.step, label=lo.label,
                                  visible=sit0, elem_id="gen-g-low")
                g_high = gr.Slider(hi.low, hi.high, value=hi.default, step=hi.step, label=hi.label,
                                   visible=sit0, elem_id="gen-g-high")
            # Registered with every family's choices (API calls name any generator); the browser
            # shows only the selected generator's (controls_for narrows them per session).
            sampler = gr.Radio(ALL_SAMPLER_CHOICES, value=method0, label=choice0.label.capitalize(),
                               info=choice0.help, elem_id="gen-sampler")
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
        """A new generator: its class names, and sampler controls of its family at its defaults."""
        if not gen_name:
            return (gr.update(choices=[], value=[]),) + tuple(gr.update() for _ in range(5))
        gen = ctx.manager.generator(gen_name)
        choices = class_choices(gen)
        first = [choices[0][1]] if choices else []
        return (gr.update(choices=choices, value=first),) + controls_for(gen)

    return [classes, sampler, cfg, steps, g_low, g_high], handler(on_gen)
