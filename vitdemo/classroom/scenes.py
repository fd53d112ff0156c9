"""Generated scenes of coloured shapes on a 3x3 grid, with full ground truth.

The classroom model's whole world: every scene knows each object's colour, shape, grid
cell, bounding box and pixel mask, so answers and attention maps can be scored exactly.
"""

from __future__ import annotations

import colorsys
import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 205, 40),
    "purple": (140, 60, 190),
    "orange": (245, 140, 30),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# Reading order of the 3x3 grid: index = row * 3 + col.
POSITIONS: tuple[str, ...] = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)
NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four")
MAX_OBJECTS = 4


@dataclass(frozen=True)
class SceneStyle:
    """Randomisation ranges; the defaults are the robustness the model is trained for."""

    min_fill: float = 0.4  # smallest object, as a fraction of its cell side
    max_fill: float = 0.9  # largest object, as a fraction of its cell side
    color_jitter: int = 20  # +- per RGB channel
    noise_sigma: float = 6.0  # std of the background's Gaussian pixel noise (0-255 scale)
    supersample: int = 2  # draw at this multiple, then downsample, for smooth edges
    # "light": near-white paper (225-255 grey), the standard scenes. "varied": what users
    # upload: any grey from white to dark, pale tints and dark-mode tints (see background_color).
    background: str = "light"
    blur_probability: float = 0.0  # share of images blurred a little, as a phone photo is
    max_blur: float = 1.0  # largest Gaussian blur radius, in pixels of a 128-px image


# The background-shifted world: varied backgrounds, mild blur, objects from small to a whole cell.
VARIED_STYLE = SceneStyle(min_fill=0.4, max_fill=1.0, background="varied", blur_probability=0.3)


def background_color(rng: np.random.Generator) -> tuple[int, int, int]:
    """A plain background a user's picture might have, never one of the object colours.

    Greys from dark to white (45%), pale tints (40%: saturation 8-30%, bright) and dark
    tints (15%: dark-mode screenshots). Every tint has at most 40% saturation and the
    object colours have 70% or more, so an object never vanishes into its background.
    """
    kind = rng.random()
    if kind < 0.45:
        level = int(rng.integers(30, 256))
        return (level, level, level)
    hue = rng.random()
    if kind < 0.85:
        saturation, value = rng.uniform(0.08, 0.3), rng.uniform(0.8, 1.0)
    else:
        saturation, value = rng.uniform(0.1, 0.4), rng.uniform(0.12, 0.35)
    return tuple(int(round(c * 255)) for c in colorsys.hsv_to_rgb(hue, saturation, value))  # type: ignore[return-value]


@dataclass
class SceneObject:
    color: str
    shape: str
    cell: int  # 0..8, row-major on the 3x3 grid
    box: tuple[int, int, int, int]  # (x0, y0, x1, y1) in image pixels
    mask: np.ndarray = field(repr=False)  # (H, W) bool

    @property
    def position(self) -> str:
        return POSITIONS[self.cell]

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"


@dataclass
class Scene:
    image: Image.Image
    objects: list[SceneObject]

    @property
    def size(self) -> int:
        return self.image.width


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[float, float, float, float],
                fill: tuple[int, int, int] | int) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def random_layout(rng: np.random.Generator, n_objects: int | None = None) -> list[tuple[str, str, int]]:
    """(colour, shape, cell) for 1-4 objects: distinct cells, no repeated colour+shape."""
    if n_objects is None:
        n_objects = int(rng.integers(1, MAX_OBJECTS + 1))
    if not 1 <= n_objects <= MAX_OBJECTS:
        raise ValueError(f"n_objects must be 1..{MAX_OBJECTS}, got {n_objects}")
    combos = [(c, s) for c in COLORS for s in SHAPES]
    picked = rng.choice(len(combos), size=n_objects, replace=False)
    cells = rng.choice(9, size=n_objects, replace=False)
    return [(*combos[int(i)], int(cell)) for i, cell in zip(picked, cells)]


def perturb_layout(layout: list[tuple[str, str, int]], rng: np.random.Generator) -> list[tuple[str, str, int]]:
    """The same scene but for one thing: places swapped, or one object's shape or colour.

    Such hard negatives force the encoder to see every attribute: random other scenes
    can be told apart by their colours alone, and then shape is never learned.
    """
    kind = int(rng.integers(3))
    if kind == 0 and len(layout) > 1:  # places
        cells = [cell for *_, cell in layout]
        while True:
            moved = [int(c) for c in rng.permutation(cells)]
            if moved != cells:
                break
        return [(c, s, cell) for (c, s, _), cell in zip(layout, moved)]
    i = int(rng.integers(len(layout)))
    color, shape, cell = layout[i]
    taken = {(c, s) for c, s, _ in layout}
    if kind == 1 or len(layout) == 1 and kind == 0:  # shape
        options = [(color, s) for s in SHAPES if (color, s) not in taken]
    else:  # colour
        options = [(c, shape) for c in COLORS if (c, shape) not in taken]
    if not options:  # every alternative is taken: move the object to a free cell instead
        free = [c for c in range(9) if c not in {cell for *_, cell in layout}]
        return layout[:i] + [(color, shape, int(rng.choice(free)))] + layout[i + 1:]
    new_color, new_shape = options[int(rng.integers(len(options)))]
    return layout[:i] + [(new_color, new_shape, cell)] + layout[i + 1:]


def generate_scene(rng: np.random.Generator, size: int = 192, n_objects: int | None = None,
                   style: SceneStyle = SceneStyle(),
                   layout: list[tuple[str, str, int]] | None = None) -> Scene:
    """Draw 1-4 objects, each in its own grid cell, no two with the same colour and shape.

    `layout` fixes (colour, shape, cell) for each object; size and jitter stay random.
    """
    if layout is None:
        layout = random_layout(rng, n_objects)

    ss = style.supersample
    big = size * ss
    if style.background == "light":
        shade = int(rng.integers(225, 256))
        background = (shade, shade, shade)
    elif style.background == "varied":
        background = background_color(rng)
    else:
        raise ValueError(f"unknown background {style.background!r}; expected 'light' or 'varied'")
    canvas = Image.new("RGB", (big, big), background)
    draw = ImageDraw.Draw(canvas)
    objects: list[SceneObject] = []
    cell_side = size / 3
    for color, shape, cell in layout:
        side = cell_side * rng.uniform(style.min_fill, style.max_fill)
        row, col = divmod(int(cell), 3)
        # Jitter the object anywhere inside its cell, keeping it whole.
        x0 = col * cell_side + rng.uniform(0, cell_side - side)
        y0 = row * cell_side + rng.uniform(0, cell_side - side)
        rgb = tuple(int(np.clip(v + rng.integers(-style.color_jitter, style.color_jitter + 1), 0, 255))
                    for v in COLORS[color])
        _draw_shape(draw, shape, (x0 * ss, y0 * ss, (x0 + side) * ss, (y0 + side) * ss), rgb)
        mask_img = Image.new("L", (size, size), 0)
        _draw_shape(ImageDraw.Draw(mask_img), shape, (x0, y0, x0 + side, y0 + side), 255)
        box = (int(x0), int(y0), int(np.ceil(x0 + side)), int(np.ceil(y0 + side)))
        objects.append(SceneObject(color, shape, int(cell), box, np.asarray(mask_img) > 127))

    image = canvas.resize((size, size), Image.LANCZOS) if ss > 1 else canvas
    if style.noise_sigma > 0:
        pixels = np.asarray(image, dtype=np.float32)
        pixels += rng.normal(0, style.noise_sigma, pixels.shape)
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    if style.blur_probability > 0 and rng.random() < style.blur_probability:
        radius = rng.uniform(0.2, style.max_blur) * size / 128
        image = image.filter(ImageFilter.GaussianBlur(radius))
    objects.sort(key=lambda o: o.cell)
    return Scene(image=image, objects=objects)


def jpeg_roundtrip(image: Image.Image, quality: int) -> Image.Image:
    """Compress and decompress, as a phone photo or a web upload would."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def describe(scene: Scene) -> str:
    """The canonical description: every object with colour and position, in reading order."""
    parts = [f"a {o.color} {o.shape} at {o.position}" for o in scene.objects]
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def parse_description(text: str) -> set[tuple[str, str, str]]:
    """(colour, shape, position) triples named in a description, for scoring."""
    found: set[tuple[str, str, str]] = set()
    for chunk in text.replace(" and ", ", ").split(","):
        words = chunk.strip().split()
        if len(words) >= 5 and words[0] == "a" and words[3] == "at":
            found.add((words[1], words[2], " ".join(words[4:])))
    return found


@dataclass(frozen=True)
class QA:
    question: str
    answer: str
    form: str  # color | shape | where | count | exists | describe
    target: int | None = None  # index into scene.objects of the object asked about


# Canonical forms first; paraphrases teach the model to read the question, not match it.
_TEMPLATES: dict[str, tuple[str, ...]] = {
    "color": ("What color is the {shape}?", "What colour is the {shape}?",
              "Which color is the {shape}?", "What is the color of the {shape}?",
              "Tell me the color of the {shape}."),
    "shape": ("What shape is the {color} object?", "What shape is the {color} thing?",
              "Which shape is {color}?", "What is the shape of the {color} object?",
              "Name the shape of the {color} object."),
    "where": ("Where is the {color} {shape}?", "Where is the {color} {shape} located?",
              "In which part of the image is the {color} {shape}?",
              "Where can you see the {color} {shape}?"),
    "count": ("How many shapes are there?", "How many objects are there?",
              "Count the shapes.", "How many shapes are in the image?"),
    "exists": ("Is there a {color} {shape}?", "Is there a {color} {shape} in the image?",
               "Do you see a {color} {shape}?", "Can you find a {color} {shape}?"),
    "describe": ("Describe the image.", "Describe the scene.", "What is in the image?",
                 "What do you see?"),
}
FORMS: tuple[str, ...] = tuple(_TEMPLATES)
# Questions about something the scene does not have ("What color is the circle?" with no
# circle): answered "no circle", never a guessed colour. Not one of FORMS, so the stages
# that draw every form (and their random streams) are as before; eval-classroom scores them,
# and a stage asks them when its form weights name "absent" (none in the shipped recipe).
ABSENT = "absent"


def _template(rng: np.random.Generator, form: str, canonical: bool) -> str:
    options = _TEMPLATES[form]
    if canonical or rng.random() < 0.5:
        return options[0]
    return options[int(rng.integers(1, len(options)))]


def confusable_objects(scene: Scene) -> list[int]:
    """Objects that share their colour or their shape with another object in the scene:
    naming them needs both words (the classroom model's "where" errors are mostly here)."""
    objs = scene.objects
    return [i for i, o in enumerate(objs)
            if any(p is not o and (p.color == o.color or p.shape == o.shape) for p in objs)]


def question_for(scene: Scene, form: str, rng: np.random.Generator,
                 canonical: bool = True, target: int | None = None) -> QA | None:
    """One question of the given form about the scene, or None if the form does not apply.

    `target` picks the object a "where" question asks about (default: a random one)."""
    if form == ABSENT:
        return absent_question(scene, rng, canonical)
    objs = scene.objects
    text = _template(rng, form, canonical)
    if form == "color":
        unique = [i for i, o in enumerate(objs) if sum(p.shape == o.shape for p in objs) == 1]
        if not unique:
            return None
        i = int(rng.choice(unique))
        return QA(text.format(shape=objs[i].shape), objs[i].color, form, i)
    if form == "shape":
        unique = [i for i, o in enumerate(objs) if sum(p.color == o.color for p in objs) == 1]
        if not unique:
            return None
        i = int(rng.choice(unique))
        return QA(text.format(color=objs[i].color), objs[i].shape, form, i)
    if form == "where":
        i = int(rng.integers(len(objs))) if target is None else target
        return QA(text.format(color=objs[i].color, shape=objs[i].shape), objs[i].position, form, i)
    if form == "count":
        return QA(text, NUMBER_WORDS[len(objs)], form)
    if form == "exists":
        if rng.random() < 0.5:
            i = int(rng.integers(len(objs)))
            return QA(text.format(color=objs[i].color, shape=objs[i].shape), "yes", form, i)
        present = {(o.color, o.shape) for o in objs}
        # Hard negatives: share the colour or the shape of an object that is there.
        anchor = objs[int(rng.integers(len(objs)))]
        candidates = [(c, s) for c in COLORS for s in SHAPES
                      if (c, s) not in present and (c == anchor.color or s == anchor.shape)]
        if not candidates:
            candidates = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in present]
        color, shape = candidates[int(rng.integers(len(candidates)))]
        return QA(text.format(color=color, shape=shape), "no", form)
    if form == "describe":
        return QA(text, describe(scene), form)
    raise ValueError(f"unknown question form {form!r}; expected one of {FORMS + (ABSENT,)}")


def absent_question(scene: Scene, rng: np.random.Generator, canonical: bool = True) -> QA | None:
    """A colour question about a shape the scene does not have, or a shape question about a
    colour it does not have, and its answer "no ..." naming what is missing. ("Where is the
    green triangle?" about a missing pair was tried too: it cost the "where" answers about
    objects that are there; docs/classroom.md.)"""
    if rng.random() < 0.5:
        missing = [s for s in SHAPES if all(o.shape != s for o in scene.objects)]
        if not missing:
            return None
        shape = missing[int(rng.integers(len(missing)))]
        return QA(_template(rng, "color", canonical).format(shape=shape), f"no {shape}", ABSENT)
    missing = [c for c in COLORS if all(o.color != c for o in scene.objects)]
    if not missing:
        return None
    color = missing[int(rng.integers(len(missing)))]
    return QA(_template(rng, "shape", canonical).format(color=color), f"no {color} object", ABSENT)


def questions_for(scene: Scene, rng: np.random.Generator, canonical: bool = True) -> list[QA]:
    """One question of every form that applies to the scene."""
    return [qa for form in FORMS if (qa := question_for(scene, form, rng, canonical))]
