"""CLIP tokenizers: loading a tokenizer folder, and the built-in models' shipped tokenizers.

No torch here: the HTTP front end counts prompt tokens with these.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ModelLoadError
from .sources import FIX, first_line

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

_ASSETS = Path(__file__).parent / "assets"
# Synthetic vocabularies laid out like CLIP's, written by scripts/make_tokenizers.py.
TINY_TOKENIZER_DIR = _ASSETS / "tiny_tokenizer"
SD21_RANDOM_TOKENIZER_DIR = _ASSETS / "sd21_random_tokenizer"
TINY_VOCAB_SIZE = 1024
CLIP_MAX_LENGTH = 77
# SD 2.x tokenizers pad with "!" (id 0, as OpenCLIP does), not with the end token as SD 1.x.
PAD_TOKEN = "!"
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"


def load_tokenizer_dir(folder: Path) -> CLIPTokenizer:
    """The CLIP tokenizer saved in `folder`, or ModelLoadError saying why it is unreadable."""
    from transformers import CLIPTokenizer

    try:
        return CLIPTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as exc:  # tokenizer loading raises OSError, ValueError or JSON errors
        raise ModelLoadError(
            f"Tokenizer at {folder} could not be loaded ({type(exc).__name__}: {first_line(exc)}).",
            field="model",
            fix=FIX,
        ) from exc


def tiny_tokenizer() -> CLIPTokenizer:
    """The tokenizer of the `tiny` test model: 1024 tokens."""
    return load_tokenizer_dir(TINY_TOKENIZER_DIR)


def sd21_random_tokenizer() -> CLIPTokenizer:
    """The tokenizer of `sd21-random`: SD 2.1's 49408 ids, bos/eos at CLIP's 49406/49407."""
    return load_tokenizer_dir(SD21_RANDOM_TOKENIZER_DIR)
