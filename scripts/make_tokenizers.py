"""Write the built-in models' tokenizer files into mifo_engine/assets/.

Both vocabularies are synthetic byte-level BPE vocabularies laid out like CLIP's: byte
symbols, the same with the end-of-word mark, common prompt words, then letter runs, then
<|startoftext|> and <|endoftext|>. `tiny` has 1024 tokens; `sd21-random` has SD 2.1's 49408,
where the special ids equal the real CLIP's (49406, 49407). The engine only loads the files;
this script is how they were made. Run from the repository root:
    .venv/bin/python scripts/make_tokenizers.py
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mifo_engine.builtin import sd21_text_encoder_config  # noqa: E402
from mifo_engine.tokenizers import (  # noqa: E402
    BOS_TOKEN,
    CLIP_MAX_LENGTH,
    EOS_TOKEN,
    PAD_TOKEN,
    SD21_RANDOM_TOKENIZER_DIR,
    TINY_TOKENIZER_DIR,
    TINY_VOCAB_SIZE,
)

# Words merged into whole tokens first, so that typical prompts take a realistic number of
# the 77 token positions.
_COMMON_WORDS = (
    "a an the of and or in on at with by for from to into over under near next behind "
    "above below between is are its their photo picture image painting drawing render "
    "sketch style sitting standing lying top front side left right two three beach "
    "street city park forest mountain snow river lake sea garden room table kitchen "
    "desk floor grass road sky night sunset light dark red blue green yellow orange "
    "purple pink black white brown gray small big large old new cute toy dog cat car "
    "bird horse bear teddy cup mug vase chair bottle book lamp plant flower tree "
    "house shoe bag hat ball robot doll statue sculpture"
)
COMMON_WORDS: tuple[str, ...] = tuple(_COMMON_WORDS.split())


def byte_symbols() -> tuple[str, ...]:
    """The printable stand-ins byte-level BPE uses for the 256 byte values, in CLIP's order."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("\xa1"), ord("\xac") + 1),
        *range(ord("\xae"), ord("\xff") + 1),
    ]
    codes = list(printable)
    shifted = 0
    for byte in range(256):
        if byte not in printable:
            codes.append(256 + shifted)
            shifted += 1
    return tuple(chr(c) for c in codes)


def bpe(symbols: list[str], ranks: Mapping[tuple[str, str], int]) -> list[str]:
    """Byte-pair encode one word: repeatedly join the best-ranked adjacent pair (CLIP's rule)."""
    while len(symbols) > 1:
        candidates = [
            (ranks[pair], pair) for pair in zip(symbols, symbols[1:], strict=False) if pair in ranks
        ]
        if not candidates:
            break
        left, right = min(candidates)[1]
        joined: list[str] = []
        i = 0
        while i < len(symbols):
            if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == (left, right):
                joined.append(left + right)
                i += 2
            else:
                joined.append(symbols[i])
                i += 1
        symbols = joined
    return symbols


def word_merges(ranks: dict[tuple[str, str], int]) -> Iterator[tuple[str, str]]:
    """Merges that make each common word one token, given (and added to) the merges so far.

    Each word is first segmented with the merges already made, then its segments are joined
    left to right; the new merges outrank all later ones, so later merges never split it.
    """
    for word in COMMON_WORDS:
        while len(parts := bpe([*word[:-1], word[-1] + "</w>"], ranks)) > 1:
            yield parts[0], parts[1]


def letter_merges() -> Iterator[tuple[str, str]]:
    """Letter runs, shortest first, each as a word end and as a word part; never ends."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    frontier = list(letters)
    while True:
        grown = []
        for prefix in frontier:
            for letter in letters:
                yield prefix, letter + "</w>"
                yield prefix, letter
                grown.append(prefix + letter)
        frontier = grown


@functools.cache
def synthetic_clip_vocab(vocab_size: int) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """A made-up byte-level BPE vocabulary laid out like CLIP's: tokens (id order) and merges.

    Ids 0-255 are the byte symbols, 256-511 the same with the end-of-word mark, then merged
    tokens, then <|startoftext|> and <|endoftext|>.
    """
    base = byte_symbols()
    tokens = [*base, *(s + "</w>" for s in base)]
    wanted = vocab_size - len(tokens) - 2
    if wanted < 0:
        raise ValueError(f"A CLIP vocabulary needs at least {len(tokens) + 2} tokens.")
    size = len(tokens) + wanted
    known = set(tokens)
    ranks: dict[tuple[str, str], int] = {}

    def add(left: str, right: str) -> None:
        ranks[left, right] = len(ranks)
        if left + right not in known:
            known.add(left + right)
            tokens.append(left + right)

    # A word's next pair is never ranked yet (segmentation would have joined it), and it may
    # rebuild a known token along a new path; letter runs only add new tokens, and never end.
    for left, right in word_merges(ranks):
        if len(tokens) == size:
            break
        add(left, right)
    for left, right in letter_merges():
        if len(tokens) == size:
            break
        if left + right not in known:
            add(left, right)
    tokens += [BOS_TOKEN, EOS_TOKEN]
    return tuple(tokens), tuple(ranks)


def write_tokenizer(target: Path, vocab_size: int) -> str:
    """Write vocab.json, merges.txt and the tokenizer configs of one vocabulary size."""
    tokens, merges = synthetic_clip_vocab(vocab_size)
    target.mkdir(parents=True, exist_ok=True)
    vocab = {token: index for index, token in enumerate(tokens)}
    (target / "vocab.json").write_text(
        json.dumps(vocab, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8"
    )
    lines = ["#version: 0.2", *(f"{left} {right}" for left, right in merges)]
    (target / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": CLIP_MAX_LENGTH,
        "do_lower_case": True,
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "unk_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
    }
    (target / "tokenizer_config.json").write_text(
        json.dumps(config, indent=2) + "\n", encoding="utf-8"
    )
    special = {k: v for k, v in config.items() if k.endswith("_token")}
    (target / "special_tokens_map.json").write_text(
        json.dumps(special, indent=2) + "\n", encoding="utf-8"
    )
    return f"wrote {len(tokens)} tokens and {len(merges)} merges to {target}\n"


def main() -> None:
    """Regenerate both built-in tokenizers."""
    sys.stdout.write(write_tokenizer(TINY_TOKENIZER_DIR, TINY_VOCAB_SIZE))
    sys.stdout.write(
        write_tokenizer(SD21_RANDOM_TOKENIZER_DIR, sd21_text_encoder_config()["vocab_size"])
    )


if __name__ == "__main__":
    main()
