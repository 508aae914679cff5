"""SoftVQ explorer: `python app.py` (embedded models, no network needed).

Flags: --tokenizer SRC / --generator SRC (repeatable; a local folder, a catalogue name or a Hub id),
--device, --host, --port, --share. Works unchanged as a Hugging Face Space (ZeroGPU included).
"""
from __future__ import annotations

import argparse
import logging
import os

try:  # ZeroGPU Spaces: `spaces` must be imported before anything initialises CUDA
    import spaces  # noqa: F401
except ImportError:
    pass


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Interactive explorer for 1D image tokenizers "
                                            "(SoftVQ-VAE, TiTok)")
    p.add_argument("--tokenizer", action="append", default=[], metavar="SRC",
                   help="tokenizer folder / catalogue name / Hub id (repeatable); default: the "
                        "embedded models in checkpoints/")
    p.add_argument("--generator", action="append", default=[], metavar="SRC",
                   help="generator folder / catalogue name / Hub id (repeatable)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: CUDA when present)")
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    p.add_argument("--share", action="store_true", help="create a public gradio.live link")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # start-up: `python app.py --help` takes 0.1 s; gradio, torch and the app take ~9 s (measured)
    from softvq_demo.ui import build_app

    demo = build_app(tokenizers=args.tokenizer, generators=args.generator, device=args.device)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, show_error=True,
                footer_links=["api", "gradio"], **demo.launch_kwargs)


if __name__ == "__main__":
    main()
