"""Captioned synthetic images: the offline stand-in for a photo collection, in Flickr8k's layout.

Every image shows one or two coloured shapes on a plain background. Its attributes — shape, colour, size and
position of a single object, or shapes, colours and arrangement of two, plus the background — form a tuple that
no other image of the set shares, and every caption names *all* of them. So each caption identifies exactly
one image: relevance is one image per caption, exactly as in Flickr8k, and evaluation uses that definition.
Captions are phrased several ways, so matching needs the words' meaning, not one fixed template.

The ``shifted`` variant is the same scenes in another domain, for measuring fine-tuning: gradient and noise
backgrounds, outlined shapes, sensor noise, JPEG artefacts and other image sizes; and captions in another
register — synonyms the original captions never use ("crimson disc", "ebony backdrop"), clock-face positions,
other word orders. Each synonym stands for one attribute value only, so a caption still names one image.
"""

from __future__ import annotations

import itertools
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

from PIL import Image, ImageDraw, ImageFilter

SHAPES = ("circle", "square", "triangle", "diamond", "cross")
COLOURS = {"red": (220, 30, 30), "green": (30, 160, 50), "blue": (40, 70, 220), "yellow": (240, 210, 20),
           "purple": (140, 40, 170), "orange": (245, 130, 20)}
BACKGROUNDS = {"white": (250, 250, 250), "gray": (128, 128, 128), "black": (15, 15, 15)}
SIZES = ("small", "large")
POSITIONS = ("left", "right", "top", "bottom", "center")
ARRANGEMENTS = ("horizontal", "vertical")
CAPTIONS_PER_IMAGE = 5
IMAGE_SIZE = 128
VARIANTS = ("original", "shifted")

# The shifted register: every word here is absent from the original captions, and each belongs to one value.
SHIFTED_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("disc", "orb"), "square": ("box", "block"), "triangle": ("wedge", "pyramid"),
    "diamond": ("rhombus", "lozenge"), "cross": ("plus sign", "crucifix"),
    "red": ("crimson", "scarlet"), "green": ("emerald", "jade"), "blue": ("azure", "navy"),
    "yellow": ("golden", "lemon"), "purple": ("violet", "plum"), "orange": ("tangerine", "amber"),
    "white": ("snowy", "ivory"), "gray": ("slate", "ashen"), "black": ("ebony", "charcoal"),
    "small": ("tiny", "little"), "large": ("huge", "big"),
}
SHIFTED_WORDS_FLAT = tuple(w for words in SHIFTED_WORDS.values() for w in words)
_SHIFTED_POS = {"left": ("at nine o'clock", "hugging the west edge"),
                "right": ("at three o'clock", "hugging the east edge"),
                "top": ("at twelve o'clock", "hugging the north edge"),
                "bottom": ("at six o'clock", "hugging the south edge"),
                "center": ("dead centre", "bang on the bullseye")}


@dataclass(frozen=True)
class Scene:
    """One image's attributes. ``second`` is None for one-object scenes."""

    shape: str
    colour: str
    background: str
    size: str | None = None
    position: str | None = None
    second: tuple[str, str] | None = None  # (shape, colour)
    arrangement: str | None = None

    def key(self) -> tuple[object, ...]:
        return tuple(asdict(self).values())


def all_scenes() -> list[Scene]:
    singles = [Scene(s, c, b, z, p) for s, c, b, z, p in
               itertools.product(SHAPES, COLOURS, BACKGROUNDS, SIZES, POSITIONS)]
    objects = list(itertools.product(SHAPES, COLOURS))
    pairs = [Scene(a[0], a[1], b, second=o, arrangement=r)
             for a, o, b, r in itertools.product(objects, objects, BACKGROUNDS, ARRANGEMENTS) if a != o]
    return singles + pairs


def sample_scenes(n: int, seed: int) -> list[Scene]:
    """``n`` distinct scenes, a third of them single objects (every caption then names one image)."""
    rng = random.Random(seed)
    scenes = all_scenes()
    singles = [s for s in scenes if s.second is None]
    pairs = [s for s in scenes if s.second is not None]
    n_single = min(len(singles), n // 3)
    if n - n_single > len(pairs):
        raise ValueError(f"at most {len(singles) + len(pairs)} distinct scenes exist; asked for {n}")
    chosen = rng.sample(singles, n_single) + rng.sample(pairs, n - n_single)
    rng.shuffle(chosen)
    return chosen


def _thing(shape: str, colour: str, size: str | None = None) -> str:
    return " ".join(w for w in (size, colour, shape) if w)


_POS = {"left": ("on the left", "at the left side"), "right": ("on the right", "at the right side"),
        "top": ("at the top", "near the top edge"), "bottom": ("at the bottom", "near the bottom edge"),
        "center": ("in the center", "in the middle")}


def captions(scene: Scene, rng: random.Random, variant: str = "original") -> list[str]:
    """Five different phrasings, each naming every attribute of the scene."""
    if variant == "shifted":
        return _shifted_captions(scene, rng)
    if variant != "original":
        raise ValueError(f"unknown synth variant {variant!r}: use one of {', '.join(VARIANTS)}")
    bg = scene.background
    if scene.second is None:
        assert scene.size and scene.position
        thing = _thing(scene.shape, scene.colour, scene.size)
        p1, p2 = _POS[scene.position]
        options = [
            f"a {thing} {p1} of a {bg} background",
            f"{bg} background with a {thing} {p2}",
            f"a {scene.size} {scene.shape} coloured {scene.colour}, {p1}, on {bg}",
            f"there is one {thing} {p2} of the {bg} picture",
            f"a picture with a {bg} background and a {thing} {p1}",
            f"on a {bg} background a {thing} sits {p2}",
        ]
    else:
        a, b = _thing(scene.shape, scene.colour), _thing(*scene.second)
        if scene.arrangement == "horizontal":
            options = [
                f"a {a} to the left of a {b} on a {bg} background",
                f"a {b} to the right of a {a}, {bg} background",
                f"{bg} background, {a} on the left and {b} on the right",
                f"two shapes on {bg}: a {a} left, a {b} right",
                f"a {a} next to a {b}, the {a} on the left, on a {bg} background",
                f"on a {bg} background a {b} sits right of a {a}",
            ]
        else:
            options = [
                f"a {a} above a {b} on a {bg} background",
                f"a {b} below a {a}, {bg} background",
                f"{bg} background, {a} at the top and {b} at the bottom",
                f"two shapes on {bg}: a {a} on top, a {b} underneath",
                f"a {a} stacked over a {b} on a {bg} background",
                f"on a {bg} background a {b} sits under a {a}",
            ]
    rng.shuffle(options)
    return [re.sub(r"\ba (?=[aeiou])", "an ", text) for text in options[:CAPTIONS_PER_IMAGE]]


def _shifted_captions(scene: Scene, rng: random.Random) -> list[str]:
    def say(word: str) -> str:
        return rng.choice(SHIFTED_WORDS[word])

    bg = f"{say(scene.background)} {rng.choice(('backdrop', 'canvas'))}"
    if scene.second is None:
        assert scene.size and scene.position
        size, colour, shape = say(scene.size), say(scene.colour), say(scene.shape)
        p1, p2 = _SHIFTED_POS[scene.position]
        options = [
            f"{bg}; {colour} {shape}, {size}, {p1}",
            f"{p1}: one {size} {colour} {shape} against a {bg}",
            f"{size} {shape} in {colour} {p2}, {bg} behind it",
            f"against a {bg}, {p2}, a {size} {colour} {shape}",
            f"{colour} {shape} ({size}) {p1} over a {bg}",
            f"only a {size} {colour} {shape} {p2} of this {bg}",
        ]
    else:
        a, b = f"{say(scene.colour)} {say(scene.shape)}", f"{say(scene.second[1])} {say(scene.second[0])}"
        if scene.arrangement == "horizontal":
            options = [
                f"{bg}; {a} west, {b} east",
                f"side by side against a {bg}: {a} first, then {b}",
                f"{b} east of {a}, {bg} behind them",
                f"a pair on a {bg}, {a} leftmost and {b} rightmost",
                f"{a} beside {b} ({a} westward) over a {bg}",
                f"against a {bg}, {b} trailing {a} to the east",
            ]
        else:
            options = [
                f"{bg}; {a} north, {b} south",
                f"piled up against a {bg}: {a} perched atop {b}",
                f"{b} beneath {a}, {bg} behind them",
                f"a pair on a {bg}, {a} uppermost and {b} lowermost",
                f"{a} resting on {b} over a {bg}",
                f"against a {bg}, {b} downstairs, {a} upstairs",
            ]
    rng.shuffle(options)
    return [re.sub(r"\ba (?=[aeiou])", "an ", text) for text in options[:CAPTIONS_PER_IMAGE]]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, colour: tuple[int, int, int], cx: float, cy: float,
                r: float, outline: tuple[int, int, int] | None = None, width: int = 0) -> None:
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=colour, outline=outline, width=width)
    elif shape == "square":
        draw.rectangle((cx - r * 0.85, cy - r * 0.85, cx + r * 0.85, cy + r * 0.85), fill=colour, outline=outline,
                       width=width)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r * 0.8), (cx + r, cy + r * 0.8)], fill=colour, outline=outline,
                     width=width)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=colour, outline=outline,
                     width=width)
    elif shape == "cross" and outline is None:
        w = r * 0.35
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=colour)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=colour)
    elif shape == "cross":
        w = r * 0.35
        draw.polygon([(cx - r, cy - w), (cx - w, cy - w), (cx - w, cy - r), (cx + w, cy - r), (cx + w, cy - w),
                      (cx + r, cy - w), (cx + r, cy + w), (cx + w, cy + w), (cx + w, cy + r), (cx - w, cy + r),
                      (cx - w, cy + w), (cx - r, cy + w)], fill=colour, outline=outline, width=width)
    else:  # pragma: no cover - SHAPES is closed
        raise ValueError(shape)


def render(scene: Scene, rng: random.Random, size: int = IMAGE_SIZE, variant: str = "original") -> Image.Image:
    """Draw a scene with small random jitter in placement, size and colour (so no two renders are equal)."""
    if variant == "shifted":
        return _render_shifted(scene, rng)
    if variant != "original":
        raise ValueError(f"unknown synth variant {variant!r}: use one of {', '.join(VARIANTS)}")
    scale = 4  # draw large, then downsample: smooth edges
    canvas = size * scale
    bg = tuple(max(0, min(255, v + rng.randint(-12, 12))) for v in BACKGROUNDS[scene.background])
    img = Image.new("RGB", (canvas, canvas), bg)
    draw = ImageDraw.Draw(img)

    def jitter(colour: str) -> tuple[int, int, int]:
        r, g, b = (max(0, min(255, v + rng.randint(-20, 20))) for v in COLOURS[colour])
        return r, g, b

    def j(v: float) -> float:
        return v + rng.uniform(-0.04, 0.04) * canvas

    if scene.second is None:
        r = canvas * (0.11 if scene.size == "small" else 0.26) * rng.uniform(0.9, 1.1)
        cx, cy = {"left": (0.25, 0.5), "right": (0.75, 0.5), "top": (0.5, 0.25), "bottom": (0.5, 0.75),
                  "center": (0.5, 0.5)}[scene.position or "center"]
        _draw_shape(draw, scene.shape, jitter(scene.colour), j(cx * canvas), j(cy * canvas), r)
    else:
        r = canvas * 0.17 * rng.uniform(0.9, 1.1)
        first, second = ((0.27, 0.5), (0.73, 0.5)) if scene.arrangement == "horizontal" else ((0.5, 0.27), (0.5, 0.73))
        _draw_shape(draw, scene.shape, jitter(scene.colour), j(first[0] * canvas), j(first[1] * canvas), r)
        shape2, colour2 = scene.second
        _draw_shape(draw, shape2, jitter(colour2), j(second[0] * canvas), j(second[1] * canvas), r)
    return img.resize((size, size), Image.Resampling.LANCZOS)


def _render_shifted(scene: Scene, rng: random.Random) -> Image.Image:
    """The shifted domain's look: a gradient background with noise, outlined shapes, blur, 96-192 px."""
    size = rng.choice((96, 128, 160, 192))
    scale = 2
    canvas = size * scale
    base = BACKGROUNDS[scene.background]
    tilt = rng.randint(18, 40) * rng.choice((-1, 1))
    start = Image.new("RGB", (canvas, canvas), tuple(max(0, min(255, v - tilt)) for v in base))
    end = Image.new("RGB", (canvas, canvas), tuple(max(0, min(255, v + tilt)) for v in base))
    ramp = Image.linear_gradient("L").resize((canvas, canvas)).rotate(rng.choice((0, 90, 180, 270)))
    img = Image.composite(end, start, ramp)
    grain = Image.effect_noise((canvas // 4, canvas // 4), 40).resize((canvas, canvas), Image.Resampling.BILINEAR)
    img = Image.blend(img, Image.merge("RGB", (grain, grain, grain)), 0.12)
    draw = ImageDraw.Draw(img)

    def jitter(colour: str) -> tuple[int, int, int]:
        r, g, b = (max(0, min(255, v + rng.randint(-25, 25))) for v in COLOURS[colour])
        return r, g, b

    def edge(fill: tuple[int, int, int]) -> tuple[int, int, int]:
        r, g, b = (v // 3 for v in fill)
        return r, g, b

    def j(v: float) -> float:
        return v + rng.uniform(-0.05, 0.05) * canvas

    width = max(2, canvas // 60)
    if scene.second is None:
        r = canvas * (0.11 if scene.size == "small" else 0.26) * rng.uniform(0.88, 1.12)
        cx, cy = {"left": (0.25, 0.5), "right": (0.75, 0.5), "top": (0.5, 0.25), "bottom": (0.5, 0.75),
                  "center": (0.5, 0.5)}[scene.position or "center"]
        fill = jitter(scene.colour)
        _draw_shape(draw, scene.shape, fill, j(cx * canvas), j(cy * canvas), r, edge(fill), width)
    else:
        r = canvas * 0.17 * rng.uniform(0.88, 1.12)
        first, second = ((0.27, 0.5), (0.73, 0.5)) if scene.arrangement == "horizontal" else ((0.5, 0.27), (0.5, 0.73))
        fill = jitter(scene.colour)
        _draw_shape(draw, scene.shape, fill, j(first[0] * canvas), j(first[1] * canvas), r, edge(fill), width)
        shape2, colour2 = scene.second
        fill = jitter(colour2)
        _draw_shape(draw, shape2, fill, j(second[0] * canvas), j(second[1] * canvas), r, edge(fill), width)
    img = img.resize((size, size), Image.Resampling.BILINEAR)
    return img.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 0.8)))


def examples(seed: int, scenes: list[Scene] | None = None) -> Iterator[tuple[Image.Image, list[str]]]:
    """An endless stream of (image, captions) for training: random scenes, fresh renders and phrasings."""
    rng = random.Random(seed)
    pool = scenes or all_scenes()
    while True:
        scene = rng.choice(pool)
        yield render(scene, rng), captions(scene, rng)


def write_dataset(out: Path, n: int, seed: int, progress: Callable[[int], None] | None = None,
                  variant: str = "original") -> Path:
    """Write ``out/images/*`` and ``out/captions.txt`` (``image<TAB>caption``, five per image).

    The original variant writes PNGs; the shifted one JPEGs at quality 35-75 (their artefacts are part of it).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown synth variant {variant!r}: use one of {', '.join(VARIANTS)}")
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed + 1)
    lines = []
    for i, scene in enumerate(sample_scenes(n, seed)):
        if variant == "original":
            name = f"synth_{seed}_{i:05d}.png"
            render(scene, rng).save(images / name)
        else:
            name = f"shifted_{seed}_{i:05d}.jpg"
            render(scene, rng, variant=variant).save(images / name, quality=rng.randint(35, 75))
        lines += [f"{name}\t{caption}" for caption in captions(scene, rng, variant)]
        if progress:
            progress(i + 1)
    (out / "captions.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out
