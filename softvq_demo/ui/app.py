"""The Gradio Blocks explorer: a header with model pickers, then one tab per analysis."""
from __future__ import annotations

import logging
import os
import threading
from typing import Optional, Sequence

import gradio as gr
import numpy as np
import torch

from ..analysis.latent_map import umap_2d
from ..catalogue import CATALOGUE, embedded_available, find_entry
from ..loading import CheckpointError
from ..sampling import policy
from . import tab_codebook, tab_generate, tab_latent, tab_reconstruct, tab_text, tab_tokens
from .cache import atomic_image_cache
from .common import ON_SPACES, Ctx, guard_files, guard_numbers, handler, list_examples
from .guard import install as install_guard, launch_settings as guard_launch_settings, scrub_paths
from .manager import ModelManager, is_offline
from .tab_generate import sampler_defaults

log = logging.getLogger("softvq_demo.ui")

CSS = """
#lab-grid img, #tt-canvas img, .pixelated img { image-rendering: pixelated; }
.model-summary { font-size: 0.9em; }
.lm-hidden { display: none !important; }
#rec-table th, #rec-table td { word-break: normal; overflow-wrap: normal; hyphens: none; }
"""


def create_manager(tokenizers: Sequence[str] = (), generators: Sequence[str] = (),
                   device: Optional[str] = None) -> ModelManager:
    """Load the command-line models (local folders allowed) or, without any, the embedded ones."""
    manager = ModelManager(device=device)
    sources = [(s, "tokenizer") for s in tokenizers] + [(s, "generator") for s in generators]
    if not sources:
        sources = [(e.name, e.kind) for e in embedded_available()]
        if not sources:
            manager.messages.append(
                "No embedded models found in checkpoints/ yet. Load one from the catalogue below "
                "(needs internet) or start the app with `--tokenizer FOLDER` / `--generator FOLDER`.")
    for src, kind in sources:
        try:
            manager.load(src, kind, allow_local=True)
        except Exception as err:  # keep starting: tell the user in the header
            log.error("could not load %s %s: %s", kind, src, err)
            manager.messages.append(f"Could not load {kind} `{src}`: {err}")
    return manager


def build_app(tokenizers: Sequence[str] = (), generators: Sequence[str] = (),
              device: Optional[str] = None, manager: Optional[ModelManager] = None) -> gr.Blocks:
    """Build the explorer. Models come from ``manager`` or are loaded from the given sources."""
    manager = manager or create_manager(tokenizers, generators, device)
    ctx = Ctx(manager=manager, examples=list_examples())
    toks = manager.names("tokenizer")
    gens = manager.names("generator")

    with gr.Blocks(title="SoftVQ explorer: what do 1D image tokens hold?",
                   delete_cache=cache_policy()) as demo:
        gr.Markdown(
            "# SoftVQ explorer\nLook inside 1D image tokenizers: **SoftVQ-VAE** (continuous tokens, "
            "each a softmax-weighted sum of codewords) and **TiTok** (discrete VQ tokens). "
            f"Running on **{_device_text(manager.device)}**"
            + (" (ZeroGPU)" if ON_SPACES else "") + ".")
        notes = scrub_paths("\n".join(f"- {m}" for m in manager.messages))  # public config
        gr.Markdown(notes, visible=bool(notes), elem_id="startup-notes")
        banner = embedded_banner(manager)
        gr.Markdown(banner, visible=bool(banner), elem_id="embedded-banner")
        with gr.Row():
            ctx.tok_a = gr.Dropdown(toks, value=toks[0] if toks else None, label="Tokenizer A",
                                    elem_id="tok-a", allow_custom_value=False)
            ctx.tok_b = gr.Dropdown(["none"] + toks, value=_second(toks), label="Tokenizer B (compare)",
                                    elem_id="tok-b")
            ctx.gen = gr.Dropdown(gens, value=gens[0] if gens else None, label="Generator",
                                  elem_id="gen")
            # FlexTok (issue 18): stochastic decoders draw from this seed; 🎲 picks a new one.
            with gr.Column(scale=0, min_width=160):
                # bounds checked by the handlers (``seeded``), so the message names the field
                ctx.decode_seed = gr.Number(0, label="Decode seed (FlexTok)", precision=0,
                                            elem_id="decode-seed")
                redraw = gr.Button("🎲 new seed", size="sm", elem_id="decode-redraw")
        with gr.Accordion("Models: loaded, and more from the catalogue", open=not toks):
            summary = gr.Markdown(scrub_paths(manager.summary()), elem_classes=["model-summary"],
                                  elem_id="model-summary")
            with gr.Row():
                catalogue = gr.Dropdown(_catalogue_choices(), label="Catalogue model",
                                        elem_id="catalogue")
                load_btn = gr.Button("Load", elem_id="load-model")
            load_md = gr.Markdown(elem_id="load-status")

        with gr.Tabs():
            with gr.Tab("Reconstruct", id="reconstruct"):
                tab_reconstruct.build(ctx)
            with gr.Tab("Token lab", id="tokens"):
                tab_tokens.build(ctx)
            with gr.Tab("Codebook", id="codebook"):
                codebook_follow, codebook_outputs = tab_codebook.build(ctx)
            with gr.Tab("Latent map", id="latent"):
                click_js = tab_latent.build(ctx)
            with gr.Tab("Generate", id="generate"):
                gen_outputs, on_gen = tab_generate.build(ctx)
            with gr.Tab("Text tokens", id="text"):
                tab_text.build(ctx)

        def load_model(name, progress=gr.Progress(track_tqdm=True)):  # hub download bars
            """Load a catalogue model. A failure (offline, a bad download) is one readable line
            in the status box, not an error event: an error would also mark every output — the
            model pickers — with a red "Error" badge."""
            if not name:
                raise ValueError("pick a catalogue model first")
            entry = find_entry(name)
            if entry is None:
                raise ValueError(f"{name!r} is not in the catalogue")
            progress(0.0, desc=f"loading {name}")
            try:
                item = manager.load(name, entry.kind, allow_local=False,
                                    progress=lambda f, m: progress(f, desc=m))
            except (ValueError, OSError, CheckpointError) as err:
                log.warning("could not load catalogue model %s: %s", name, err)
                first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
                return (f"⚠️ Could not load **{name}**: {first}", gr.update(), gr.update(),
                        gr.update(), gr.update())
            t, g = manager.names("tokenizer"), manager.names("generator")
            msg = f"Loaded **{item.name}** ({item.kind}) in {item.seconds:.1f} s."
            return (msg, scrub_paths(manager.summary()), gr.update(choices=t), gr.update(choices=["none"] + t),
                    gr.update(choices=g, value=item.name if item.kind == "generator" else None)
                    if item.kind == "generator" else gr.update(choices=g))

        # not under spaces.GPU: a model loaded in a ZeroGPU worker would vanish with it
        load_btn.click(handler(load_model), [catalogue],
                       [load_md, summary, ctx.tok_a, ctx.tok_b, ctx.gen], api_name="load_model",
                       concurrency_limit=1)
        redraw.click(lambda: int(torch.randint(0, 2**31 - 1, ()).item()), None, ctx.decode_seed,
                     api_name="new_decode_seed")
        ctx.gen.change(on_gen, [ctx.gen], gen_outputs)
        demo.load(on_gen, [ctx.gen], gen_outputs)
        demo.load(handler(codebook_follow), [ctx.tok_a], codebook_outputs)
    guard_numbers(demo)
    guard_files(demo)
    atomic_image_cache()
    install_guard(demo)   # the request boundary: inputs, messages, limits, cancellation (ui.guard)
    warm_up_umap()
    warm_up_generate(manager)
    demo.queue(default_concurrency_limit=2 if manager.device.type == "cpu" else 4, max_size=64)
    # Gradio 6 takes css/js at launch(): app.py passes these on.
    demo.launch_kwargs = {"css": CSS, "js": click_js,  # type: ignore[attr-defined]
                          **guard_launch_settings()}
    demo.manager = manager  # type: ignore[attr-defined]
    demo.ctx = ctx          # type: ignore[attr-defined]
    return demo


def embedded_banner(manager: ModelManager) -> str:
    """What the embedded models are and how to load the official ones (only when every loaded
    model is an embedded one)."""
    names = manager.names("tokenizer") + manager.names("generator")
    embedded = {e.name for e in CATALOGUE if e.embedded}
    if not names or not set(names) <= embedded:
        return ""
    classes = sorted({manager.generator(n).num_classes for n in manager.names("generator")})
    words = f"; the generators know {', '.join(map(str, classes))} word classes" if classes else ""
    return ("ℹ️ **These are the small embedded models** (" + ", ".join(f"`{n}`" for n in names)
            + "): about 4M parameters each, 128 px, trained here on *textscenes v2* (synthetic text "
            "scenes: open-vocabulary words in ~250 fonts over photographs and textures" + words
            + ") so that the app works offline in seconds. Limits: small or unusual text is often "
            "illegible after reconstruction and generated words rarely read; they are not the "
            "papers' ImageNet models (see each model card in `checkpoints/`). To explore the "
            "official SoftVQ-VAE / TiTok releases, pick one under **Models** below and press "
            "**Load** (downloads from the Hugging Face Hub: needs the network), or start the app "
            "with `--tokenizer NAME`.")


def cache_policy() -> Optional[tuple[int, int]]:
    """How long uploads and result images stay in gradio's cache (GRADIO_TEMP_DIR): files older
    than SOFTVQ_CACHE_TTL seconds (default 3600; 0 keeps them until the server stops) are deleted,
    checked every TTL/4 s (at most 600). Without this a public app's cache only ever grows. The TTL
    must exceed the longest wait in the queue: an upload is read when its request runs."""
    try:
        ttl = int(float(os.environ.get("SOFTVQ_CACHE_TTL", 3600)))
    except ValueError:
        ttl = 3600
    if ttl <= 0:
        return None
    return (max(1, min(ttl // 4, 600)), ttl)


def warm_up_umap() -> None:
    """Compile UMAP's numba kernels in the background (≈10 s once per process), so the first
    latent map a user asks for is not the one that pays for it. SOFTVQ_NO_WARMUP=1 disables it."""
    if os.environ.get("SOFTVQ_NO_WARMUP"):
        return

    def run():
        try:  # umap itself is imported inside umap_2d (heavy optional)
            umap_2d(np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32), n_neighbors=8)
        except Exception as err:  # optional: never block the app
            log.info("UMAP warm-up skipped: %s", err)

    threading.Thread(target=run, name="umap-warmup", daemon=True).start()


def warm_up_generate(manager: ModelManager) -> list:
    """On a GPU, warm the fast path in the background for each loaded generator at the Generate
    tab's starting settings, so the first click is not the one that compiles; clicks before it
    is ready run the reference sampler (sampling.policy). SOFTVQ_NO_WARMUP=1 disables it."""
    if os.environ.get("SOFTVQ_NO_WARMUP") or manager.device.type != "cuda":
        return []
    threads = []
    for name in manager.names("generator"):
        try:
            gen, tok_name = manager.generator(name), manager.pair_tokenizer(name)
            if tok_name is None:
                continue
            method, cfg, steps = sampler_defaults(gen)
            if gen.family == "sit":  # exactly what the tab passes on a first click (batch 4)
                options = dict(steps=int(steps), method=method, cfg_scale=float(cfg),
                               guidance_low=0.0, guidance_high=0.7)
            else:
                options = dict(steps=int(steps), guidance_scale=float(cfg), guidance_decay=method)
            t = policy.warm_in_background(gen, manager.tokenizer(tok_name), 4, options)
            if t is not None:
                threads.append(t)
        except Exception as err:  # optional: never block the app
            log.info("generate warm-up skipped for %s: %s", name, err)
    return threads


def _second(toks: list[str]) -> str:
    """Default comparison tokenizer: another family if loaded (SoftVQ vs TiTok), else none."""
    return toks[1] if len(toks) > 1 else "none"


def _catalogue_choices() -> list[tuple[str, str]]:
    offline = " (offline: cached only)" if is_offline() else ""
    out = []
    for e in CATALOGUE:
        where = "embedded" if e.embedded else e.repo_id
        out.append((f"{e.name} · {e.kind} · {where}{offline if not e.embedded else ''}", e.name))
    return out


def _device_text(device: torch.device) -> str:
    if device.type == "cuda":
        try:
            return f"{torch.cuda.get_device_name(device)} (bf16 autocast)"
        except Exception:
            return "CUDA (bf16 autocast)"
    return f"CPU, {torch.get_num_threads()} threads (fp32)"
