"""Text in any script on pictures: a chain of TrueType fonts, chosen character by character.

The fonts come with packages the engine installs: DejaVu Sans (Latin, Greek, Cyrillic and
many symbols) and Last Resort (one symbol per Unicode block, so no character is ever drawn
as an empty box) from matplotlib, and Noto Sans CJK from mplfonts (Chinese, Japanese,
Korean). Pillow draws with one font at a time and has no fallback, so this module splits a
text into runs, each drawn with the first font of the chain whose character map holds it.
A font file that is missing is skipped; with none at all, Pillow's built-in font is used.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from fontTools.ttLib import TTFont
from PIL import ImageDraw, ImageFont

# (package, path inside it) in the order they are tried for each character.
FONT_FILES: tuple[tuple[str, str], ...] = (
    ("matplotlib", "mpl-data/fonts/ttf/DejaVuSans.ttf"),
    ("mplfonts", "fonts/NotoSansCJKsc-Regular.otf"),
)
# Maps every code point to its block's symbol: it takes whatever the others lack.
LAST_RESORT = ("matplotlib", "mpl-data/fonts/ttf/LastResortHE-Regular.ttf")


def _package_file(package: str, relative: str) -> Path | None:
    """The file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    return path if path.is_file() else None


@functools.cache
def _characters(path: Path) -> frozenset[int]:
    """The code points a font file maps to glyphs."""
    with TTFont(path, lazy=True, fontNumber=0) as font:
        return frozenset(font.getBestCmap() or {})


def font_paths() -> list[Path]:
    """The chain's font files that are installed, in order."""
    found = (_package_file(package, relative) for package, relative in FONT_FILES)
    return [path for path in found if path is not None]


@dataclass(frozen=True)
class _Face:
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont
    characters: frozenset[int] | None  # None: takes every character (the last resort)


@functools.cache
def font_chain(size: int) -> FontChain:
    """The chain at `size` pixels, built once per size."""
    faces = [_Face(ImageFont.truetype(str(p), size), _characters(p)) for p in font_paths()]
    last = _package_file(*LAST_RESORT)
    font = ImageFont.truetype(str(last), size) if last else ImageFont.load_default(size)
    faces.append(_Face(font, None))
    return FontChain(tuple(faces))


@dataclass(frozen=True)
class FontChain:
    faces: tuple[_Face, ...]

    def _face_for(self, char: str) -> _Face:
        code = ord(char)
        for face in self.faces:
            if face.characters is None or code in face.characters:
                return face
        return self.faces[-1]

    def runs(self, text: str) -> list[tuple[str, ImageFont.FreeTypeFont | ImageFont.ImageFont]]:
        """`text` split into pieces that one font draws, in reading order."""
        pieces: list[tuple[str, ImageFont.FreeTypeFont | ImageFont.ImageFont]] = []
        for char in text:
            font = self._face_for(char).font
            if pieces and pieces[-1][1] is font:
                pieces[-1] = (pieces[-1][0] + char, font)
            else:
                pieces.append((char, font))
        return pieces

    def metrics(self) -> tuple[int, int]:
        """(ascent, descent) covering every font of the chain."""
        pairs = [face.font.getmetrics() for face in self.faces if hasattr(face.font, "getmetrics")]
        if not pairs:
            return (round(self.faces[0].font.getbbox("Ag")[3]), 0)
        return max(a for a, _ in pairs), max(d for _, d in pairs)

    def width(self, text: str) -> float:
        return sum(font.getlength(piece) for piece, font in self.runs(text))

    def draw(self, draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, fill) -> None:
        """Draw `text` with its top-left corner at `xy` (the line's ascent below it)."""
        x, top = xy
        baseline = top + self.metrics()[0]
        for piece, font in self.runs(text):
            draw.text((x, baseline), piece, fill=fill, font=font, anchor="ls")
            x += font.getlength(piece)
