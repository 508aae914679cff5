"""softvq-demo: see what the tokens of 1D image tokenizers (SoftVQ-VAE, TiTok) hold.

    from softvq_demo import load_tokenizer, load_generator, generate
    tok = load_tokenizer("textscenes-softvq-32")        # or a folder, or "SoftVQVAE/softvq-l-64"
    enc = tok.encode(images)                            # images B×3×H×W in [-1, 1]
    enc.latents, enc.probs, enc.indices
    recon = tok.decode(enc.latents)
"""
from .loading import CheckpointError, load_generator, load_tokenizer, save_pretrained
from .models.base import Encoded, Generator, Tokenizer
from .sampling import check_pair, generate, sample

__version__ = "0.1.0"
__all__ = ["load_tokenizer", "load_generator", "sample", "generate", "check_pair", "save_pretrained",
           "CheckpointError", "Encoded", "Tokenizer", "Generator"]
