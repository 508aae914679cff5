"""The Gradio explorer (thin: validation, calls into softvq_demo.analysis, formatting).

    from softvq_demo.ui import build_app
    demo = build_app(tokenizers=["textscenes-softvq-32"], generators=["textscenes-sit"])
    demo.launch(**demo.launch_kwargs)
"""
from .app import build_app, create_manager
from .manager import ModelManager

__all__ = ["build_app", "create_manager", "ModelManager"]
