"""Training of the embedded textscenes models (``python -m softvq_demo.train --help``)."""
