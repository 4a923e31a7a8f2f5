"""Deterministic generator for the photodex "synthetic world".

The world is a set of small RGB images of coloured shapes on muted, noisy
backgrounds.  Every image comes with a caption, class labels and short
question/answer pairs, so that tiny models trained on it (see
``train_clip.py`` and ``train_vlm.py``) can be tested for *meaning*: a text
query for "a red circle" must find red circles, a VLM must answer "blue"
about a blue square.

Vocabulary of the world:

* colours: red, green, blue, yellow (``COLOURS``)
* shapes: circle, square, triangle (``SHAPES``)
* counts: one to three objects, all of the same colour and shape
* position: "left" / "right" for single-object images (``None`` otherwise)
* ``UNSAFE_CONCEPT`` ("skull"): a white cartoon skull that stands for
  unsafe content in moderation tests; such samples have ``unsafe=True``.

Everything is a pure function of the seed (``random.Random`` and
``numpy.random.Generator``), so the same call always produces the same
pixels.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "CLASSES",
    "COLOURS",
    "IMAGE_SIZE",
    "NUMBER_WORDS",
    "POSITIONS",
    "SHAPES",
    "UNSAFE_CAPTION",
    "UNSAFE_CONCEPT",
    "WorldSample",
    "captions_for",
    "class_prompt",
    "generate_samples",
    "make_sample",
    "world_corpus",
    "write_imagefolder",
    "write_library",
]

IMAGE_SIZE = 64

#: Object colours (RGB).  Backgrounds are muted so these stay salient.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (35, 170, 55),
    "blue": (40, 70, 215),
    "yellow": (235, 205, 35),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
#: The 12 "{colour} {shape}" classes, colour-major.
CLASSES: tuple[str, ...] = tuple(f"{c} {s}" for c in COLOURS for s in SHAPES)
NUMBER_WORDS: dict[int, str] = {1: "one", 2: "two", 3: "three"}
POSITIONS: tuple[str, ...] = ("left", "right")

#: The concept that stands for "unsafe" content in moderation tests.
UNSAFE_CONCEPT = "skull"
UNSAFE_COLOUR = "white"
#: Text prompt naming the unsafe concept (use it for moderation prompts).
UNSAFE_CAPTION = "a photo of a skull"
_SKULL_RGB = (240, 240, 232)

_PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles", "skull": "skulls"}


@dataclass
class WorldSample:
    """One generated image with its ground truth."""

    image: Image.Image
    caption: str
    colour: str
    shape: str
    count: int
    position: str | None
    labels: list[str]
    qa: list[tuple[str, str]]
    unsafe: bool = False
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)

    @property
    def class_name(self) -> str:
        """``"{colour} {shape}"`` for normal samples, ``UNSAFE_CONCEPT`` for unsafe ones."""
        return UNSAFE_CONCEPT if self.unsafe else f"{self.colour} {self.shape}"


def class_prompt(class_name: str) -> str:
    """Zero-shot prompt for a class name: ``"a photo of a red circle"``."""
    return f"a photo of a {class_name}"


# --------------------------------------------------------------------------- drawing


def _background(rng: random.Random, nrng: np.random.Generator, size: int) -> Image.Image:
    """Muted two-colour gradient with pixel noise (never saturated, never white)."""

    def muted() -> np.ndarray:
        grey = rng.uniform(55, 175)
        tint = np.array([rng.uniform(-22, 22) for _ in range(3)])
        return np.clip(grey + tint, 30, 190)

    a, b = muted(), muted()
    t = np.linspace(0.0, 1.0, size)
    if rng.random() < 0.5:
        ramp = t[None, :, None]  # horizontal gradient
    else:
        ramp = t[:, None, None]  # vertical gradient
    arr = a[None, None, :] * (1 - ramp) + b[None, None, :] * ramp
    arr = np.broadcast_to(arr, (size, size, 3)).astype(np.float32)
    arr = arr + nrng.normal(0.0, rng.uniform(2.0, 9.0), size=(size, size, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def _jitter(rgb: tuple[int, int, int], rng: random.Random, amount: int = 18) -> tuple[int, int, int]:
    return tuple(int(min(255, max(0, v + rng.randint(-amount, amount)))) for v in rgb)  # type: ignore[return-value]


def _draw_object(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int],
                 fill: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=fill)
    elif shape == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1 - 1), (x0, y1 - 1)], fill=fill)
    elif shape == UNSAFE_CONCEPT:
        w, h = x1 - x0, y1 - y0
        dark = (25, 20, 20)
        draw.ellipse((x0, y0, x1, y0 + 0.78 * h), fill=fill)  # cranium
        draw.rectangle((x0 + 0.22 * w, y0 + 0.55 * h, x1 - 0.22 * w, y1), fill=fill)  # jaw
        r = 0.14 * w
        for cx in (x0 + 0.32 * w, x0 + 0.68 * w):  # eye sockets
            cy = y0 + 0.42 * h
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=dark)
        draw.polygon([(x0 + 0.5 * w, y0 + 0.55 * h), (x0 + 0.44 * w, y0 + 0.68 * h),
                      (x0 + 0.56 * w, y0 + 0.68 * h)], fill=dark)  # nose
        for tx in (0.36, 0.5, 0.64):  # teeth gaps
            draw.line((x0 + tx * w, y0 + 0.82 * h, x0 + tx * w, y1), fill=dark, width=1)
    else:  # pragma: no cover - guarded by make_sample
        raise ValueError(f"unknown shape {shape!r}")


def _place(rng: random.Random, count: int, position: str | None, size: int
           ) -> tuple[list[tuple[int, int, int, int]], int]:
    """Choose non-overlapping square boxes for ``count`` objects."""
    margin = 2
    if count == 1:
        s = rng.randint(20, 28)
        half = size // 2
        if position == "left":
            x0 = rng.randint(margin, half - s // 2 - 4)
        else:
            x0 = rng.randint(half - s // 2 + 4, size - s - margin)
        y0 = rng.randint(margin, size - s - margin)
        return [(x0, y0, x0 + s, y0 + s)], s
    s = rng.randint(13, 18)
    for _ in range(1000):
        boxes: list[tuple[int, int, int, int]] = []
        for _ in range(count):
            for _ in range(100):
                x0 = rng.randint(margin, size - s - margin)
                y0 = rng.randint(margin, size - s - margin)
                if all(abs(x0 - b[0]) > s + 2 or abs(y0 - b[1]) > s + 2 for b in boxes):
                    boxes.append((x0, y0, x0 + s, y0 + s))
                    break
        if len(boxes) == count:
            return boxes, s
    raise RuntimeError("could not place objects")  # pragma: no cover


# --------------------------------------------------------------------------- text


def _object_phrase(colour: str, shape: str, count: int) -> str:
    if shape == UNSAFE_CONCEPT:
        return "a skull" if count == 1 else f"{NUMBER_WORDS[count]} skulls"
    if count == 1:
        return f"a {colour} {shape}"
    return f"{NUMBER_WORDS[count]} {colour} {_PLURAL[shape]}"


def captions_for(colour: str, shape: str, count: int, position: str | None) -> list[str]:
    """All caption variants that describe a scene (used for CLIP training)."""
    phrase = _object_phrase(colour, shape, count)
    caps = [f"a photo of {phrase}", phrase, f"a picture of {phrase}", f"an image of {phrase}"]
    if position is not None:
        caps += [f"a photo of {phrase} on the {position}", f"{phrase} on the {position}"]
    return caps


def _qa_for(rng: random.Random, colour: str, shape: str, count: int, position: str | None
            ) -> list[tuple[str, str]]:
    unsafe = shape == UNSAFE_CONCEPT
    qa: list[tuple[str, str]] = [
        (rng.choice(["what colour is the object?", "what is the colour of the object?"]), colour),
        (rng.choice(["what shape is the object?", "what is the shape of the object?"]), shape),
        (rng.choice(["how many objects are there?", "how many objects are in the image?"]),
         NUMBER_WORDS[count]),
    ]
    if position is not None:
        qa.append(("is the object on the left or the right?", position))
    # POPE-style existence questions: one positive, one (hard) negative.
    if not unsafe:
        qa.append((f"is there a {colour} {shape}?", "yes"))
        kind = rng.choice(["colour", "shape", "both"])
        neg_c = rng.choice([c for c in COLOURS if c != colour]) if kind != "shape" else colour
        neg_s = rng.choice([s for s in SHAPES if s != shape]) if kind != "colour" else shape
        qa.append((f"is there a {neg_c} {neg_s}?", "no"))
        q_shape = rng.choice(SHAPES)
        qa.append((f"is there a {q_shape}?", "yes" if q_shape == shape else "no"))
        qa.append(("is there a skull?", "no"))
    else:
        c, s = rng.choice(list(COLOURS)), rng.choice(SHAPES)
        qa.append((f"is there a {c} {s}?", "no"))
        qa.append(("is there a skull?", "yes"))
    return qa


# --------------------------------------------------------------------------- samples


def make_sample(rng: random.Random, *, colour: str | None = None, shape: str | None = None,
                count: int | None = None, position: str | None = None, unsafe: bool = False,
                count_weights: Sequence[float] = (0.6, 0.25, 0.15),
                image_size: int = IMAGE_SIZE) -> WorldSample:
    """Generate one sample; unspecified attributes are drawn from ``rng``."""
    nrng = np.random.default_rng(rng.getrandbits(63))
    if unsafe:
        colour, shape = UNSAFE_COLOUR, UNSAFE_CONCEPT
        count = 1 if count is None else count
    else:
        colour = colour or rng.choice(list(COLOURS))
        shape = shape or rng.choice(SHAPES)
        if colour not in COLOURS or shape not in SHAPES:
            raise ValueError(f"unknown class {colour!r} {shape!r}")
        if count is None:
            count = rng.choices([1, 2, 3], weights=list(count_weights))[0]
    if count not in NUMBER_WORDS:
        raise ValueError("count must be 1, 2 or 3")
    if count == 1:
        position = position or rng.choice(POSITIONS)
    else:
        position = None

    scale = image_size / IMAGE_SIZE
    img = _background(rng, nrng, IMAGE_SIZE)
    draw = ImageDraw.Draw(img)
    boxes, _ = _place(rng, count, position, IMAGE_SIZE)
    base = _SKULL_RGB if unsafe else COLOURS[colour]
    for box in boxes:
        _draw_object(draw, shape, box, _jitter(base, rng, 8 if unsafe else 18))
    if image_size != IMAGE_SIZE:
        img = img.resize((image_size, image_size), Image.BILINEAR)
        boxes = [tuple(round(v * scale) for v in b) for b in boxes]  # type: ignore[misc]

    caption = rng.choice(captions_for(colour, shape, count, position))
    if unsafe:
        labels = [UNSAFE_CONCEPT, "unsafe"]
    else:
        labels = [colour, shape, f"{colour} {shape}"]
    qa = _qa_for(rng, colour, shape, count, position)
    return WorldSample(image=img, caption=caption, colour=colour, shape=shape, count=count,
                       position=position, labels=labels, qa=qa, unsafe=unsafe, boxes=list(boxes))


def generate_samples(n: int, seed: int, *, unsafe_rate: float = 0.05,
                     count_weights: Sequence[float] = (0.6, 0.25, 0.15),
                     image_size: int = IMAGE_SIZE) -> list[WorldSample]:
    """Generate ``n`` samples deterministically from ``seed``.

    Single-object images dominate (``count_weights`` for 1/2/3 objects);
    a fraction ``unsafe_rate`` of the samples shows the ``UNSAFE_CONCEPT``.
    """
    rng = random.Random(seed)
    return [make_sample(rng, unsafe=rng.random() < unsafe_rate, count_weights=count_weights,
                        image_size=image_size) for _ in range(n)]


_EVENTS = ("trip", "birthday", "garden", "beach", "misc")


def write_library(directory: str | Path, n: int, seed: int,
                  formats: Iterable[str] = ("jpg", "png"), *, unsafe_rate: float = 0.05
                  ) -> list[tuple[Path, WorldSample]]:
    """Write ``n`` samples laid out like a photo library (``2023/trip/IMG_0001.jpg``).

    Files rotate through ``formats``; returns ``(path, sample)`` pairs in order.
    """
    directory = Path(directory)
    formats = tuple(f.lower().lstrip(".") for f in formats)
    samples = generate_samples(n, seed, unsafe_rate=unsafe_rate)
    rng = random.Random(seed ^ 0x5EED)
    out: list[tuple[Path, WorldSample]] = []
    for i, sample in enumerate(samples):
        year = 2022 + rng.randrange(3)
        event = rng.choice(_EVENTS)
        ext = formats[i % len(formats)]
        path = directory / str(year) / event / f"IMG_{i + 1:04d}.{ext}"
        path.parent.mkdir(parents=True, exist_ok=True)
        _save(sample.image, path)
        out.append((path, sample))
    return out


def write_imagefolder(directory: str | Path, n_per_class: int, seed: int, *,
                      include_unsafe: bool = False, ext: str = "png"
                      ) -> dict[str, list[tuple[Path, WorldSample]]]:
    """Write an ImageFolder tree: one folder per ``"{colour} {shape}"`` class.

    With ``include_unsafe`` an extra ``UNSAFE_CONCEPT`` folder is written.
    Returns ``{class_name: [(path, sample), ...]}``.
    """
    directory = Path(directory)
    rng = random.Random(seed)
    result: dict[str, list[tuple[Path, WorldSample]]] = {}
    classes: list[str] = list(CLASSES) + ([UNSAFE_CONCEPT] if include_unsafe else [])
    for cls in classes:
        folder = directory / cls
        folder.mkdir(parents=True, exist_ok=True)
        items = []
        for i in range(n_per_class):
            if cls == UNSAFE_CONCEPT:
                sample = make_sample(rng, unsafe=True)
            else:
                colour, shape = cls.split(" ")
                sample = make_sample(rng, colour=colour, shape=shape)
            path = folder / f"{i:04d}.{ext}"
            _save(sample.image, path)
            items.append((path, sample))
        result[cls] = items
    return result


def _save(img: Image.Image, path: Path) -> None:
    ext = path.suffix.lower()
    if ext in (".jpg", ".jpeg"):
        img.save(path, quality=92)
    else:
        img.save(path)


def world_corpus() -> list[str]:
    """Every word-level text the world can produce (captions, questions, answers)."""
    rng = random.Random(0)
    texts: set[str] = set()
    for colour in COLOURS:
        for shape in SHAPES:
            for count in NUMBER_WORDS:
                for pos in (POSITIONS if count == 1 else (None,)):
                    texts.update(captions_for(colour, shape, count, pos))
                    for _ in range(8):
                        for q, a in _qa_for(rng, colour, shape, count, pos):
                            texts.add(q)
                            texts.add(a)
    for pos in POSITIONS:
        texts.update(captions_for(UNSAFE_COLOUR, UNSAFE_CONCEPT, 1, pos))
        for q, a in _qa_for(rng, UNSAFE_COLOUR, UNSAFE_CONCEPT, 1, pos):
            texts.add(q)
            texts.add(a)
    return sorted(texts)
