"""Write the tiny test model's tokenizer files into mifo_engine/assets/tiny_tokenizer/.

The vocabulary is synthetic (see `mifo_engine.models.synthetic_clip_vocab`): byte symbols,
common prompt words, then letter runs, laid out like CLIP's. Run from the repository root:
    .venv/bin/python scripts/make_tiny_tokenizer.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mifo_engine.models import TINY_VOCAB_SIZE, synthetic_clip_vocab  # noqa: E402

TARGET = ROOT / "mifo_engine" / "assets" / "tiny_tokenizer"


def main() -> None:
    """Regenerate vocab.json, merges.txt and the tokenizer configs."""
    tokens, merges = synthetic_clip_vocab(TINY_VOCAB_SIZE)
    TARGET.mkdir(parents=True, exist_ok=True)
    vocab = {token: index for index, token in enumerate(tokens)}
    (TARGET / "vocab.json").write_text(
        json.dumps(vocab, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8"
    )
    lines = ["#version: 0.2", *(f"{left} {right}" for left, right in merges)]
    (TARGET / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "do_lower_case": True,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "!",
    }
    (TARGET / "tokenizer_config.json").write_text(
        json.dumps(config, indent=2) + "\n", encoding="utf-8"
    )
    special = {k: v for k, v in config.items() if k.endswith("_token")}
    (TARGET / "special_tokens_map.json").write_text(
        json.dumps(special, indent=2) + "\n", encoding="utf-8"
    )
    sys.stdout.write(f"wrote {len(tokens)} tokens and {len(merges)} merges to {TARGET}\n")


if __name__ == "__main__":
    main()
