"""Data for the demo: the procedural ``textscenes`` dataset and robust image loading.

- :mod:`.textscenes`: words on photographs/textures, rendered on the fly from (seed, index).
- :mod:`.images`: ``load_image`` (validated, any PIL mode, size caps before decoding),
  ``to_model_input`` (resize/crop, and say how) and ``to_pil``.
"""
