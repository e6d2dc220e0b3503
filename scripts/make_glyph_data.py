"""Generate the printed-digit images shipped with the demo (``digit_glyphs.npz``).

The demo pairs these images with the spoken digits of ``spoken_digits.npz`` (see
``make_demo_data.py``). Each image is one digit 0-9 rendered from a font that ships with
matplotlib (DejaVu, STIX and the Computer Modern fonts: 22 faces with digits, upright,
oblique, bold, serif, sans and mono), then deformed with a seeded random affine map
(rotation, anisotropic scale, shear, shift), a random stroke thickening or thinning and a
blur, and stored as a 28x28 grey image. Pixel noise is not baked in: the dataset adds it at
load time, so its strength is a parameter of the data, not of the file.

Every image is drawn independently with a generator seeded by ``(seed, index)``: classes
are balanced (the label of image ``i`` is ``i % 10`` before a seeded shuffle) and fonts are
drawn uniformly, so every split holds every font.

The file holds blocks, each drawn with its own seed and appended: 7,000 images of seed 0
(train, validation and the first test split, rows 0-6999) and 2,000 of seed 1 (rows
7000-8999, the test split drawn after the data's regime was fixed on validation; see
``docs/benchmarks.md``). A new block leaves the rows before it byte for byte unchanged.

Output (``np.savez_compressed``, numeric arrays only, loadable with ``allow_pickle=False``):

==========  =======  =============  ==========================================
key         dtype    shape          meaning
==========  =======  =============  ==========================================
``images``  uint8    [N, 28, 28]    ink in 0..255 (0 = background)
``labels``  int64    [N]            digit 0..9
``font``    int64    [N]            index into ``FONTS`` of this script
==========  =======  =============  ==========================================

Usage::

    python scripts/make_glyph_data.py                          # the shipped file: 7000 of seed 0 + 2000 of seed 1
    python scripts/make_glyph_data.py --blocks 4000:0 --out glyphs.npz
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

FONTS: tuple[str, ...] = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSansMono-Oblique.ttf",
    "DejaVuSansMono-BoldOblique.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf",
    "STIXGeneralBol.ttf",
    "STIXGeneralItalic.ttf",
    "STIXGeneralBolIta.ttf",
    "cmr10.ttf",
    "cmb10.ttf",
    "cmti10.ttf",
    "cmss10.ttf",
    "cmtt10.ttf",
    "cmmi10.ttf",  # old-style figures: a genuinely different shape for several digits
)
SIDE = 28
CANVAS = 64  # glyphs are deformed at this size, then reduced to SIDE
OUT = Path(__file__).resolve().parent.parent / "midas_data" / "experiments" / "demo" / "data" / "digit_glyphs.npz"


def _font_dir() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def render_glyph(font_file: Path, digit: int, pixel_height: int = 40) -> np.ndarray:
    """The digit's bitmap (float32 in [0, 1]), tightly cropped, about ``pixel_height`` tall."""
    from matplotlib.ft2font import FT2Font

    font = FT2Font(str(font_file))
    font.set_size(pixel_height, 72)
    font.set_text(str(digit), 0.0)
    font.draw_glyphs_to_bitmap()
    bitmap = np.asarray(font.get_image(), dtype=np.float32) / 255.0
    rows, cols = np.flatnonzero(bitmap.any(1)), np.flatnonzero(bitmap.any(0))
    if len(rows) == 0:
        raise ValueError(f"{font_file.name}: digit {digit} renders empty")
    return bitmap[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def deform(glyph: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A seeded random affine deformation, stroke change and blur; returns [SIDE, SIDE] in [0, 1]."""
    from scipy import ndimage

    canvas = np.zeros((CANVAS, CANVAS), dtype=np.float32)
    h, w = glyph.shape
    top, left = (CANVAS - h) // 2, (CANVAS - w) // 2
    canvas[top : top + h, left : left + w] = glyph
    angle = np.deg2rad(rng.uniform(-25, 25))
    scale = rng.uniform(0.75, 1.15) * np.exp(rng.uniform(-0.15, 0.15, size=2))
    shear = rng.uniform(-0.3, 0.3)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    forward = rotation @ np.array([[1.0, shear], [0.0, 1.0]]) @ np.diag(scale)
    inverse = np.linalg.inv(forward)
    centre = np.array([CANVAS / 2, CANVAS / 2]) + rng.uniform(-5, 5, size=2)
    offset = np.array([CANVAS / 2, CANVAS / 2]) - inverse @ centre
    out = ndimage.affine_transform(canvas, inverse, offset=offset, order=1)
    stroke = rng.integers(-1, 3)  # thinner, unchanged or thicker strokes
    if stroke > 0:
        out = ndimage.grey_dilation(out, size=(stroke + 1, stroke + 1))
    elif stroke < 0:
        out = ndimage.grey_erosion(out, size=(2, 2))
    out = ndimage.gaussian_filter(out, rng.uniform(0.3, 1.2))
    small = ndimage.zoom(out, SIDE / CANVAS, order=1)
    return np.clip(small / max(float(small.max()), 1e-6), 0.0, 1.0)


def make_glyphs(count: int, seed: int) -> dict[str, np.ndarray]:
    font_dir = _font_dir()
    glyphs = {(f, d): render_glyph(font_dir / name, d) for f, name in enumerate(FONTS) for d in range(10)}
    order = np.random.default_rng([seed, 0]).permutation(count)
    labels = (order % 10).astype(np.int64)
    fonts = np.random.default_rng([seed, 1]).integers(0, len(FONTS), size=count).astype(np.int64)
    images = np.empty((count, SIDE, SIDE), dtype=np.uint8)
    for i in range(count):
        rng = np.random.default_rng([seed, 2, i])
        images[i] = np.round(255 * deform(glyphs[(int(fonts[i]), int(labels[i]))], rng)).astype(np.uint8)
    return {"images": images, "labels": labels, "font": fonts}


# (count, seed) of each block, in file order: see the module docstring.
BLOCKS: tuple[tuple[int, int], ...] = ((7000, 0), (2000, 1))


def make_blocks(blocks: tuple[tuple[int, int], ...]) -> dict[str, np.ndarray]:
    """The blocks of :func:`make_glyphs`, concatenated in order."""
    parts = [make_glyphs(count, seed) for count, seed in blocks]
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def _blocks(text: str) -> tuple[tuple[int, int], ...]:
    try:
        return tuple((int(c), int(s)) for c, s in (item.split(":") for item in text.split(",")))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected COUNT:SEED[,COUNT:SEED...], got {text!r}") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = ",".join(f"{c}:{s}" for c, s in BLOCKS)
    parser.add_argument("--blocks", type=_blocks, default=BLOCKS, help=f"COUNT:SEED,... (default: {default})")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    arrays = make_blocks(args.blocks)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    print(f"{args.out}: {len(arrays['labels'])} images, {args.out.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
